"""Input checks shared by every public entry point.

Policy (as faiss states for its Python layer): floats of any width are
converted once to C-contiguous float32; integer, boolean and object arrays
raise ``TypeError`` instead of being cast silently. Errors name the argument
and say what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from simsearch.errors import DimensionError

#: The padding id of search results with fewer than k hits, reserved in every index.
NO_ID = np.uint64(2**64 - 1)
#: The largest k any search accepts: far above any index, far below overflow of n*k.
MAX_K = 1 << 24


def as_float_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape (n, dim).

    A 1-D array of length ``dim`` is taken as one vector, shape (1, dim).

    Raises
    ------
    TypeError
        For non-float dtypes (integers, booleans, objects, strings).
    ValueError
        For the wrong number of dimensions, the wrong width, NaN or inf.
    """
    if (
        type(x) is np.ndarray
        and x.dtype == np.float32
        and x.ndim == 2
        and x.flags.c_contiguous
        and (dim is None or x.shape[1] == dim)
    ):
        check_finite(x, name)  # the common case: nothing to convert
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "f":
        if arr.dtype.kind in "iub":
            raise TypeError(
                f"{name} has dtype {arr.dtype}; expected floating point vectors "
                f"(convert with {name}.astype(np.float32) if the integers are values)"
            )
        raise TypeError(f"{name} has dtype {arr.dtype}; expected an array of floats")
    if arr.ndim == 1:
        if dim is not None and arr.shape[0] == dim:
            arr = arr.reshape(1, -1)
        else:
            raise DimensionError(
                f"{name} is 1-D with length {arr.shape[0]}; expected a 2-D array of shape (n, {dim or 'dim'}). "
                f"Reshape with {name}.reshape(1, -1) for one vector"
            )
    if arr.ndim != 2:
        raise DimensionError(f"{name} has {arr.ndim} dimensions; expected a 2-D array of shape (n, dim)")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionError(f"{name} has dimension {arr.shape[1]}, the index has {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming the first row with NaN or inf."""
    if arr.size == 0:
        return
    if arr.size <= 65536:
        if np.isfinite(arr).all():
            return
    else:
        # one float64 sum is cheaper than an element-wise mask on large inputs;
        # float32 values cannot overflow it
        with np.errstate(invalid="ignore"):
            if np.isfinite(arr.sum(dtype=np.float64)):
                return
    bad = ~np.isfinite(arr)
    row = int(np.argmax(bad.any(axis=1)))
    kind = "NaN" if np.isnan(arr[row]).any() else "inf"
    raise ValueError(f"{name} contains {kind} (first at row {row})")


def as_ids(ids: Any, name: str = "ids", n: int | None = None) -> np.ndarray:
    """Return ids as a C-contiguous uint64 array of shape (n,).

    Accepts any integer array-like (a scalar is one id). Negative ids, the
    reserved 2**64-1 and non-integer dtypes are refused.
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {arr.dtype}; expected integer ids")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} contains a negative id ({int(arr.min())}); ids are unsigned 64-bit")
    out = np.ascontiguousarray(arr, dtype=np.uint64)
    if n is not None and out.shape[0] != n:
        raise ValueError(f"{name} has length {out.shape[0]}, expected {n} (one per vector)")
    if out.size and (out == NO_ID).any():
        raise ValueError(f"{name} contains 2**64-1, which is reserved as the padding id")
    return out


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer (not a bool); else TypeError/ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_k(k: Any, name: str = "k") -> int:
    """Return the number of neighbours ``k`` as an int in [1, MAX_K].

    A ``k`` above an index's size is fine (rows are padded with :data:`NO_ID`);
    an absurd one (above :data:`MAX_K`) is refused before anything is allocated.
    """
    k = check_positive_int(k, name)
    if k > MAX_K:
        raise ValueError(f"{name}={k} is too large; at most {MAX_K} neighbours can be asked for")
    return k


def check_ef(ef: Any, name: str = "ef") -> int:
    """Return a search effort ``ef`` as an int in [1, 2**31 - 1]."""
    ef = check_positive_int(ef, name)
    if ef >= 2**31:
        raise ValueError(f"{name}={ef} is too large; at most {2**31 - 1}")
    return ef


def check_threshold(value: Any, name: str = "threshold", *, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as a finite float in [low, high]; TypeError for non-numbers, ValueError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_texts(texts: Any, name: str = "texts", *, allow_empty_strings: bool = False) -> list[str]:
    """Return ``texts`` as a list of str; a lone string, non-strings and (by default) blank strings raise.

    Raises
    ------
    TypeError
        If ``texts`` is a single string or holds something other than str.
    ValueError
        If an entry is empty or whitespace only (unless ``allow_empty_strings``).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, got a single {type(texts).__name__}; wrap it in a list")
    if not isinstance(texts, Sequence) and not isinstance(texts, np.ndarray):
        try:
            texts = list(texts)
        except TypeError:
            raise TypeError(f"{name} must be a sequence of strings, got {type(texts).__name__}") from None
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
        if not allow_empty_strings and not t.strip():
            raise ValueError(f"{name}[{i}] is an empty text")
    return out


def l2_normalize(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """Return the rows of a float32 (n, dim) array scaled to unit L2 norm, computed in float64.

    Raises
    ------
    ValueError
        If a row has zero norm or one too small to normalise in float32
        (below about 1e-30), which would otherwise become inf or NaN.
    """
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64)) if x64.ndim == 2 else np.sqrt((x64 * x64).sum())
    tiny = norms < 1e-30
    if np.any(tiny):
        row = int(np.argmax(tiny)) if x64.ndim == 2 else 0
        raise ValueError(f"{name} row {row} has norm {float(np.atleast_1d(norms)[row]):.3g}; a cosine index cannot normalise a zero vector")
    out = x64 / (norms[:, None] if x64.ndim == 2 else norms)
    return np.ascontiguousarray(out, dtype=np.float32)
