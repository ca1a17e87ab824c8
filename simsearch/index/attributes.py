"""Checks of the integer attributes stored with vectors and of search filters over them.

Attributes are small integers (category, brand, seller) kept beside each
vector by the native index; a filter restricts a search to an id list or to
attribute values. Both are validated here, where the user's data comes in,
and handed to the index as C-contiguous int32 columns and plain lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsearch._validation import as_ids

#: The "missing" marker of rows added without an attribute; never a valid value.
INT32_MIN = -(2**31)

__all__ = ["INT32_MIN", "Attributes", "Filter", "check_attribute_values", "check_attributes", "check_filter"]

#: Checked attributes as the index takes them: names, and one int32 column of shape (n,) per name.
Attributes = tuple[list[str], list[np.ndarray]]


@dataclass(frozen=True)
class Filter:
    """A checked search filter and the policy that picks an exact scan or a filtered graph walk.

    Attributes
    ----------
    allowed : np.ndarray of uint64, shape (m,), or None
        Allowed ids, or None for attribute conditions.
    conditions : list of (str, list of int)
        Attribute conditions (AND of "value in list"); empty for an id list.
    brute_fraction : float
        Below this share of items passing, the allowed items are scanned exactly.
    walk_cost : float
        Distance computations each entry of a filtered walk's candidate list is taken to cost.
    """

    allowed: np.ndarray | None
    conditions: list[tuple[str, list[int]]]
    brute_fraction: float
    walk_cost: float


def check_attribute_values(name: str, values: Any, n: int | None) -> np.ndarray:
    """Return one attribute's values as a C-contiguous int32 array of shape (n,).

    Parameters
    ----------
    name : str
        The attribute's name, for messages.
    values : array-like of int, shape (n,)
        Values in -2**31+1 .. 2**31-1; a scalar is one value.
    n : int or None
        The expected length (one per vector), or None for any.

    Raises
    ------
    TypeError
        For non-integer values (strings must be mapped to ints first).
    ValueError
        For the wrong shape or length, or values outside int32 or equal to the
        missing marker -2**31.
    """
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"attribute {name!r} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(
            f"attribute {name!r} has dtype {arr.dtype}; expected small integers (map strings to ints first)"
        )
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"attribute {name!r} has length {arr.shape[0]}, expected {n} (one per vector)")
    if arr.size and (arr.min() <= INT32_MIN or arr.max() > 2**31 - 1):
        raise ValueError(f"attribute {name!r} has values outside -2**31+1 .. 2**31-1")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_attributes(attributes: Mapping[str, Any] | None, n: int) -> Attributes:
    """Split ``{name: values}`` into names and int32 columns of length ``n``; ``None`` gives two empty lists.

    Raises
    ------
    TypeError
        If ``attributes`` is not a mapping, or a column is not integer.
    ValueError
        For an empty or non-string name, or a column of the wrong length or range.
    """
    if not attributes:
        return [], []
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping of name to integer array, got {type(attributes).__name__}")
    names, columns = [], []
    for name, values in attributes.items():
        if not isinstance(name, str) or not name or "\0" in name:
            raise ValueError(f"attribute names must be non-empty strings, got {name!r}")
        names.append(name)
        columns.append(check_attribute_values(name, values, n))
    return names, columns


def check_filter(filter: Any) -> tuple[np.ndarray | None, list[tuple[str, list[int]]]]:
    """Turn a search filter into ``(allowed_ids, conditions)``.

    Parameters
    ----------
    filter : array-like of int, or mapping of str to int or list of int
        Allowed ids, or attribute conditions (one value or a list of values
        per attribute, combined with AND).

    Returns
    -------
    allowed_ids : np.ndarray of uint64, shape (m,), or None
        The id list, or None for attribute conditions.
    conditions : list of (str, list of int)
        Empty for an id list.
    """
    if isinstance(filter, Mapping):
        if not filter:
            raise ValueError("filter is an empty mapping; pass None for no filter")
        conditions = []
        for name, values in filter.items():
            if not isinstance(name, str):
                raise TypeError(f"filter keys must be attribute names, got {name!r}")
            if type(values) is int and INT32_MIN < values < 2**31:  # the common case, without numpy
                conditions.append((name, [values]))
            else:
                conditions.append((name, check_attribute_values(name, values, None).tolist()))
        return None, conditions
    return as_ids(filter, "filter"), []
