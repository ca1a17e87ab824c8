"""The id rules every index facade applies: ids of new vectors, ids to remove, one-id membership.

:class:`simsearch.Index` and :class:`simsearch.ShardedIndex` take ids the
same way, so the checks and their words live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from simsearch._validation import NO_ID, as_ids
from simsearch.errors import DuplicateIdError, IdsExhaustedError

__all__ = ["contains_one", "ids_to_add", "ids_to_remove"]


def ids_to_add(ids: Any, n: int, next_id: int, contains: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The ids of ``n`` new vectors: ``ids`` checked, or ``next_id, next_id + 1, ...`` when it is None.

    Parameters
    ----------
    ids : array-like of int, shape (n,), or None
        The caller's ids.
    n : int
        The number of vectors.
    next_id : int
        One past the largest id ever added (automatic ids start there).
    contains : callable
        ``contains(ids) -> bool array``: which ids the index already holds.

    Returns
    -------
    np.ndarray of uint64, shape (n,)

    Raises
    ------
    DuplicateIdError
        (a ``ValueError``) If ``ids`` repeats an id or names one already present.
    IdsExhaustedError
        (a ``ValueError``) If automatic ids would reach the reserved
        :data:`~simsearch._validation.NO_ID`.
    ValueError
        If ``ids`` has the wrong length or negative values.
    TypeError
        If ``ids`` is not integer.
    """
    if ids is None:
        if next_id + n >= int(NO_ID):
            raise IdsExhaustedError(f"automatic ids are exhausted (the next would be {next_id}, the reserved NO_ID is 2**64-1); pass ids explicitly")
        return np.arange(next_id, next_id + n, dtype=np.uint64)
    id_arr = as_ids(ids, "ids", n)
    if n:
        values, counts = np.unique(id_arr, return_counts=True)
        if values.size != n:
            raise DuplicateIdError(f"ids contains duplicate id {int(values[counts > 1][0])}")
        present = contains(id_arr)
        if present.any():
            raise DuplicateIdError(f"id {int(id_arr[np.argmax(present)])} is already in the index")
    return id_arr


def ids_to_remove(ids: Any) -> np.ndarray:
    """``ids`` as a uint64 array of shape (n,) without repeats; ValueError if one repeats."""
    id_arr = as_ids(ids)
    if np.unique(id_arr).size != id_arr.size:
        raise ValueError("ids contains duplicates")
    return id_arr


def contains_one(contains: Callable[[np.ndarray], np.ndarray], id_: Any) -> bool:
    """``id_ in index``: False for anything that is not one valid id, instead of an error."""
    try:
        ids = as_ids(id_, "id")
    except (TypeError, ValueError):
        return False
    return ids.size == 1 and bool(contains(ids)[0])
