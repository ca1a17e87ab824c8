"""Duplicate detection: a kNN self-join through the index, scored pairs, refined groups.

:func:`find_duplicates` works on an array of vectors or on a table of titles.

1. **Candidates.** Every item's ``k`` nearest neighbours come from an int8
   :class:`~simsearch.Index`, searched in batches so memory stays bounded by
   the index plus one batch. For titles the index holds the embedding joined
   with a random projection of the character n-gram TF-IDF vector, so the
   candidates are near in both senses.
2. **Scores.** Each candidate pair is scored exactly: the cosine of the float
   vectors, and for titles the weighted sum with the TF-IDF cosine plus the
   model-code and measure rules of :class:`~simsearch.applications.PairScoring`.
3. **Groups.** Pairs at or above ``threshold`` are merged strongest first, and
   two groups merge only if their mean cross score also reaches the threshold
   and the result stays within ``max_group_size``
   (:func:`~simsearch.applications.grouping.group_pairs`); ``refine=False``
   gives plain connected components. Each group's canonical member is its
   medoid.

:func:`choose_threshold` picks ``threshold`` from labelled items (the grouping
that maximizes mean per-item F1), reusing one candidate search for every
threshold it tries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.applications._items import Items, build_index, default_encoder, progress_bar
from simsearch.applications.grouping import canonical_members, group_pairs
from simsearch.applications.lexical import LexicalModel, PairScoring

#: Default pair threshold for titles scored with lexical evidence (see PairScoring).
DEFAULT_TEXT_THRESHOLD = 0.5
#: Default cosine threshold for bare vectors.
DEFAULT_VECTOR_THRESHOLD = 0.9


class Duplicates(NamedTuple):
    """Result of :func:`find_duplicates`.

    Attributes
    ----------
    pairs : pyarrow.Table
        One row per candidate pair scoring at or above the threshold, best
        first: ``id_a``, ``id_b`` (``id_a`` is the item that comes first in the
        input), ``score`` (float32) and ``same_group`` (bool: whether the
        refinement kept the two in one group).
    groups : pyarrow.Table
        One row per item in a group of two or more (or per item, with
        ``include_singletons=True``): ``id``, ``group_id`` (int64, 0..G-1 in
        order of each group's first item), ``canonical_id`` (the group's
        medoid), ``is_canonical`` (bool) and ``group_size`` (int64).
    """

    pairs: pa.Table
    groups: pa.Table


@dataclass(frozen=True)
class ThresholdChoice:
    """The dedup threshold chosen on labelled items, and its quality there.

    Attributes
    ----------
    threshold : float
    mean_f1 : float
        Mean over items of the F1 of the item's predicted group against its
        true group (itself included).
    precision, recall : float
        Pairwise, over all pairs of items in one predicted / true group.
    """

    threshold: float
    mean_f1: float
    precision: float
    recall: float


def mean_group_f1(labels: Any, groups: Any) -> float:
    """Mean per-item F1 of predicted groups against true groups.

    For item ``i`` with true group ``T`` and predicted group ``P`` (both holding
    ``i``), ``F1 = 2 |T & P| / (|T| + |P|)``; the result is the mean over items,
    as in the Shopee competition metric.

    Parameters
    ----------
    labels : array-like of shape (n,)
        True group of each item.
    groups : array-like of shape (n,)
        Predicted group of each item (singletons get labels of their own).

    Returns
    -------
    float
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape:
        raise ValueError(f"labels and groups differ in shape: {labels.shape} and {groups.shape}")
    if len(labels) == 0:
        raise ValueError("no items to score")
    _, t = np.unique(labels, return_inverse=True)
    _, p = np.unique(groups, return_inverse=True)
    both = t.astype(np.int64) * (p.max() + 1) + p
    _, b, inter = np.unique(both, return_inverse=True, return_counts=True)
    true_size = np.bincount(t)[t]
    pred_size = np.bincount(p)[p]
    return float(np.mean(2.0 * inter[b] / (true_size + pred_size)))


def pairwise_precision_recall(labels: Any, groups: Any) -> tuple[float, float]:
    """Precision and recall over all pairs of items sharing a group.

    Returns
    -------
    (precision, recall) : tuple of float
        ``1.0`` where there is nothing to predict or nothing predicted.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)

    def pairs(*keys: np.ndarray) -> int:
        _, counts = np.unique(np.stack(keys, axis=1), axis=0, return_counts=True)
        return int(np.sum(counts * (counts - 1) // 2))

    _, t = np.unique(labels, return_inverse=True)
    _, p = np.unique(groups, return_inverse=True)
    tp, true, pred = pairs(t, p), pairs(t), pairs(p)
    return (tp / pred if pred else 1.0), (tp / true if true else 1.0)


def is_vector_input(data: Any) -> bool:
    """Whether ``data`` is an array of vectors rather than a table of titles."""
    return isinstance(data, np.ndarray) or (isinstance(data, Sequence) and not isinstance(data, (str, bytes)))


def knn_pairs(
    index: Any,
    items: Items,
    rows: np.ndarray,
    k: int,
    scoring: PairScoring,
    floor: float,
    batch_size: int,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scored pairs between ``rows`` and their ``k`` nearest neighbours in ``index``.

    Parameters
    ----------
    index : Index
        Holds ``items.search[r]`` under id ``r`` for every live row.
    items : Items
    rows : ndarray of shape (m,), int64
        Rows whose neighbours are looked up.
    k : int
    scoring : PairScoring
    floor : float
        Pairs scoring below it are dropped.
    batch_size : int
    progress : bool or None

    Returns
    -------
    rows_a, rows_b : ndarray of shape (p,), int64
        Each pair once, ``rows_a < rows_b``, sorted.
    scores : ndarray of shape (p,), float32
    """
    n = len(items)
    kk = min(k + 1, len(index))  # the item itself comes back too
    if len(rows) == 0 or kk < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    ef = max(2 * kk, 64)
    keep_a, keep_b, keep_s = [], [], []
    bar = progress_bar(len(rows), "searching", progress)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        found, _ = index.search(items.search[batch], k=kk, ef=ef)
        src = np.repeat(batch, kk)
        nbrs = found.reshape(-1)
        valid = (nbrs != np.uint64(2**64 - 1)) & (nbrs != src.astype(np.uint64))
        a, b = src[valid], nbrs[valid].astype(np.int64)
        a, b = np.minimum(a, b), np.maximum(a, b)
        key = np.unique(a * n + b)  # one pair found from both ends counts once
        a, b = key // n, key % n
        s = items.pair_scores(items, a, b, scoring, floor=floor)
        hit = s >= floor
        keep_a.append(a[hit])
        keep_b.append(b[hit])
        keep_s.append(s[hit])
        bar.update(len(batch))
    bar.close()
    a, b, s = np.concatenate(keep_a), np.concatenate(keep_b), np.concatenate(keep_s)
    # Pairs found from both ends in different batches: keep one.
    key, first = np.unique(a * n + b, return_index=True)
    return key // n, key % n, s[first]


class _Candidates:
    """The scored kNN self-join of one input, reusable for several thresholds."""

    def __init__(
        self,
        data: Any,
        *,
        k: int,
        floor: float | None,
        ids: Any,
        id_col: str,
        text_col: str,
        encoder: Any,
        lexical: bool,
        scoring: PairScoring | None,
        index_params: dict[str, Any] | None,
        batch_size: int,
        progress: bool | None,
    ) -> None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.scoring = scoring if scoring is not None else PairScoring()
        self.items, self.ids, self.is_text = self._load(data, ids, id_col, text_col, encoder, lexical, progress)
        self.floor = (DEFAULT_TEXT_THRESHOLD if self.items.features is not None else DEFAULT_VECTOR_THRESHOLD) if floor is None else floor
        self.rows_a, self.rows_b, self.scores = self._join(k, index_params, batch_size, progress)
        self._rules: dict[tuple[int, int], float] = {}

    def _load(
        self, data: Any, ids: Any, id_col: str, text_col: str, encoder: Any, lexical: bool, progress: bool | None
    ) -> tuple[Items, pa.Array, bool]:
        from simsearch.applications._items import as_vectors

        self.lexical_model: LexicalModel | None = None
        self.texts: list[str] | None = None
        if is_vector_input(data):
            vectors = as_vectors(data, "data")
            if len(vectors) == 0:
                raise ValueError("data is empty: it has no rows")
            if ids is None:
                id_array = pa.array(np.arange(len(vectors), dtype=np.int64))
            else:
                id_array = pa.array(ids) if not isinstance(ids, pa.Array) else ids
                if len(id_array) != len(vectors):
                    raise ValueError(f"ids has {len(id_array)} entries, data has {len(vectors)} rows")
            return Items.from_vectors(vectors), id_array, False
        if ids is not None:
            raise ValueError("ids applies to an array of vectors; a table names its id column with id_col")
        table = _tables.read_table(data, [id_col, text_col], name="data")
        _tables.require_rows(table, name="data")
        id_array = _tables.id_column(table, id_col, name="data").combine_chunks()
        texts = _tables.text_column(table, text_col, name="data")
        self.texts = texts
        encoder = default_encoder() if encoder is None else encoder
        model = LexicalModel(self.scoring).fit(texts) if lexical else None
        self.lexical_model = model
        return Items.from_texts(texts, encoder, model, self.scoring, progress), id_array, True

    def _join(
        self, k: int, index_params: dict[str, Any] | None, batch_size: int, progress: bool | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        items = self.items
        n = len(items)
        self.index: Any = None
        if n < 2:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.float32)
        params = dict(index_params or {})
        params.setdefault("ef_construction", 100)
        self.index = build_index(items.search, params, progress)
        return knn_pairs(
            self.index, items, np.arange(n, dtype=np.int64), k, self.scoring, self.floor, batch_size, progress
        )

    def cross(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        return self.items.cross_scores(self.items, rows_a, rows_b, self.scoring, self._rules)

    def group(self, threshold: float, refine: bool, max_group_size: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Labels of every row, and the mask of pairs at or above ``threshold``."""
        hit = self.scores >= threshold
        labels = group_pairs(
            len(self.items),
            self.rows_a[hit],
            self.rows_b[hit],
            self.scores[hit],
            cross_score=self.cross,
            link_threshold=threshold,
            max_group_size=max_group_size,
            refine=refine,
        )
        return labels, hit


def _check_threshold(threshold: Any, name: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(threshold).__name__}")
    if not np.isfinite(threshold):
        raise ValueError(f"{name} must be finite, got {threshold}")
    return float(threshold)


def find_duplicates(
    data: Any,
    threshold: float | None = None,
    k: int = 10,
    *,
    ids: Any = None,
    id_col: str = "id",
    text_col: str = "title",
    encoder: Any = None,
    lexical: bool = True,
    scoring: PairScoring | None = None,
    refine: bool = True,
    max_group_size: int | None = 100,
    include_singletons: bool = False,
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
) -> Duplicates:
    """Find duplicate items: scored pairs and groups with a canonical member.

    Parameters
    ----------
    data : array-like of shape (n, dim), float, or a table
        Vectors (ids are row positions unless ``ids`` is given), or a pyarrow
        Table, pandas DataFrame, mapping or Parquet/CSV path with an id and a
        title column, encoded with ``encoder``.
    threshold : float, optional
        Least pair score for two items to be duplicates. Default: 0.5 for titles
        with lexical scoring (the score of
        :class:`~simsearch.applications.PairScoring`), 0.9 cosine otherwise.
        :func:`choose_threshold` picks one from labels.
    k : int, default 10
        Neighbours looked up per item; a group can still grow past ``k + 1``
        through its members' neighbours.
    ids : array-like of shape (n,), optional
        Ids of the vectors (only with an array).
    id_col, text_col : str, default "id", "title"
        Columns of a table.
    encoder : TextEncoder, optional
        Encodes the titles; default ``TextEncoder()`` (all-MiniLM-L6-v2, int8).
    lexical : bool, default True
        Score titles with character n-grams, model codes and measures as well
        as the embedding. ``False`` uses the embedding cosine alone.
    scoring : PairScoring, optional
        Weights of the pair score; default ``PairScoring()``.
    refine : bool, default True
        Average-linkage refinement with a size cap; ``False`` returns connected
        components of the pairs.
    max_group_size : int or None, default 100
        Largest group when refining.
    include_singletons : bool, default False
        Give every item a row in ``groups``, alone or not.
    index_params : dict, optional
        Passed to :class:`~simsearch.Index` (``M``, ``ef_construction`` (default
        100 here), ``backend``, ``num_threads``...).
    batch_size : int, default 10000
        Items searched and scored per step: memory beyond the index and the
        input is proportional to ``batch_size * k``.
    progress : bool or None, default None
        Show progress bars; ``None`` shows them when stderr is a terminal.

    Returns
    -------
    Duplicates
        Named tuple ``(pairs, groups)`` of pyarrow Tables; see :class:`Duplicates`.

    Raises
    ------
    ValueError
        Empty input, NaN/inf vectors, a 1-D array, repeated or null ids,
        ``ids`` of the wrong length, a non-positive ``k``.
    MissingColumnError
        A table without ``id_col`` or ``text_col`` (a ``ValueError``).
    FileNotFoundError
        A path that does not exist.
    TypeError
        Integer or object arrays where float vectors are expected.

    Examples
    --------
    >>> import numpy as np
    >>> from simsearch import find_duplicates
    >>> x = np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0]], dtype=np.float32)
    >>> pairs, groups = find_duplicates(x, threshold=0.95, k=2, progress=False)
    >>> pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist()
    ([0], [1])
    >>> groups.column("group_id").to_pylist()
    [0, 0]
    """
    if threshold is not None:
        threshold = _check_threshold(threshold)
    if max_group_size is not None and (not isinstance(max_group_size, (int, np.integer)) or max_group_size < 2):
        raise ValueError(f"max_group_size must be an integer >= 2 or None, got {max_group_size!r}")
    cands = _Candidates(
        data,
        k=k,
        floor=threshold,
        ids=ids,
        id_col=id_col,
        text_col=text_col,
        encoder=encoder,
        lexical=lexical,
        scoring=scoring,
        index_params=index_params,
        batch_size=batch_size,
        progress=progress,
    )
    labels, hit = cands.group(cands.floor, refine, max_group_size)
    return _result(cands, labels, hit, include_singletons)


def _result(cands: _Candidates, labels: np.ndarray, hit: np.ndarray, include_singletons: bool) -> Duplicates:
    ids = cands.ids
    a, b, s = cands.rows_a[hit], cands.rows_b[hit], cands.scores[hit]
    order = np.lexsort((b, a, -s))
    a, b, s = a[order], b[order], s[order]
    pairs = pa.table(
        {
            "id_a": ids.take(pa.array(a)),
            "id_b": ids.take(pa.array(b)),
            "score": pa.array(s, type=pa.float32()),
            "same_group": pa.array(labels[a] == labels[b]),
        }
    )
    sizes = np.bincount(labels, minlength=len(labels))[labels]
    rows = np.arange(len(labels)) if include_singletons else np.flatnonzero(sizes > 1)
    canon = canonical_members(labels, cands.cross)
    canon_row = np.array([canon.get(int(labels[r]), r) for r in rows], dtype=np.int64)
    # Group ids 0..G-1 in order of each group's first row (its label).
    _, group_id = np.unique(labels[rows], return_inverse=True)
    groups = pa.table(
        {
            "id": ids.take(pa.array(rows, type=pa.int64())),
            "group_id": pa.array(group_id.astype(np.int64), type=pa.int64()),
            "canonical_id": ids.take(pa.array(canon_row, type=pa.int64())),
            "is_canonical": pa.array(canon_row == rows, type=pa.bool_()),
            "group_size": pa.array(sizes[rows].astype(np.int64), type=pa.int64()),
        }
    )
    return Duplicates(pairs, groups)


def choose_threshold(
    data: Any,
    labels: Any,
    thresholds: Sequence[float] | None = None,
    k: int = 10,
    *,
    ids: Any = None,
    id_col: str = "id",
    text_col: str = "title",
    label_col: str | None = None,
    encoder: Any = None,
    lexical: bool = True,
    scoring: PairScoring | None = None,
    refine: bool = True,
    max_group_size: int | None = 100,
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
    tolerance: float = 0.005,
) -> ThresholdChoice:
    """Choose the dedup threshold that (nearly) maximizes mean per-item F1 on labelled items.

    The candidate search runs once, at the lowest threshold tried; each
    threshold then only regroups the scored pairs.

    Parameters
    ----------
    data : array-like or table
        As :func:`find_duplicates`.
    labels : array-like of shape (n,) or None
        True group of each item (equal labels: duplicates). ``None`` reads them
        from ``label_col`` of the table.
    thresholds : sequence of float, optional
        Candidates to try; default 0.20 to 0.95 by 0.025 for titles with lexical
        scoring, 0.70 to 0.99 by 0.01 otherwise.
    label_col : str, optional
        Column of ``data`` holding the labels.
    k, ids, id_col, text_col, encoder, lexical, scoring, refine, max_group_size, index_params, batch_size, progress
        As :func:`find_duplicates`.
    tolerance : float, default 0.005
        Thresholds whose mean F1 is within ``tolerance`` of the best count as
        equally good; the median of them is chosen, which is steadier on new
        data than the single best (the F1 curve is flat near its top).

    Returns
    -------
    ThresholdChoice

    Raises
    ------
    ValueError
        If labels are missing or of the wrong length, or no threshold is given.
    """
    if labels is None:
        if label_col is None:
            raise ValueError("give labels, or label_col naming the column that holds them")
        labels = _tables.read_table(data, [label_col], name="data").column(label_col).to_numpy(zero_copy_only=False)
    labels = np.asarray(labels)
    if thresholds is None:
        text = not isinstance(data, np.ndarray) and lexical
        thresholds = np.round(np.arange(0.2, 0.951, 0.025) if text else np.arange(0.7, 0.991, 0.01), 4)
    thresholds = [_check_threshold(t, "thresholds") for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds is empty")
    cands = _Candidates(
        data,
        k=k,
        floor=min(thresholds),
        ids=ids,
        id_col=id_col,
        text_col=text_col,
        encoder=encoder,
        lexical=lexical,
        scoring=scoring,
        index_params=index_params,
        batch_size=batch_size,
        progress=progress,
    )
    if len(labels) != len(cands.items):
        raise ValueError(f"labels has {len(labels)} entries, data has {len(cands.items)} rows")
    tried = sorted(thresholds)
    f1s, groupings = [], []
    for t in tried:
        groups, _ = cands.group(t, refine, max_group_size)
        f1s.append(mean_group_f1(labels, groups))
        groupings.append(groups)
    # The F1 curve is flat near its top and its argmax moves from sample to
    # sample; the middle of the near-best thresholds carries over better.
    near = [i for i, f in enumerate(f1s) if f >= max(f1s) - tolerance]
    pick = near[len(near) // 2]
    precision, recall = pairwise_precision_recall(labels, groupings[pick])
    return ThresholdChoice(tried[pick], f1s[pick], precision, recall)
