"""The candidate pairs a full run holds, kept the same way as items arrive.

A join's candidate pairs are the union of both directions' kNN lists: ``(a, b)``
is a pair when ``b`` is among ``a``'s ``k`` nearest neighbours or ``a`` among
``b``'s. When items arrive, a full run on the grown catalog finds pairs an
incremental state would miss and loses pairs it would keep:

- a new item ``c`` enters the list of an old item ``a`` without ``a`` being
  among ``c``'s own ``k`` nearest (a *reverse* neighbour): the update searches
  :data:`REVERSE_FACTOR` times ``k`` neighbours of each new item, so it sees
  the old items whose lists ``c`` may enter;
- ``c`` then pushes ``a``'s ``k``-th neighbour ``e`` out; ``(a, e)`` stays a
  pair only if ``a`` is among ``e``'s ``k`` nearest.

Both come down to one rule, :func:`knn_union`: with ``kth(r)`` the ``k``-th
largest search similarity among row ``r``'s candidate partners, a pair is kept
when its similarity reaches ``kth`` of either end. A row's true ``k`` nearest
are all among its partners (its own search found them), and a partner from the
other direction that is not among them is less similar than all of them, so
``kth`` is the similarity of the row's ``k``-th nearest neighbour. The fit and
every update apply the rule to all their candidates, so an incremental state
holds, up to the approximate search, the pairs a full run would.

The similarity is the exact inner product of the rows the index holds
(``Items.search``), so the rule does not depend on the index's int8 rounding;
the fit searches :data:`SEARCH_FACTOR` times ``k`` neighbours so that the exact
``k`` nearest are among them.
"""

from __future__ import annotations

import numpy as np

from simsearch.applications.lexical import rowwise_dot

__all__ = ["REVERSE_FACTOR", "SEARCH_FACTOR", "knn_union", "kth_similarity", "search_similarity"]

#: The fit searches this many times ``k`` neighbours of each item and keeps the
#: ``k`` of highest exact similarity: the index ranks by int8 codes, whose
#: rounding would otherwise pick the ``k``-th neighbour by chance among near ties.
SEARCH_FACTOR = 2
#: An update searches this many times ``k`` neighbours of each new item.
REVERSE_FACTOR = 3


def search_similarity(search: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Inner products ``search[rows_a[i]] . search[rows_b[i]]``, shape (m,), float32."""
    return rowwise_dot(search, rows_a, search, rows_b)


def kth_similarity(n: int, rows_a: np.ndarray, rows_b: np.ndarray, sim: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest similarity among each row's partners, shape (n,), float32; -inf with fewer than ``k``.

    Parameters
    ----------
    n : int
        Number of rows.
    rows_a, rows_b : ndarray of shape (m,), int64
        The pairs, each once.
    sim : ndarray of shape (m,), float32
        Their search similarities.
    k : int
    """
    rows = np.r_[rows_a, rows_b]
    sims = np.r_[sim, sim].astype(np.float32)
    out = np.full(n, -np.inf, dtype=np.float32)
    if rows.size == 0:
        return out
    order = np.lexsort((-sims, rows))
    rows, sims = rows[order], sims[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    counts = np.diff(np.r_[starts, len(rows)])
    full = counts >= k
    out[rows[starts[full]]] = sims[starts[full] + k - 1]
    return out


def knn_union(n: int, rows_a: np.ndarray, rows_b: np.ndarray, sim: np.ndarray, k: int) -> np.ndarray:
    """Mask of the pairs in the union of both directions' ``k``-nearest lists, shape (m,), bool.

    See the module docstring: a pair is kept when its similarity reaches the
    ``k``-th largest similarity of either of its ends.
    """
    kth = kth_similarity(n, rows_a, rows_b, sim, k)
    return (sim >= kth[rows_a]) | (sim >= kth[rows_b])
