"""Input checks shared by every public entry point.

Policy (as faiss states for its Python layer): floats of any width are
converted once to C-contiguous float32; integer, boolean and object arrays
raise ``TypeError`` instead of being cast silently. Errors name the argument
and say what was expected and what came.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NO_ID = np.uint64(2**64 - 1)


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
            raise ValueError(
                f"{name} is 1-D with length {arr.shape[0]}; expected a 2-D array of shape (n, {dim or 'dim'}). "
                f"Reshape with {name}.reshape(1, -1) for one vector"
            )
    if arr.ndim != 2:
        raise ValueError(f"{name} has {arr.ndim} dimensions; expected a 2-D array of shape (n, dim)")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, the index has {dim}")
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
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)
