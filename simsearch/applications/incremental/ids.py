"""Item ids of a dedup state: checked on the way in, unique, mapped to rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["as_id_array", "check_unique_ids", "id_ranks", "row_map"]


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
