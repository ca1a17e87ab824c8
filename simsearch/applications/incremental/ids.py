"""Item ids of a dedup state: checked on the way in, unique, mapped to rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["as_id_array", "check_new_ids", "check_unique_ids", "id_ranks", "row_map", "rows_of_removed", "same_id_type"]


def as_id_array(ids: Any, name: str) -> pa.Array:
    """Ids as a pyarrow integer or string array, shape (n,); floats, nulls and 2-D input are refused."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind == "f":
            raise TypeError(f"{name} has dtype {arr.dtype}; expected integer or string ids")
        ids = pa.array(arr.tolist() if arr.dtype.kind in "OU" else arr)
    if not (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise TypeError(f"{name} are {ids.type}; expected integer or string ids")
    if ids.null_count:
        raise ValueError(f"{name} holds {ids.null_count} null ids")
    return ids


def check_unique_ids(ids: pa.Array, name: str) -> None:
    """Raise ``ValueError`` naming a few repeated ids."""
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids).to_pylist()
        repeated = [c["values"] for c in counts if c["counts"] > 1][:3]
        raise ValueError(f"{name} repeats ids, e.g. {repeated}")


def row_map(keys: pa.Array, alive: np.ndarray | None = None) -> dict[Any, int]:
    """Id -> row of every (live) row."""
    values = keys.to_pylist()
    if alive is None:
        return {v: i for i, v in enumerate(values)}
    return {values[i]: i for i in np.flatnonzero(alive).tolist()}


def id_ranks(keys: pa.Array) -> np.ndarray:
    """Rank of each row's id in sorted id order, shape (n,), int64.

    Two rows compare the same way whatever other rows exist or the order they
    came in, so it breaks ties between equal pair scores the same way in an
    incremental state and in a full run (see
    :func:`~simsearch.applications.grouping.group_pairs`).
    """
    order = pc.sort_indices(keys).to_numpy()
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order), dtype=np.int64)
    return ranks


def rows_of_removed(row_of: dict[Any, int], removed_ids: Any) -> np.ndarray:
    """Rows of the ids to remove (int64, shape (m,)); unknown or repeated ids raise ``ValueError``."""
    if removed_ids is None:
        return np.zeros(0, dtype=np.int64)
    ids = as_id_array(removed_ids, "removed_ids")
    check_unique_ids(ids, "removed_ids")
    values = ids.to_pylist()
    unknown = [v for v in values if v not in row_of]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ValueError(f"removed_ids holds an id that is not in the state: {unknown[0]!r}{more}")
    return np.array([row_of[v] for v in values], dtype=np.int64)


def same_id_type(keys: pa.Array, state_type: pa.DataType, name: str) -> pa.Array:
    """New ids in the state's id type (integers are cast); other mismatches raise ``TypeError``."""
    if keys.type == state_type:
        return keys
    if pa.types.is_integer(keys.type) and pa.types.is_integer(state_type):
        return keys.cast(state_type)
    raise TypeError(f"{name} are {keys.type}, the state's ids are {state_type}")


def check_new_ids(row_of: dict[Any, int], keys: pa.Array) -> None:
    """Raise ``ValueError`` if new ids repeat or are already in the state."""
    check_unique_ids(keys, "new ids")
    present = [v for v in keys.to_pylist() if v in row_of]
    if present:
        more = f" (and {len(present) - 1} more)" if len(present) > 1 else ""
        raise ValueError(f"new item id {present[0]!r} is already in the state{more}; remove it first to replace it")
