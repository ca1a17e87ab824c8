"""The candidate join: every item's nearest neighbours through the index, each pair scored once.

This is the base the duplicate detection is built on, as scikit-learn's
``neighbors/_base.py`` is for its estimators: :func:`~simsearch.find_duplicates`,
:func:`~simsearch.applications.choose_threshold`, the Ray engine
(:mod:`~simsearch.applications.ray_jobs`) and :class:`~simsearch.Deduplicator`
all load their input with :func:`load_items`, join it with :func:`self_join`
(or :func:`knn_pairs` for new rows) and group the result through
:class:`Candidates`. The policies they share live here once:

- **Scores as probabilities.** For titles scored with lexical evidence every
  pair score is the probability that the two are one product: the raw
  :class:`~simsearch.applications.PairScoring` score through the shipped
  :class:`~simsearch.applications.dedup_calibration.PairCalibration`.
  Vectors keep their cosine (no calibration carries over between models).
- **Default threshold** (:func:`default_threshold`): probability 0.15 for
  titles scored with lexical evidence (see :data:`DEFAULT_TEXT_THRESHOLD`),
  0.9 cosine otherwise.
- **Search effort** (:func:`chosen_ef`, :func:`search_ef`): an ``ef`` the user
  gave, as an argument or in ``index_params``, is used as given; only when
  none was given does a join use its own default, ``max(2 * k, 64)``.
- **Pairs scored once.** A pair found from both of its ends, or from two
  batches, is kept once, and scored exactly once, at the join. The scored
  pairs are kept down to a floor, so :meth:`Candidates.group` regroups them
  at any threshold at or above it without searching again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch._validation import NO_ID, as_float_matrix, check_ef, check_k, check_positive_int, check_threshold
from simsearch.applications._items import Items, as_vectors, build_index, default_encoder, progress_bar
from simsearch.applications.dedup_calibration import PairCalibration, default_calibration
from simsearch.applications.grouping import canonical_members, group_pairs
from simsearch.applications.lexical import LexicalModel, PairScoring

#: Schema metadata key of a pairs table: b"probability" when its ``score`` column is calibrated.
SCORE_KIND_KEY = b"simsearch.score"

__all__ = [
    "DEFAULT_TEXT_THRESHOLD",
    "DEFAULT_VECTOR_THRESHOLD",
    "MIN_EF",
    "Candidates",
    "Duplicates",
    "LoadedItems",
    "check_max_group_size",
    "check_score",
    "chosen_ef",
    "cross_join",
    "default_threshold",
    "default_thresholds",
    "is_vector_input",
    "knn_pairs",
    "load_items",
    "no_pairs",
    "search_ef",
    "self_join",
    "unique_pairs",
    "unit_vectors",
]

#: Default pair threshold for titles scored with lexical evidence: a probability
#: (see :mod:`~simsearch.applications.dedup_calibration`).
DEFAULT_TEXT_THRESHOLD = 0.15
#: Default cosine threshold for bare vectors.
DEFAULT_VECTOR_THRESHOLD = 0.9
#: Least search effort of a candidate search when the user gave none.
MIN_EF = 64
#: Rows whose norm is within this of 1 count as unit rows (float32
#: normalization leaves about 3e-7); the cosine of two such rows is their
#: inner product to within 2e-6.
UNIT_TOLERANCE = 1e-6
#: Rows handled per step when checking or normalizing vectors: the
#: temporaries stay a few megabytes whatever the input's size.
_NORM_CHUNK = 8192
#: Candidate pairs scored per step of a join.
_SCORE_CHUNK = 16_384


class Duplicates(NamedTuple):
    """Result of :func:`~simsearch.find_duplicates`.

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


# ---------------------------------------------------------------- policies
def default_threshold(lexical_text: bool) -> float:
    """The pair threshold used when none is given: 0.5 for titles with lexical scoring, 0.9 cosine otherwise."""
    return DEFAULT_TEXT_THRESHOLD if lexical_text else DEFAULT_VECTOR_THRESHOLD


def default_thresholds(lexical_text: bool) -> list[float]:
    """Thresholds a threshold choice tries by default: probabilities 0.05..0.95 by 0.025 (lexical titles), else cosines 0.70..0.99 by 0.01."""
    grid = np.arange(0.05, 0.951, 0.025) if lexical_text else np.arange(0.7, 0.991, 0.01)
    return np.round(grid, 4).tolist()


def check_score(value: Any, name: str = "threshold") -> float:
    """A pair-score threshold as a finite float.

    Any finite value is accepted: pair scores lie in about [-1.2, 1.2] with
    the default :class:`PairScoring`, but its bonus and penalties are the
    user's to set.
    """
    try:
        return check_threshold(value, name, low=-math.inf, high=math.inf)
    except ValueError:
        raise ValueError(f"{name} must be a finite number, got {value}") from None


def check_max_group_size(value: Any) -> int | None:
    """``None`` or an integer of at least 2."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 2:
        raise ValueError(f"max_group_size must be an integer >= 2 or None, got {value!r}")
    return int(value)


def chosen_ef(ef: Any, index_params: dict[str, Any] | None) -> int | None:
    """The search effort the user chose: ``ef``, else ``index_params["ef"]``, else None.

    Checked here, once, with :func:`~simsearch._validation.check_ef`.
    """
    if ef is not None:
        return check_ef(ef)
    given = (index_params or {}).get("ef")
    return None if given is None else check_ef(given, "index_params['ef']")


def search_ef(ef: int | None, k: int) -> int:
    """The ``ef`` of a search for ``k`` neighbours: the user's (from :func:`chosen_ef`), else ``max(2 k, 64)``."""
    return max(2 * k, MIN_EF) if ef is None else ef


def is_vector_input(data: Any) -> bool:
    """Whether ``data`` is an array of vectors rather than a table of titles."""
    return isinstance(data, np.ndarray) or (isinstance(data, Sequence) and not isinstance(data, (str, bytes)))


# ---------------------------------------------------------------- input
@dataclass
class LoadedItems:
    """Input of a join: the items, their ids and, for titles, the texts and lexical model.

    Attributes
    ----------
    items : Items
    ids : pyarrow.Array of shape (n,)
        Id of each row.
    texts : list of str or None
        The titles (None for vectors).
    lexical_model : LexicalModel or None
        Fitted on ``texts`` when lexical scoring is on.
    """

    items: Items
    ids: pa.Array
    texts: list[str] | None = None
    lexical_model: LexicalModel | None = None

    @property
    def lexical_text(self) -> bool:
        """Titles scored with lexical evidence (the default threshold depends on it)."""
        return self.items.features is not None

    def default_calibration(self) -> PairCalibration | None:
        """The shipped calibration for titles with lexical scoring; None (cosines) for vectors."""
        return default_calibration() if self.lexical_text else None


def load_items(
    data: Any,
    *,
    ids: Any = None,
    id_col: str = "id",
    text_col: str = "title",
    encoder: Any = None,
    lexical: bool = True,
    scoring: PairScoring,
    progress: bool | None = None,
    copy: bool = True,
) -> LoadedItems:
    """Read vectors or a table of titles into :class:`LoadedItems`.

    Parameters
    ----------
    data : array-like of shape (n, dim), float, or a table
        Vectors, or a pyarrow Table, pandas DataFrame, mapping or Parquet/CSV
        path with ``id_col`` and ``text_col``.
    ids : array-like of shape (n,), optional
        Ids of the vectors (default ``0..n-1``); a table names its id column.
    id_col, text_col : str
    encoder : TextEncoder, optional
        Encodes titles; default ``TextEncoder()``.
    lexical : bool
        Fit the lexical model on the titles.
    scoring : PairScoring
    progress : bool or None
    copy : bool, default True
        Vectors: always hold a normalized copy. ``False`` uses the caller's
        array itself, read-only, when it is already float32, C-contiguous and
        of unit rows (:func:`unit_vectors`), for callers whose items do not
        outlive the call (:func:`~simsearch.find_duplicates`): a million
        384-d vectors then cost no second 1.5 GB.

    Raises
    ------
    ValueError
        Empty input, ``ids`` of the wrong length or with a table, null or
        repeated table ids.
    MissingColumnError
        A table without ``id_col`` or ``text_col``.
    """
    if is_vector_input(data):
        vectors = as_vectors(data, "data") if copy else unit_vectors(data, "data")
        if len(vectors) == 0:
            raise ValueError("data is empty: it has no rows")
        if ids is None:
            id_array = pa.array(np.arange(len(vectors), dtype=np.int64))
        else:
            id_array = ids if isinstance(ids, pa.Array) else pa.array(ids)
            if len(id_array) != len(vectors):
                raise ValueError(f"ids has {len(id_array)} entries, data has {len(vectors)} rows")
        return LoadedItems(Items.from_vectors(vectors), id_array)
    if ids is not None:
        raise ValueError("ids applies to an array of vectors; a table names its id column with id_col")
    table = _tables.read_table(data, [id_col, text_col], name="data")
    _tables.require_rows(table, name="data")
    id_array = _tables.id_column(table, id_col, name="data").combine_chunks()
    texts = _tables.text_column(table, text_col, name="data")
    encoder = default_encoder() if encoder is None else encoder
    model = LexicalModel(scoring).fit(texts) if lexical else None
    return LoadedItems(Items.from_texts(texts, encoder, model, scoring, progress), id_array, texts, model)


def unit_vectors(data: Any, name: str) -> np.ndarray:
    """``data`` as unit float32 rows, without copying rows that already are.

    A float32 C-contiguous array whose rows all have unit norm (within
    :data:`UNIT_TOLERANCE`, as embedding models return them) comes back as
    a read-only view of itself; any other input is converted and normalized
    into one new array, with the same values as ``as_vectors``, a chunk of
    rows at a time, so that no temporary of the input's size is made
    (``np.linalg.norm`` of the whole array squares it all first).

    Parameters
    ----------
    data : array-like of shape (n, dim), float
    name : str
        Named in errors.

    Returns
    -------
    ndarray of shape (n, dim), float32
        Unit rows (zero rows stay zero); read-only.

    Raises
    ------
    ValueError
        NaN or inf, a 1-D array or a 3-D one (:class:`~simsearch.errors.DimensionError`).
    TypeError
        Integer, boolean or object arrays.
    """
    arr = as_float_matrix(data, name)
    if arr is data or arr.base is not None:  # the caller's memory: used as it is, or copied
        if _unit_rows(arr):
            view = arr.view()
            view.flags.writeable = False
            return view
        out = np.empty_like(arr)
    else:  # a conversion made just now (another dtype, not contiguous) is normalized in place
        out = arr
    for lo in range(0, len(arr), _NORM_CHUNK):
        block = arr[lo : lo + _NORM_CHUNK]
        # The arithmetic of unit_rows (as_vectors), so both paths give the same bits.
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.where(norms > 0, norms, np.float32(1)), out=out[lo : lo + len(block)])
    out.flags.writeable = False
    return out


def _unit_rows(x: np.ndarray) -> bool:
    """Whether every row of ``x`` has unit norm within :data:`UNIT_TOLERANCE` (checked a chunk at a time)."""
    for lo in range(0, len(x), _NORM_CHUNK):
        norms = np.linalg.norm(x[lo : lo + _NORM_CHUNK], axis=1)
        if not np.all(np.abs(norms - 1) <= UNIT_TOLERANCE):
            return False
    return True


# ---------------------------------------------------------------- joins
def cross_join(index: Any, queries: np.ndarray, k: int, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index id) of each query's ``k`` nearest neighbours, query-major, padding dropped.

    Parameters
    ----------
    index : Index or ShardedIndex
    queries : ndarray of shape (m, dim), float32
    k : int
    ef : int or None
        The user's search effort (:func:`chosen_ef`); None for the default.

    Returns
    -------
    rows : ndarray of shape (p,), int64
    found : ndarray of shape (p,), int64
    """
    found, _ = index.search(queries, k=k, ef=search_ef(ef, k))
    rows = np.repeat(np.arange(len(queries), dtype=np.int64), k)
    flat = found.reshape(-1)
    valid = flat != NO_ID
    return rows[valid], flat[valid].astype(np.int64)


def knn_pairs(
    index: Any,
    items: Items,
    rows: np.ndarray,
    k: int,
    scoring: PairScoring,
    floor: float,
    batch_size: int,
    progress: bool | None,
    ef: int | None = None,
    calibration: PairCalibration | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scored pairs between ``rows`` and their ``k`` nearest neighbours in ``index``.

    Parameters
    ----------
    index : Index or ShardedIndex
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
    ef : int or None
        The user's search effort; None for the default.
    calibration : PairCalibration, optional
        Maps raw pair scores to probabilities; ``floor`` and the returned
        scores are then probabilities.

    Returns
    -------
    rows_a, rows_b : ndarray of shape (p,), int64
        Each pair once, ``rows_a < rows_b``, sorted.
    scores : ndarray of shape (p,), float32
    """
    n = len(items)
    kk = min(k + 1, len(index))  # the item itself comes back too
    if len(rows) == 0 or kk < 2:
        return no_pairs()
    raw_floor = floor if calibration is None else calibration.raw(floor)
    keep_a, keep_b, keep_s = [], [], []
    bar = progress_bar(len(rows), "searching", progress)
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    # The next batch is searched (native code, without the GIL, on the index's
    # threads) while this one is scored in Python, so the cores need not wait
    # for the scoring.
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(cross_join, index, items.search[batches[0]], kk, ef)
        for i, batch in enumerate(batches):
            q, b = ahead.result()
            if i + 1 < len(batches):
                ahead = pool.submit(cross_join, index, items.search[batches[i + 1]], kk, ef)
            a, b, s = _scored_pairs(items, batch[q], b, scoring, raw_floor)
            keep_a.append(a)
            keep_b.append(b)
            keep_s.append(s if calibration is None else calibration.apply(s))
            bar.update(len(batch))
    bar.close()
    return unique_pairs(n, np.concatenate(keep_a), np.concatenate(keep_b), np.concatenate(keep_s))


def _scored_pairs(
    items: Items, a: np.ndarray, b: np.ndarray, scoring: PairScoring, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs ``(a[i], b[i])`` of one batch, each once with ``a < b``, sorted, that score at least ``floor``."""
    not_self = a != b
    a, b = a[not_self], b[not_self]
    n = len(items)
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))  # one pair found from both ends counts once
    a, b = key // n, key % n
    # Scored in slices: scoring gathers both rows of the pairs it scores
    # (up to 65,536 pairs at once: 200 MB of 384-d rows).
    s = np.empty(len(a), dtype=np.float32)
    for lo in range(0, len(a), _SCORE_CHUNK):
        hi = lo + _SCORE_CHUNK
        s[lo:hi] = items.pair_scores(items, a[lo:hi], b[lo:hi], scoring, floor=floor)
    hit = s >= floor
    return a[hit], b[hit], s[hit]


def unique_pairs(n: int, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each pair ``(a < b)`` once (found in two batches or shards), sorted by ``(a, b)``."""
    key, first = np.unique(a * n + b, return_index=True)
    return key // n, key % n, s[first]


def no_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empty ``(rows_a, rows_b, scores)``."""
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty, np.zeros(0, dtype=np.float32)


def self_join(
    loaded: LoadedItems,
    *,
    k: int,
    floor: float | None,
    scoring: PairScoring,
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
    ef: int | None = None,
    raw_scores: bool = False,
) -> Candidates:
    """Index the items in this process and join each with its ``k`` nearest neighbours.

    Parameters
    ----------
    loaded : LoadedItems
    k : int
        Neighbours per item.
    floor : float or None
        Least score of a kept pair; default :func:`default_threshold`.
    scoring : PairScoring
    index_params : dict, optional
        Passed to :class:`~simsearch.Index` (default ``ef_construction=100``).
    batch_size : int
        Items searched and scored per step.
    progress : bool or None
    ef : int, optional
        The search effort; default ``index_params["ef"]``, else ``max(2 k, 64)``.
    raw_scores : bool, default False
        Keep the raw pair scores (for fitting a calibration) instead of the
        probabilities of :meth:`LoadedItems.default_calibration`.

    Returns
    -------
    Candidates
        With ``index`` set to the built index (None for fewer than two items).
    """
    k = check_k(k)
    batch_size = check_positive_int(batch_size, "batch_size")
    ef = chosen_ef(ef, index_params)
    floor = default_threshold(loaded.lexical_text) if floor is None else floor
    calibration = None if raw_scores else loaded.default_calibration()
    items = loaded.items
    if len(items) < 2:
        return Candidates(loaded, scoring, floor, no_pairs(), calibration=calibration)
    params = {"ef_construction": 100, **(index_params or {})}
    index = build_index(items.search, params, progress)
    rows = np.arange(len(items), dtype=np.int64)
    pairs = knn_pairs(index, items, rows, k, scoring, floor, batch_size, progress, ef, calibration)
    return Candidates(loaded, scoring, floor, pairs, index=index, calibration=calibration)


# ---------------------------------------------------------------- the joined pairs
@dataclass
class Candidates:
    """The scored kNN self-join of one input, reusable for every threshold at or above ``floor``.

    Attributes
    ----------
    loaded : LoadedItems
    scoring : PairScoring
    floor : float
        Pairs below it were not kept.
    pairs : tuple of ndarray
        ``(rows_a, rows_b, scores)``: int64, int64, float32, each pair once.
    index : Index or None
        The index the join built in this process (None for the Ray engine).
    rules : dict
        ``(row_a, row_b) -> rule adjustment``, filled by :meth:`cross`.
    vetoes : dict
        ``(row_a, row_b) -> conflict``, filled by :meth:`conflict`.
    calibration : PairCalibration or None
        Maps raw scores to the probabilities in ``pairs`` and :meth:`cross`
        (None: raw scores, or cosines for vectors).
    """

    loaded: LoadedItems
    scoring: PairScoring
    floor: float
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
    index: Any = None
    rules: dict[tuple[int, int], float] = field(default_factory=dict)
    vetoes: dict[tuple[int, int], bool] = field(default_factory=dict)
    calibration: PairCalibration | None = None

    @property
    def items(self) -> Items:
        return self.loaded.items

    @property
    def ids(self) -> pa.Array:
        return self.loaded.ids

    def cross(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """Scores of every pair across two row lists, shape (len(rows_a), len(rows_b)), float32."""
        raw = self.items.cross_scores(self.items, rows_a, rows_b, self.scoring, self.rules)
        return raw if self.calibration is None else self.calibration.apply(raw)

    def conflict(self, rows_a: np.ndarray, rows_b: np.ndarray) -> bool:
        """Whether any pair across two row lists has conflicting attributes (never one group)."""
        return self.items.conflicts(self.items, rows_a, rows_b, self.vetoes)

    def group(self, threshold: float, refine: bool, max_group_size: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Group label of every row (int64, shape (n,)) and the mask of pairs at or above ``threshold``."""
        rows_a, rows_b, scores = self.pairs
        hit = scores >= threshold
        labels = group_pairs(
            len(self.items),
            rows_a[hit],
            rows_b[hit],
            scores[hit],
            cross_score=self.cross,
            link_threshold=threshold,
            max_group_size=max_group_size,
            refine=refine,
            conflict=self.conflict if self.loaded.lexical_text else None,
        )
        return labels, hit

    def duplicates(
        self, threshold: float, refine: bool, max_group_size: int | None, include_singletons: bool
    ) -> Duplicates:
        """The pairs and groups at ``threshold`` (see :class:`Duplicates`)."""
        labels, hit = self.group(threshold, refine, max_group_size)
        return self.tables(labels, hit, include_singletons)

    def tables(self, labels: np.ndarray, hit: np.ndarray, include_singletons: bool) -> Duplicates:
        """:class:`Duplicates` of a grouping from :meth:`group`."""
        ids = self.ids
        rows_a, rows_b, scores = self.pairs
        a, b, s = rows_a[hit], rows_b[hit], scores[hit]
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
        if self.calibration is not None:  # readers (the HTML report) show calibrated scores as probabilities
            pairs = pairs.replace_schema_metadata({SCORE_KIND_KEY: b"probability"})
        sizes = np.bincount(labels, minlength=len(labels))[labels]
        rows = np.arange(len(labels)) if include_singletons else np.flatnonzero(sizes > 1)
        canon = canonical_members(labels, self.cross)
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
