"""Incremental duplicate detection with stable group ids: :class:`Deduplicator`.

A catalog changes every day; re-running :func:`~simsearch.find_duplicates`
each night renumbers every group. :class:`Deduplicator` keeps a state (the
index, the scored candidate pairs, the groups) and updates it:

- **New items** are added to the index and their ``k`` nearest neighbours are
  scored with the same pair score as :func:`~simsearch.find_duplicates`. The
  groups they touch (through a pair at or above the threshold), seeded as
  they are, and the new items are then merged over the new items' pairs by the
  same strongest-first, average-linkage rule
  (:func:`~simsearch.applications.grouping.group_pairs` with ``initial``): a
  new item joins a group, forms a new one, or bridges two groups into one.
  Pairs between old groups are not weighed again.
- **Removed items** leave the index and their pairs. A group that lost members
  is split where no pair at or above the threshold holds it together any more.
- **A new threshold** (from :meth:`Deduplicator.calibrate`) regroups every item
  from the stored pairs at the next update.

Group ids then follow the groups: each old id goes, oldest first, to the new
group holding most of its members if that group has no id yet, so an unchanged
group keeps its id, a merge keeps the older id and the largest part of a split
keeps the id; other groups get fresh ids. Every change is reported in the change
table that :meth:`Deduplicator.update` returns (``joined``, ``new_group``,
``merged``, ``split``, ``removed``); an item absent from it kept its group id.

**Chains.** Merging by average linkage already refuses to join two groups that
only touch through one pair; ``max_group_size`` caps a group, and a group larger
than the cap (after lowering it) is cut at its weakest bridge: the weakest edge
of its maximum spanning tree over the pairs above the threshold.

**State on disk.** :meth:`Deduplicator.save` writes a new version folder
(``v000001``, ...) holding a checksummed container (arrays, parameters,
calibration), Parquet files (ids, titles, n-gram vocabulary), the index and a
``manifest.json`` with the SHA-256 of each; then it swaps the ``CURRENT``
pointer file (write, fsync, rename). A save interrupted at any point leaves the
previous version in place and readable. Nothing is unpickled on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simsearch import _fileio, _tables
from simsearch.applications._items import Items, as_vectors, build_index, default_encoder
from simsearch.applications.dedup import (
    DEFAULT_TEXT_THRESHOLD,
    DEFAULT_VECTOR_THRESHOLD,
    _Candidates,
    _check_threshold,
    is_vector_input,
    knn_pairs,
)
from simsearch.applications.grouping import group_pairs
from simsearch.applications.lexical import LexicalModel, PairScoring, TextFeatures, extract_facts, hybrid_vectors
from simsearch.applications.review import ReviewCalibration, calibrate, read_labels, sample_review_pairs

#: Layout version of a state folder; :meth:`Deduplicator.load` refuses newer ones.
FORMAT_VERSION = 1
STATE_KIND = "simsearch.Deduplicator"
#: Candidate pairs are kept down to this far below the threshold, so the review
#: loop can label pairs on both sides of it and a recalibration can lower it.
PAIR_MARGIN = 0.25
EVENTS = ("joined", "new_group", "merged", "split", "removed")

_POINTER = "CURRENT"
_VERSION_DIR = re.compile(r"^v\d{6}$")
_STATE_FILE = "state.ssc"
_ITEMS_FILE = "items.parquet"
_VOCAB_FILE = "vocabulary.parquet"
_INDEX_FILE = "index.ssi"
_MANIFEST = "manifest.json"


class Deduplicator:
    """Duplicate groups that stay stable as items come and go.

    Parameters
    ----------
    threshold : float, optional
        Least pair score for two items to be duplicates. Default: 0.5 for
        titles with lexical scoring, 0.9 cosine for vectors (as
        :func:`~simsearch.find_duplicates`). A calibration from reviewed pairs
        (:meth:`calibrate`) replaces it.
    k : int, default 10
        Neighbours looked up per item.
    encoder : TextEncoder, optional
        Encodes titles; default ``TextEncoder()``. Unused for vectors.
    max_group_size : int or None, default None
        Largest group; ``None`` for no cap (average linkage still guards
        against chains).
    id_col, text_col : str, default "id", "title"
        Columns of tables.
    lexical : bool, default True
        Score titles with character n-grams, model codes and measures as well
        as the embedding (see :class:`~simsearch.PairScoring`).
    scoring : PairScoring, optional
    index_params : dict, optional
        Passed to :class:`~simsearch.Index` (default ``ef_construction=100``).
    batch_size : int, default 10000
        Items searched and scored per step.
    progress : bool or None, default None
        Progress bars; ``None`` shows them when stderr is a terminal.

    Attributes
    ----------
    groups_ : pyarrow.Table
        ``item_id``, ``group_id`` (int64): one row per live item, singletons
        included, in the order items arrived.
    threshold_ : float
        The threshold in use (the calibrated one after :meth:`calibrate`).
    calibration_ : ReviewCalibration or None
        The last recalibration from reviewed pairs.
    n_items_ : int
        Live items.

    Examples
    --------
    >>> import numpy as np
    >>> from simsearch import Deduplicator
    >>> x = np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0]], dtype=np.float32)
    >>> dedup = Deduplicator(threshold=0.95, k=2, progress=False).fit(x, ids=[10, 11, 12])
    >>> dedup.groups_.column("group_id").to_pylist()
    [0, 0, 1]
    >>> changes = dedup.update(np.array([[0.02, 0.99, 0]], dtype=np.float32), new_ids=[13])
    >>> changes.to_pylist()
    [{'item_id': 13, 'old_group': None, 'new_group': 1, 'event': 'joined'}]
    """

    def __init__(
        self,
        threshold: float | None = None,
        k: int = 10,
        encoder: Any = None,
        max_group_size: int | None = None,
        *,
        id_col: str = "id",
        text_col: str = "title",
        lexical: bool = True,
        scoring: PairScoring | None = None,
        index_params: dict[str, Any] | None = None,
        batch_size: int = 10_000,
        progress: bool | None = None,
    ) -> None:
        self.threshold = threshold
        self.k = k
        self.encoder = encoder
        self.max_group_size = max_group_size
        self.id_col = id_col
        self.text_col = text_col
        self.lexical = lexical
        self.scoring = scoring
        self.index_params = index_params
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def fit(self, items: Any, ids: Any = None) -> Deduplicator:
        """Build the state from a first set of items.

        Parameters
        ----------
        items : array-like of shape (n, dim), float, or a table
            Vectors, or a pyarrow Table, pandas DataFrame, mapping or
            Parquet/CSV path with ``id_col`` and ``text_col``.
        ids : array-like of shape (n,), optional
            Ids of the vectors (default ``0..n-1``); a table names its ids
            with ``id_col``.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Empty input, NaN/inf, repeated or null ids, a bad parameter.
        TypeError
            Integer or object arrays where float vectors are expected.
        """
        threshold = self._check_params()
        vectors = is_vector_input(items)
        if threshold is None:
            threshold = DEFAULT_TEXT_THRESHOLD if (not vectors and self.lexical) else DEFAULT_VECTOR_THRESHOLD
        if vectors and ids is not None:
            _check_unique_ids(_as_id_array(ids, "ids"), "ids")
        encoder = None
        if not vectors:
            encoder = default_encoder() if self.encoder is None else self.encoder
        cands = _Candidates(
            items,
            k=self.k,
            floor=threshold - PAIR_MARGIN,
            ids=ids,
            id_col=self.id_col,
            text_col=self.text_col,
            encoder=encoder,
            lexical=self.lexical,
            scoring=self.scoring,
            index_params=self.index_params,
            batch_size=self.batch_size,
            progress=self.progress,
        )
        labels, _ = cands.group(threshold, True, self.max_group_size)
        n = len(cands.items)
        self._kind = "vectors" if vectors else "texts"
        self._scoring = cands.scoring
        self._items = cands.items
        self._titles = cands.texts
        self._lexical_model = cands.lexical_model
        self._index = cands.index if cands.index is not None else self._new_index(cands.items.search)
        self._rules = cands._rules
        self._keys = cands.ids
        self._row_of = _row_map(self._keys)
        self._alive = np.ones(n, dtype=bool)
        _, gid = np.unique(labels, return_inverse=True)  # 0..G-1 in order of each group's first item
        self._group = gid.astype(np.int64)
        self._next_group = int(gid.max()) + 1 if n else 0
        self._edges = (cands.rows_a, cands.rows_b, cands.scores)
        self._floor = float(threshold - PAIR_MARGIN)
        self._base_threshold = float(threshold)
        self._grouped_at = float(threshold)
        self.calibration_: ReviewCalibration | None = None
        self._encoder_id = _encoder_identity(encoder) if encoder is not None else None
        self._dim = int(cands.items.vectors.shape[1])
        return self

    def _check_params(self) -> float | None:
        threshold = None if self.threshold is None else _check_threshold(self.threshold)
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.max_group_size is not None and (
            isinstance(self.max_group_size, bool)
            or not isinstance(self.max_group_size, (int, np.integer))
            or self.max_group_size < 2
        ):
            raise ValueError(f"max_group_size must be an integer >= 2 or None, got {self.max_group_size!r}")
        return threshold

    def _new_index(self, search: np.ndarray) -> Any:
        params = dict(self.index_params or {})
        params.setdefault("ef_construction", 100)
        return build_index(search, params, self.progress)

    def _fitted(self) -> None:
        if not hasattr(self, "_items"):
            raise RuntimeError("this Deduplicator is not fitted: call fit() or Deduplicator.load() first")

    # ------------------------------------------------------------------ state views
    @property
    def threshold_(self) -> float:
        self._fitted()
        return self.calibration_.threshold if self.calibration_ is not None else self._base_threshold

    @property
    def n_items_(self) -> int:
        self._fitted()
        return int(self._alive.sum())

    @property
    def groups_(self) -> pa.Table:
        self._fitted()
        live = np.flatnonzero(self._alive)
        return pa.table(
            {
                "item_id": self._keys.take(pa.array(live, type=pa.int64())),
                "group_id": pa.array(self._group[live], type=pa.int64()),
            }
        )

    def pairs(self, min_score: float | None = None) -> pa.Table:
        """Stored candidate pairs between live items, best first.

        Parameters
        ----------
        min_score : float, optional
            Least score; default the threshold in use.

        Returns
        -------
        pyarrow.Table
            ``id_a``, ``id_b``, ``score`` (float32), ``same_group`` (bool).
        """
        self._fitted()
        floor = self.threshold_ if min_score is None else _check_threshold(min_score, "min_score")
        a, b, s = self._live_edges()
        keep = s >= floor
        a, b, s = a[keep], b[keep], s[keep]
        order = np.lexsort((b, a, -s))
        a, b, s = a[order], b[order], s[order]
        return pa.table(
            {
                "id_a": self._keys.take(pa.array(a, type=pa.int64())),
                "id_b": self._keys.take(pa.array(b, type=pa.int64())),
                "score": pa.array(s, type=pa.float32()),
                "same_group": pa.array(self._group[a] == self._group[b]),
            }
        )

    def _live_edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, s = self._edges
        keep = self._alive[a] & self._alive[b]
        return a[keep], b[keep], s[keep]

    def _cross(self, items: Items) -> Any:
        scoring, rules = self._scoring, self._rules
        return lambda ra, rb: items.cross_scores(items, ra, rb, scoring, rules)

    # ------------------------------------------------------------------ update
    def update(self, new_items: Any = None, new_ids: Any = None, removed_ids: Any = None) -> pa.Table:
        """Add and remove items, regroup what they touch, and report the changes.

        Every input is checked before anything changes: on an error the state
        is as it was.

        Parameters
        ----------
        new_items : array-like of shape (m, dim), float, or a table, optional
            Items to add, in the form :meth:`fit` took (vectors, or a table
            of ids and titles).
        new_ids : array-like of shape (m,), optional
            Ids of new vectors (required with vectors).
        removed_ids : array-like, optional
            Ids of items to remove.

        Returns
        -------
        pyarrow.Table
            One row per item whose group changed: ``item_id``, ``old_group``
            (int64, null for a new item), ``new_group`` (int64, null for a
            removed one) and ``event``: ``joined`` (a new item in a group with
            older items), ``new_group`` (a new item in a group of new items
            only), ``merged`` (its group merged into an older one), ``split``
            (its group split and its part got another id), ``removed``.

        Raises
        ------
        ValueError
            New ids already present or repeated, removed ids unknown or
            repeated, an id both added and removed, vectors of the wrong
            dimension or with NaN, a table without its id or title column.
        TypeError
            Vectors for a state of titles or the reverse; non-float vectors.
        """
        self._fitted()
        removed_rows = self._check_removed(removed_ids)
        new = self._prepare_new(new_items, new_ids)
        if new is not None and removed_rows.size:
            both = set(new[0].to_pylist()) & {self._keys[int(r)].as_py() for r in removed_rows}
            if both:
                raise ValueError(f"ids {sorted(both, key=str)[:3]} are both added and removed in one update")
        threshold = self.threshold_
        if new is None and removed_rows.size == 0 and threshold == self._grouped_at and self._fits_cap():
            return self._changes([], [], [], [])
        n_old = len(self._keys)
        keys, items_new, titles_new = new if new is not None else (None, None, None)
        m = 0 if items_new is None else len(items_new)
        new_rows = np.arange(n_old, n_old + m, dtype=np.int64)
        added = removed = False
        try:
            items = self._items if m == 0 else _concat_items(self._items, items_new)
            if m:
                self._index.add(items_new.search, ids=new_rows.astype(np.uint64))
                added = True
            if removed_rows.size:
                self._index.remove(removed_rows.astype(np.uint64))
                removed = True
            alive = np.r_[self._alive, np.ones(m, dtype=bool)]
            alive[removed_rows] = False
            na, nb, ns = knn_pairs(
                self._index, items, new_rows, self.k, self._scoring, self._floor, self.batch_size, self.progress
            )
            a, b, s = self._edges
            keep = alive[a] & alive[b]
            edges = (np.r_[a[keep], na], np.r_[b[keep], nb], np.r_[s[keep], ns].astype(np.float32))
            old_group = np.r_[self._group, np.full(m, -1, dtype=np.int64)]
            old_group[removed_rows] = -1
            cluster, affected = self._regroup(items, alive, old_group, edges, new_rows, removed_rows, threshold)
            group, next_group, events = _assign_ids(cluster, affected, old_group, self._group, self._next_group)
        except BaseException:
            if added:
                self._index.remove(new_rows.astype(np.uint64))
            if removed:
                self._index.add(self._items.search[removed_rows], ids=removed_rows.astype(np.uint64))
            raise
        # Commit: nothing above changed the state except the index.
        removed_groups = self._group[removed_rows]
        self._items = items
        if m:
            self._keys = pa.concat_arrays([self._keys, keys])
            if self._titles is not None:
                self._titles = self._titles + titles_new
            for i, key in enumerate(keys.to_pylist()):
                self._row_of[key] = n_old + i
        for r in removed_rows.tolist():
            del self._row_of[self._keys[r].as_py()]
        group[~alive] = -1
        self._alive, self._group, self._next_group, self._edges = alive, group, next_group, edges
        self._grouped_at = threshold
        rows, old, newg, what = events
        rows = list(rows) + removed_rows.tolist()
        old = list(old) + removed_groups.tolist()
        newg = list(newg) + [None] * len(removed_rows)
        what = list(what) + ["removed"] * len(removed_rows)
        return self._changes(rows, old, newg, what)

    def _fits_cap(self) -> bool:
        if self.max_group_size is None:
            return True
        live = self._group[self._alive]
        return live.size == 0 or int(np.bincount(live).max()) <= self.max_group_size

    def _changes(self, rows: list[int], old: list[Any], new: list[Any], events: list[str]) -> pa.Table:
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        return pa.table(
            {
                "item_id": self._keys.take(pa.array(np.asarray(rows, dtype=np.int64)[order], type=pa.int64())),
                "old_group": pa.array([old[i] for i in order], type=pa.int64()),
                "new_group": pa.array([new[i] for i in order], type=pa.int64()),
                "event": pa.array([events[i] for i in order], type=pa.string()),
            }
        )

    def _check_removed(self, removed_ids: Any) -> np.ndarray:
        if removed_ids is None:
            return np.zeros(0, dtype=np.int64)
        ids = _as_id_array(removed_ids, "removed_ids")
        _check_unique_ids(ids, "removed_ids")
        values = ids.to_pylist()
        unknown = [v for v in values if v not in self._row_of]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise ValueError(f"removed_ids holds an id that is not in the state: {unknown[0]!r}{more}")
        return np.array([self._row_of[v] for v in values], dtype=np.int64)

    def _prepare_new(self, new_items: Any, new_ids: Any) -> tuple[pa.Array, Items, list[str] | None] | None:
        if new_items is None:
            if new_ids is not None:
                raise ValueError("new_ids given without new_items")
            return None
        if self._kind == "vectors":
            if not is_vector_input(new_items):
                raise TypeError("this state holds vectors: pass new_items as an array of vectors, with new_ids")
            if new_ids is None:
                raise ValueError("new_ids is required with new vectors")
            vectors = as_vectors(new_items, "new_items", self._dim)
            keys = _as_id_array(new_ids, "new_ids")
            if len(keys) != len(vectors):
                raise ValueError(f"new_ids has {len(keys)} entries, new_items has {len(vectors)} rows")
            keys = self._same_id_type(keys, "new_ids")
            self._check_new_keys(keys)
            return keys, Items.from_vectors(vectors), None
        if is_vector_input(new_items):
            raise TypeError(
                f"this state holds titles: pass new_items as a table with {self.id_col!r} and {self.text_col!r} columns"
            )
        if new_ids is not None:
            raise ValueError("new_ids applies to vectors; a table names its ids with id_col")
        table = _tables.read_table(new_items, [self.id_col, self.text_col], name="new_items")
        if table.num_rows == 0:
            return None
        keys = self._same_id_type(_tables.id_column(table, self.id_col, name="new_items").combine_chunks(), "new_items ids")
        self._check_new_keys(keys)
        texts = _tables.text_column(table, self.text_col, name="new_items")
        items = Items.from_texts(texts, self._text_encoder(), self._lexical_model, self._scoring, self.progress)
        if items.vectors.shape[1] != self._dim:
            raise ValueError(f"the encoder gives {items.vectors.shape[1]}-d vectors, the state holds {self._dim}-d")
        return keys, items, texts

    def _same_id_type(self, keys: pa.Array, name: str) -> pa.Array:
        if keys.type == self._keys.type:
            return keys
        if pa.types.is_integer(keys.type) and pa.types.is_integer(self._keys.type):
            return keys.cast(self._keys.type)
        raise TypeError(f"{name} are {keys.type}, the state's ids are {self._keys.type}")

    def _check_new_keys(self, keys: pa.Array) -> None:
        _check_unique_ids(keys, "new ids")
        present = [v for v in keys.to_pylist() if v in self._row_of]
        if present:
            more = f" (and {len(present) - 1} more)" if len(present) > 1 else ""
            raise ValueError(f"new item id {present[0]!r} is already in the state{more}; remove it first to replace it")

    def _text_encoder(self) -> Any:
        if self.encoder is None:
            self.encoder = default_encoder()
        check_encoder(self._encoder_id, self.encoder)
        return self.encoder

    def _regroup(
        self,
        items: Items,
        alive: np.ndarray,
        old_group: np.ndarray,
        edges: tuple[np.ndarray, np.ndarray, np.ndarray],
        new_rows: np.ndarray,
        removed_rows: np.ndarray,
        threshold: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cluster labels of every row and the mask of rows whose group may have changed."""
        n = len(alive)
        a, b, s = edges
        hit = s >= threshold
        a, b, s = a[hit], b[hit], s[hit]
        cross = self._cross(items)
        cap = self.max_group_size
        if threshold != self._grouped_at:
            # A new threshold: regroup everything from the stored pairs.
            cluster = group_pairs(n, a, b, s, cross_score=cross, link_threshold=threshold, max_group_size=cap)
            affected = alive.copy()
        else:
            # Seeds: the current groups, new items alone; dead rows alone.
            cluster = np.where(old_group >= 0, old_group, self._next_group + np.arange(n))
            affected = np.zeros(n, dtype=bool)
            lost = np.unique(self._group[removed_rows])
            if lost.size:
                # Groups that lost members split where nothing above the threshold holds them.
                in_lost = alive & np.isin(old_group, lost)
                inner = in_lost[a] & in_lost[b] & (old_group[a] == old_group[b])
                comp = _components(n, a[inner], b[inner])
                cluster = np.where(in_lost, self._next_group + n + comp, cluster)
                affected |= in_lost
            is_new = np.zeros(n, dtype=bool)
            is_new[new_rows] = True
            touching = is_new[a] | is_new[b]
            seeds = np.unique(np.r_[cluster[a[touching]], cluster[b[touching]], cluster[new_rows]])
            region = np.flatnonzero(alive & np.isin(cluster, seeds))
            if region.size:
                local = np.full(n, -1, dtype=np.int64)
                local[region] = np.arange(region.size)
                # Only pairs of a new item: pairs between old groups were weighed
                # when those groups formed, and re-weighing them every update
                # would cost as much as the new work (a merge of two old groups
                # goes through the new item that bridges them).
                inside = touching & (local[a] >= 0) & (local[b] >= 0)
                labels = group_pairs(
                    region.size,
                    local[a[inside]],
                    local[b[inside]],
                    s[inside],
                    cross_score=lambda x, y: cross(region[x], region[y]),
                    link_threshold=threshold,
                    max_group_size=cap,
                    initial=cluster[region],
                )
                cluster[region] = 3 * n + self._next_group + region[labels]
                affected[region] = True
        if cap is not None:
            affected |= _cut_large_groups(cluster, alive, a, b, s, cap)
        return cluster, affected & alive

    # ------------------------------------------------------------------ review loop
    def review_pairs(self, n: int = 200, *, seed: int = 0) -> pa.Table:
        """Pairs worth a person's label: most near the threshold, some across the range.

        See :mod:`simsearch.applications.review` for how they are drawn.

        Parameters
        ----------
        n : int, default 200
        seed : int, default 0

        Returns
        -------
        pyarrow.Table
            ``id_a``, ``id_b``, ``title_a``, ``title_b`` (titles only for a
            state of titles), ``score`` (float32), ``stratum`` (int64),
            ``weight`` (float64, candidate pairs the row stands for) and an
            empty ``label`` column to fill with 1 (duplicates) or 0.
        """
        self._fitted()
        a, b, s = self._live_edges()
        picked, stratum, weight = sample_review_pairs(s, self.threshold_, n, seed=seed)
        a, b = a[picked], b[picked]
        columns: dict[str, Any] = {
            "id_a": self._keys.take(pa.array(a, type=pa.int64())),
            "id_b": self._keys.take(pa.array(b, type=pa.int64())),
        }
        if self._titles is not None:
            columns["title_a"] = pa.array([self._titles[i] for i in a.tolist()], type=pa.string())
            columns["title_b"] = pa.array([self._titles[i] for i in b.tolist()], type=pa.string())
        columns["score"] = pa.array(s[picked], type=pa.float32())
        columns["stratum"] = pa.array(stratum, type=pa.int64())
        columns["weight"] = pa.array(weight, type=pa.float64())
        columns["label"] = pa.array([None] * len(picked), type=pa.string())
        return pa.table(columns)

    def export_review(self, path: str | os.PathLike[str], n: int = 200, *, seed: int = 0) -> pa.Table:
        """Write :meth:`review_pairs` to a CSV (or Parquet) file; returns the table."""
        table = self.review_pairs(n, seed=seed)
        _tables.write_table(table, path)
        return table

    def calibrate(
        self, labels: Any, *, target_precision: float | None = None, confidence: float = 0.95
    ) -> ReviewCalibration:
        """Recalibrate the threshold from reviewed pairs; the next :meth:`update` uses it.

        Parameters
        ----------
        labels : table or path
            ``id_a``, ``id_b``, ``label`` (1 duplicates, 0 not, empty: not
            reviewed) and, as :meth:`review_pairs` wrote them, ``weight`` and
            ``stratum``. Pairs are rescored with the current pair score.
        target_precision : float in (0, 1], optional
            Take the lowest threshold whose estimated precision reaches it,
            instead of the one with maximum F1.
        confidence : float, default 0.95
            Level of the precision and recall intervals.

        Returns
        -------
        ReviewCalibration
            Also stored as ``calibration_``.

        Raises
        ------
        MissingColumnError
            A missing ``id_a``, ``id_b`` or ``label`` column (a ``ValueError``).
        ValueError
            A label other than 0/1, an id not in the state, no positive
            label, an unreachable ``target_precision``. The state is unchanged.
        """
        self._fitted()
        table = read_labels(labels)
        rows_a = self._rows_of(table.column("id_a"), "id_a")
        rows_b = self._rows_of(table.column("id_b"), "id_b")
        scores = self._items.pair_scores(self._items, rows_a, rows_b, self._scoring)
        result = calibrate(
            scores,
            table.column("label").to_numpy(),
            table.column("weight").to_numpy(),
            table.column("stratum").to_numpy(),
            self.threshold_,
            target_precision=target_precision,
            confidence=confidence,
        )
        if result.threshold < self._floor:
            # Pairs below the floor were never kept: the threshold cannot act there.
            result = replace(result, threshold=self._floor)
        self.calibration_ = result
        return result

    def import_review(self, labels: Any, *, target_precision: float | None = None) -> ReviewCalibration:
        """Same as :meth:`calibrate` (the name the CLI's ``review import`` mirrors)."""
        return self.calibrate(labels, target_precision=target_precision)

    def _rows_of(self, ids: Any, name: str) -> np.ndarray:
        ids = pa.chunked_array([ids]) if isinstance(ids, pa.Array) else ids
        if ids.null_count:
            raise ValueError(f"labels column {name!r} has empty ids")
        if ids.type != self._keys.type:
            try:
                ids = ids.cast(self._keys.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise ValueError(f"labels column {name!r} holds {ids.type}, the state's ids are {self._keys.type}") from err
        rows = []
        for v in ids.to_pylist():
            row = self._row_of.get(v)
            if row is None:
                raise ValueError(f"labels column {name!r} holds id {v!r}, which is not in the state")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to folder ``path``, atomically.

        A new version folder is written and fsync-ed, then the ``CURRENT``
        pointer is swapped to it by rename; older versions are deleted after.
        If the save is interrupted, ``path`` still holds the previous state.

        Raises
        ------
        ValueError
            ``path`` is a non-empty folder that is not a dedup state.
        OSError
            The files cannot be written (the previous state stays).
        """
        self._fitted()
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise ValueError(f"{str(root)!r} is a file, not a state folder")
        if root.is_dir() and not (root / _POINTER).exists() and any(root.iterdir()):
            raise ValueError(f"{str(root)!r} is not empty and holds no dedup state ({_POINTER} is missing); refusing to write into it")
        root.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name[1:]) for p in root.iterdir() if _VERSION_DIR.match(p.name)]
        name = f"v{max(numbers, default=0) + 1:06d}"
        folder = root / name
        folder.mkdir()
        self._write_version(folder)
        manifest = folder / _MANIFEST
        pointer = f"{name} {_sha256(manifest)}\n"
        tmp = root / f".{_POINTER}.tmp"
        with open(tmp, "w") as f:
            f.write(pointer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / _POINTER)
        _fsync_dir(root)
        for p in root.iterdir():
            if _VERSION_DIR.match(p.name) and p.name != name:
                shutil.rmtree(p, ignore_errors=True)

    def _write_version(self, folder: Path) -> None:
        scoring = self._scoring
        header = {
            "kind": STATE_KIND,
            "state_format": FORMAT_VERSION,
            "items_kind": self._kind,
            "params": {
                "threshold": self._base_threshold,
                "k": int(self.k),
                "max_group_size": None if self.max_group_size is None else int(self.max_group_size),
                "id_col": self.id_col,
                "text_col": self.text_col,
                "lexical": self._lexical_model is not None,
                "scoring": {
                    "vector_weight": scoring.vector_weight,
                    "code_bonus": scoring.code_bonus,
                    "code_conflict_penalty": scoring.code_conflict_penalty,
                    "measure_conflict_penalty": scoring.measure_conflict_penalty,
                    "ngram_range": list(scoring.ngram_range),
                    "projection_dim": scoring.projection_dim,
                },
                "index_params": self.index_params or {},
                "batch_size": int(self.batch_size),
            },
            "encoder": self._encoder_id,
            "dim": self._dim,
            "floor": self._floor,
            "grouped_at": self._grouped_at,
            "next_group": self._next_group,
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
        }
        a, b, s = self._edges
        sections: dict[str, np.ndarray] = {
            "vectors": self._items.vectors,
            "alive": self._alive,
            "group": self._group,
            "edge_a": a,
            "edge_b": b,
            "edge_s": np.asarray(s, dtype=np.float32),
        }
        if self._items.features is not None:
            tfidf = self._items.features.tfidf.tocsr()
            terms, idf = self._lexical_model.vocabulary()  # type: ignore[union-attr]
            sections.update(
                tfidf_data=np.asarray(tfidf.data, dtype=np.float32),
                tfidf_indices=np.asarray(tfidf.indices, dtype=np.int32),
                tfidf_indptr=np.asarray(tfidf.indptr, dtype=np.int64),
                projection=self._items.features.projection,
                idf=idf,
            )
            _tables.write_table(pa.table({"term": pa.array(terms, type=pa.string())}), folder / _VOCAB_FILE)
        _fileio.write_container(folder / _STATE_FILE, header, sections)
        columns = {"item_id": self._keys}
        if self._titles is not None:
            columns["title"] = pa.array(self._titles, type=pa.string())
        _tables.write_table(pa.table(columns), folder / _ITEMS_FILE)
        self._index.save(folder / _INDEX_FILE)
        files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        for name in files:
            _fsync_file(folder / name)
        manifest = {
            "kind": STATE_KIND,
            "format_version": FORMAT_VERSION,
            "files": {name: _sha256(folder / name) for name in files},
        }
        with open(folder / _MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(folder)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, encoder: Any = None, progress: bool | None = None) -> Deduplicator:
        """Open a state written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The state folder.
        encoder : TextEncoder, optional
            For a state of titles: the encoder for new items. It must be the
            model the state was built with (same fingerprint); default
            ``TextEncoder()``, checked when first needed.
        progress : bool or None, default None

        Returns
        -------
        Deduplicator

        Raises
        ------
        FileNotFoundError
            No state at ``path``.
        ValueError
            Not a dedup state, a newer format, a checksum mismatch, or an
            encoder other than the state's model.
        """
        root = Path(path)
        pointer = root / _POINTER
        if not root.is_dir():
            raise FileNotFoundError(f"no dedup state at {str(root)!r}")
        if not pointer.exists():
            raise ValueError(f"{str(root)!r} is not a dedup state: it has no {_POINTER} file")
        parts = pointer.read_text().split()
        if len(parts) != 2 or not _VERSION_DIR.match(parts[0]):
            raise ValueError(f"{str(pointer)!r} is corrupt: expected a version folder and a checksum")
        folder = root / parts[0]
        manifest_path = folder / _MANIFEST
        if not manifest_path.exists():
            raise ValueError(f"dedup state {str(root)!r} is corrupt: {parts[0]}/{_MANIFEST} is missing")
        if _sha256(manifest_path) != parts[1]:
            raise ValueError(f"dedup state {str(root)!r} is corrupt: {parts[0]}/{_MANIFEST} fails its checksum")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("kind") != STATE_KIND:
            raise ValueError(f"{str(root)!r} holds {manifest.get('kind')!r}, not a {STATE_KIND} state")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"dedup state {str(root)!r} has format version {version}; this simsearch reads up to "
                f"{FORMAT_VERSION}: upgrade simsearch to open it"
            )
        for name, digest in manifest["files"].items():
            file = folder / name
            if not file.exists() or _sha256(file) != digest:
                raise ValueError(f"dedup state {str(root)!r} is corrupt: {parts[0]}/{name} is missing or fails its checksum")
        header, sections = _fileio.read_container(folder / _STATE_FILE)
        if header.get("kind") != STATE_KIND or header.get("state_format", 0) > FORMAT_VERSION:
            raise ValueError(f"{str(root)!r}: {_STATE_FILE} is not a {STATE_KIND} state of a version this simsearch reads")
        params = header["params"]
        scoring = PairScoring(**{**params["scoring"], "ngram_range": tuple(params["scoring"]["ngram_range"])})
        self = cls(
            threshold=params["threshold"],
            k=params["k"],
            encoder=encoder,
            max_group_size=params["max_group_size"],
            id_col=params["id_col"],
            text_col=params["text_col"],
            lexical=params["lexical"],
            scoring=scoring,
            index_params=params["index_params"] or None,
            batch_size=params["batch_size"],
            progress=progress,
        )
        self._kind = header["items_kind"]
        self._encoder_id = header["encoder"]
        if encoder is not None and self._kind == "texts":
            check_encoder(self._encoder_id, encoder)
        items_table = _tables.read_table(folder / _ITEMS_FILE)
        self._keys = items_table.column("item_id").combine_chunks()
        self._titles = items_table.column("title").to_pylist() if "title" in items_table.column_names else None
        vectors = sections["vectors"]
        self._lexical_model = None
        if "idf" in sections:
            import scipy.sparse as sp

            terms = _tables.read_table(folder / _VOCAB_FILE).column("term").to_pylist()
            self._lexical_model = LexicalModel.restore(scoring, terms, sections["idf"])
            tfidf = sp.csr_matrix(
                (sections["tfidf_data"], sections["tfidf_indices"], sections["tfidf_indptr"]),
                shape=(len(vectors), len(terms)),
            )
            features = TextFeatures(tfidf, [extract_facts(t) for t in self._titles or []], sections["projection"])
            self._items = Items(vectors, features, hybrid_vectors(vectors, features.projection, scoring.vector_weight))
        else:
            self._items = Items.from_vectors(vectors)
        from simsearch.index import Index

        self._index = Index.load(folder / _INDEX_FILE, num_threads=(self.index_params or {}).get("num_threads"))
        self._scoring = scoring
        self._rules = {}
        self._alive = sections["alive"].astype(bool)
        self._group = sections["group"].astype(np.int64)
        self._edges = (sections["edge_a"].astype(np.int64), sections["edge_b"].astype(np.int64), sections["edge_s"])
        self._row_of = _row_map(self._keys, self._alive)
        self._floor = float(header["floor"])
        self._base_threshold = float(params["threshold"])
        self._grouped_at = float(header["grouped_at"])
        self._next_group = int(header["next_group"])
        self._dim = int(header["dim"])
        cal = header.get("calibration")
        self.calibration_ = None if cal is None else ReviewCalibration.from_dict(cal)
        return self


# ---------------------------------------------------------------------- helpers


def _as_id_array(ids: Any, name: str) -> pa.Array:
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


def _check_unique_ids(ids: pa.Array, name: str) -> None:
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids).to_pylist()
        repeated = [c["values"] for c in counts if c["counts"] > 1][:3]
        raise ValueError(f"{name} repeats ids, e.g. {repeated}")


def _row_map(keys: pa.Array, alive: np.ndarray | None = None) -> dict[Any, int]:
    values = keys.to_pylist()
    if alive is None:
        return {v: i for i, v in enumerate(values)}
    return {values[i]: i for i in np.flatnonzero(alive).tolist()}


def _encoder_identity(encoder: Any) -> dict[str, Any]:
    return {
        "name": str(getattr(encoder, "name", type(encoder).__name__)),
        "fingerprint": getattr(encoder, "fingerprint", None),
        "dim": int(encoder.dim),
    }


def check_encoder(expected: dict[str, Any] | None, encoder: Any) -> None:
    """Raise ``ValueError`` if ``encoder`` is not the model a state was built with."""
    if expected is None:
        raise TypeError("this state holds vectors; it has no encoder")
    got = _encoder_identity(encoder)
    if got["dim"] != expected["dim"] or got["fingerprint"] != expected["fingerprint"]:
        fp_e, fp_g = str(expected["fingerprint"])[:12], str(got["fingerprint"])[:12]
        raise ValueError(
            f"the state was built with model {expected['name']!r} (fingerprint {fp_e}, {expected['dim']}-d), "
            f"the encoder is {got['name']!r} (fingerprint {fp_g}, {got['dim']}-d): use the state's model"
        )


def _concat_items(old: Items, new: Items) -> Items:
    vectors = np.vstack([old.vectors, new.vectors])
    search = np.vstack([old.search, new.search])
    if old.features is None or new.features is None:
        return Items(vectors, None, search)
    import scipy.sparse as sp

    features = TextFeatures(
        sp.vstack([old.features.tfidf, new.features.tfidf], format="csr"),
        old.features.facts + new.features.facts,
        np.vstack([old.features.projection, new.features.projection]),
    )
    return Items(vectors, features, search)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def _cut_large_groups(
    cluster: np.ndarray, alive: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray, cap: int
) -> np.ndarray:
    """Cut groups larger than ``cap`` at their weakest bridge until none is; returns the rows touched."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    touched = np.zeros(len(cluster), dtype=bool)
    fresh = int(cluster.max()) + 1 if len(cluster) else 0
    values, counts = np.unique(cluster[alive], return_counts=True)
    todo = [np.flatnonzero(alive & (cluster == v)) for v in values[counts > cap]]
    while todo:
        members = todo.pop()
        touched[members] = True
        local = np.full(len(cluster), -1, dtype=np.int64)
        local[members] = np.arange(len(members))
        inside = (local[a] >= 0) & (local[b] >= 0)
        la, lb, ls = local[a[inside]], local[b[inside]], s[inside].astype(np.float64)
        m = len(members)
        # Maximum spanning tree by a minimum one over (top - score) > 0.
        top = (ls.max() if len(ls) else 0.0) + 1.0
        tree = minimum_spanning_tree(coo_matrix((top - ls, (la, lb)), shape=(m, m))).tocoo()
        if tree.nnz:
            weakest = int(np.argmax(tree.data))  # the largest (top - score): the weakest edge
            keep = np.ones(tree.nnz, dtype=bool)
            keep[weakest] = False
            part = _components(m, tree.row[keep], tree.col[keep])
        else:
            part = np.arange(m) % 2  # no pair at all: cut anywhere
        for p in np.unique(part):
            rows = members[part == p]
            cluster[rows] = fresh
            fresh += 1
            if len(rows) > cap:
                todo.append(rows)
    return touched


def _assign_ids(
    cluster: np.ndarray, affected: np.ndarray, old_group: np.ndarray, prev_group: np.ndarray, next_group: int
) -> tuple[np.ndarray, int, tuple[list[int], list[Any], list[Any], list[str]]]:
    """Give the affected clusters group ids, oldest id first, and list the changes.

    Each old id among the affected rows goes to the cluster holding most of its
    members (ties: the cluster of its first row) unless that cluster already
    has an id; clusters left without one get fresh ids in row order.
    """
    n = len(cluster)
    group = np.r_[prev_group, np.full(n - len(prev_group), -1, dtype=np.int64)]
    rows = np.flatnonzero(affected)
    if rows.size == 0:
        return group, next_group, ([], [], [], [])
    clusters = cluster[rows]
    olds = old_group[rows]
    given: dict[int, int] = {}  # cluster -> id
    majority: dict[int, int] = {}  # old id -> its majority cluster
    has_old = olds >= 0
    if has_old.any():
        pair = np.stack([olds[has_old], clusters[has_old]], axis=1)
        uniq, first, counts = np.unique(pair, axis=0, return_index=True, return_counts=True)
        # Per old id: most members first, then the cluster of its earliest row.
        order = np.lexsort((rows[has_old][first], -counts, uniq[:, 0]))
        for g, c in uniq[order].tolist():
            if g in majority:
                continue
            majority[g] = c
            if c not in given:
                given[c] = g
    assigned = set(given.values())
    # Fresh ids for the rest, in order of each cluster's first row.
    _, first_rows = np.unique(clusters, return_index=True)
    for i in np.sort(first_rows):
        c = int(clusters[i])
        if c not in given:
            given[c] = next_group
            next_group += 1
    has_old_cluster = set(clusters[has_old].tolist())
    out_rows, out_old, out_new, out_event = [], [], [], []
    for r, c, g in zip(rows.tolist(), clusters.tolist(), olds.tolist()):
        gid = given[c]
        group[r] = gid
        if g < 0:
            out_rows.append(r)
            out_old.append(None)
            out_new.append(gid)
            out_event.append("joined" if c in has_old_cluster else "new_group")
        elif gid != g:
            out_rows.append(r)
            out_old.append(g)
            out_new.append(gid)
            out_event.append("merged" if g not in assigned and majority.get(g) == c else "split")
    return group, next_group, (out_rows, out_old, out_new, out_event)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    _fileio._fsync_dir(os.fspath(path))


__all__ = ["Deduplicator", "EVENTS", "FORMAT_VERSION", "check_encoder"]
