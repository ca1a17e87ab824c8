"""Where vectors go and what comes back: the two partitions and the exact merge.

- ``"hash"``: :func:`hash_shard`, a stable 64-bit hash of the id.
- ``"kmeans"``: :func:`train_centroids` (faiss k-means), :func:`nearest_centroid`
  for writes, :func:`probed_shards` for a search with ``n_probe``.
- :func:`merge_top_k`: the true top-k of the union of the shards' answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simsearch._validation import as_ids, check_positive_int

__all__ = ["hash_shard", "train_centroids", "nearest_centroid", "probed_shards", "merge_top_k"]

# rows per block when routing by centroid: bounds the (rows, n_shards) distance block
_ROUTE_BLOCK = 65536


def hash_shard(ids: Any, n_shards: int) -> np.ndarray:
    """Shard of each id under ``partition="hash"``.

    splitmix64's finalizer (Steele et al., 2014) mixes every input bit into
    every output bit, so consecutive ids spread evenly; unlike Python's
    ``hash()`` it does not depend on the process or the platform.

    Parameters
    ----------
    ids : array-like of int, shape (n,)
    n_shards : int

    Returns
    -------
    np.ndarray of int64, shape (n,)
        Values in ``[0, n_shards)``.
    """
    z = as_ids(ids) + np.uint64(0x9E3779B97F4A7C15)  # uint64 arithmetic wraps, as splitmix64 expects
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(check_positive_int(n_shards, "n_shards"))).astype(np.int64)


def train_centroids(x: np.ndarray, n_shards: int, *, seed: int, train_size: int) -> np.ndarray:
    """k-means centroids of ``x`` (faiss, 20 iterations) on at most ``train_size`` seeded sample rows.

    Parameters
    ----------
    x : np.ndarray of float32, shape (n, dim), n >= n_shards
    n_shards : int
    seed : int
    train_size : int

    Returns
    -------
    np.ndarray of float32, shape (n_shards, dim)
    """
    if x.shape[0] > train_size:
        rng = np.random.default_rng(seed)
        x = x[np.sort(rng.choice(x.shape[0], train_size, replace=False))]
    if n_shards == 1:
        return x.mean(0, keepdims=True).astype(np.float32)
    import faiss

    kmeans = faiss.Kmeans(x.shape[1], n_shards, niter=20, seed=seed, verbose=False)
    # faiss prints a note to stderr under 39 points per centroid; the clustering is still valid
    kmeans.cp.min_points_per_centroid = 1
    kmeans.train(np.ascontiguousarray(x))
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Shard of each row under ``partition="kmeans"``: its nearest centroid, int64, shape (n,)."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], _ROUTE_BLOCK):
        out[start : start + _ROUTE_BLOCK] = np.argmin(_sq_distances(x[start : start + _ROUTE_BLOCK], centroids), axis=1)
    return out


def probed_shards(queries: np.ndarray, centroids: np.ndarray, n_probe: int) -> list[np.ndarray]:
    """For each shard, the rows of ``queries`` whose ``n_probe`` nearest centroids include it.

    Each shard then searches, in one batch, the queries that probe it: the
    same work as grouping queries by their shard set, with one call per shard.
    """
    probes = np.argsort(_sq_distances(queries, centroids), axis=1, kind="stable")[:, :n_probe]
    return [np.flatnonzero((probes == s).any(1)) for s in range(centroids.shape[0])]


def merge_top_k(ids: np.ndarray, scores: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each row of the concatenated shard answers.

    ``ids``/``scores`` have shape (n, n_parts * k) with padding (NaN scores)
    anywhere; padding sorts last whatever the metric's direction, and the
    stable sort keeps equal scores in shard order.
    """
    key = scores.astype(np.float32, copy=True)
    if metric != "l2":
        np.negative(key, out=key)  # similarities: higher first
    key[np.isnan(key)] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _sq_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared L2 distances, shape (n, n_centroids), float32."""
    return (x * x).sum(1)[:, None] - 2.0 * (x @ centroids.T) + (centroids * centroids).sum(1)[None, :]
