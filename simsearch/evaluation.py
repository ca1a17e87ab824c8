"""Where recall is lost: to the int8 codes or to the graph.

:func:`evaluate` runs three searches for the same queries and compares them:

- **exact float32**: brute force over the original vectors, the truth;
- **exact over the codes**: brute force over the index's int8 codes
  (:meth:`Index.search_exact`), so only quantization differs from the truth;
- **the index**: the HNSW graph search (re-ranked with the floats when the
  index was built with ``rescore=True``).

Recall of the codes against the truth is what quantization costs; recall of
the graph against the codes is what the approximate graph walk costs on top.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from simsearch._validation import NO_ID, as_float_matrix, as_ids, check_ef, check_k, check_positive_int, l2_normalize


@dataclass(frozen=True)
class QuantizationReport:
    """Recall@k of an index, split into what the codes and the graph lose.

    Attributes
    ----------
    k, n_queries : int
    ef : int
        Candidate list size of the graph search.
    recall_codes : float
        Exact search over the int8 codes against exact float32 search.
    recall_graph : float
        The index's search against exact search over the codes.
    recall : float
        The index's search against exact float32 search (end to end).
    lost_to_codes : float
        ``1 - recall_codes``.
    lost_to_graph : float
        ``recall_codes - recall``: what the graph loses on top of the codes
        (negative when re-ranking with floats wins back more than the graph loses).
    floats_from : {"index", "vectors"}
        Where the float32 originals came from.
    """

    k: int
    n_queries: int
    ef: int
    recall_codes: float
    recall_graph: float
    recall: float
    lost_to_codes: float
    lost_to_graph: float
    floats_from: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (for JSON)."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for people."""
        return (
            f"recall@{self.k} over {self.n_queries} queries (ef {self.ef}): {self.recall:.4f}\n"
            f"  lost to int8 codes: {self.lost_to_codes:.4f} (exact over codes vs exact float32: {self.recall_codes:.4f})\n"
            f"  lost to the graph:  {self.lost_to_graph:.4f} (index vs exact over codes: {self.recall_graph:.4f})"
        )


def evaluate(
    index: Any,
    queries: Any,
    k: int = 10,
    *,
    vectors: Any = None,
    ids: Any = None,
    ef: int | None = None,
    batch_size: int = 1024,
) -> QuantizationReport:
    """Measure recall@k of a native index and say whether codes or graph lose it.

    Parameters
    ----------
    index : Index
        A native-backend :class:`~simsearch.Index`.
    queries : array-like of shape (n_queries, dim), float
    k : int, default 10
    vectors : array-like of shape (n, dim), float, optional
        The float32 originals of the indexed items, needed when the index does
        not keep them (built without ``rescore=True``).
    ids : array-like of shape (n,), int, optional
        Ids of ``vectors`` in the index; default ``0..n-1`` (the ids
        :meth:`Index.add` gives when vectors are added in one go).
    ef : int, optional
        Candidate list size of the graph search; default the index's ``ef``.
    batch_size : int, default 1024
        Queries per step of the float32 brute force (memory ``batch_size * n``).

    Returns
    -------
    QuantizationReport

    Raises
    ------
    ValueError
        Not a native index, an empty index, no float originals, vectors of
        the wrong shape, ids that are not the index's items, bad queries.

    Examples
    --------
    >>> import numpy as np, simsearch
    >>> x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    >>> index = simsearch.Index(16, rescore=True)
    >>> _ = index.add(x)
    >>> report = simsearch.evaluate(index, x[:50], k=10)
    >>> report.recall_codes <= 1.0 and report.floats_from
    'index'
    """
    if getattr(index, "backend", None) != "native":
        raise ValueError("evaluate needs a native-backend Index (the int8 codes are what it measures)")
    k = check_k(k)
    ef = index.ef if ef is None else check_ef(ef)
    batch_size = check_positive_int(batch_size, "batch_size")
    n = len(index)
    if n == 0:
        raise ValueError("the index is empty")
    q = as_float_matrix(queries, "queries", index.dim)
    if q.shape[0] == 0:
        raise ValueError("queries is empty: it has no rows")
    k_eff = min(k, n)

    if vectors is None:
        if not index.rescore:
            raise ValueError(
                "the index keeps no float32 originals (built without rescore=True): pass vectors= "
                "(and ids= unless they are 0..n-1)"
            )
        truth, _ = index.search_exact(q, k_eff, use_floats=True)
        floats_from = "index"
    else:
        base = as_float_matrix(vectors, "vectors", index.dim)
        base_ids = np.arange(len(base), dtype=np.uint64) if ids is None else as_ids(ids, "ids", len(base))
        if len(base) != n:
            raise ValueError(f"vectors has {len(base)} rows, the index holds {n} items")
        known = index.contains(base_ids)
        if not known.all():
            raise ValueError(f"ids holds {int(base_ids[~known][0])}, which is not in the index")
        truth = _exact(base, base_ids, q, k_eff, index.metric, batch_size)
        floats_from = "vectors"

    codes, _ = index.search_exact(q, k_eff)
    found, _ = index.search(q, k_eff, ef=ef)
    recall_codes = _recall(codes, truth)
    recall = _recall(found, truth)
    return QuantizationReport(
        k=k_eff,
        n_queries=int(q.shape[0]),
        ef=int(max(ef, k_eff)),
        recall_codes=recall_codes,
        recall_graph=_recall(found, codes),
        recall=recall,
        lost_to_codes=1.0 - recall_codes,
        lost_to_graph=recall_codes - recall,
        floats_from=floats_from,
    )


def _exact(base: np.ndarray, base_ids: np.ndarray, q: np.ndarray, k: int, metric: str, batch_size: int) -> np.ndarray:
    """Exact top-k ids by float32 brute force, shape (n_queries, k), uint64."""
    if metric == "cosine":
        base = l2_normalize(base, "vectors")
        q = l2_normalize(q, "queries")
    sq = np.einsum("ij,ij->i", base, base) if metric == "l2" else None
    out = np.empty((len(q), k), dtype=np.uint64)
    for start in range(0, len(q), batch_size):
        block = q[start : start + batch_size]
        sims = block @ base.T
        if sq is not None:
            sims = 2 * sims - sq  # larger is nearer: -|q-x|^2 up to a per-query constant
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start : start + len(block)] = base_ids[np.take_along_axis(top, order, axis=1)]
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each truth row's ids found in the same row of ``found``."""
    hits = 0
    total = 0
    for f, t in zip(found, truth):
        t = t[t != NO_ID]
        hits += len(np.intersect1d(f[f != NO_ID], t, assume_unique=False))
        total += len(t)
    return hits / total if total else 1.0
