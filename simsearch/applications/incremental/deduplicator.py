"""The :class:`Deduplicator` estimator: fit, update, review and recalibrate.

How updates regroup, how group ids follow the groups and what the change
table reports is told in :mod:`simsearch.applications.incremental`; the
folder format is in :mod:`~simsearch.applications.incremental.state`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch._validation import check_k, check_positive_int
from simsearch.applications._items import Items, as_vectors, build_index, default_encoder
from simsearch.applications.candidates import (
    check_max_group_size,
    check_score,
    chosen_ef,
    default_threshold,
    is_vector_input,
    knn_pairs,
    load_items,
    self_join,
)
from simsearch.applications.grouping import GroupLinkage, group_pairs
from simsearch.applications.incremental.ids import (
    as_id_array,
    check_new_ids,
    check_unique_ids,
    id_ranks,
    row_map,
    rows_of_removed,
    same_id_type,
)
from simsearch.applications.incremental.neighbours import REVERSE_FACTOR, SEARCH_FACTOR, knn_union, search_similarity
from simsearch.applications.incremental.regroup import CrossScorer, assign_ids, regroup
from simsearch.applications.incremental.review import ReviewLoop
from simsearch.applications.incremental.state import (
    StateFiles,
    check_encoder,
    encoder_identity,
    load_state,
    save_state,
)
from simsearch.applications.dedup_calibration import PairCalibration
from simsearch.applications.lexical import LexicalModel, PairScoring, TextFeatures, dedup_scoring, extract_facts, hybrid_vectors
from simsearch.applications.metrics import ThresholdChoice
from simsearch.errors import CorruptFileError, NotFittedError

#: Candidate pairs are kept down to this far below the threshold, so the review
#: loop can label pairs on both sides of it and a recalibration can lower it.
PAIR_MARGIN = 0.25
EVENTS = ("joined", "new_group", "merged", "split", "removed")


class Deduplicator(ReviewLoop):
    """Duplicate groups that stay stable as items come and go.

    Parameters
    ----------
    threshold : float, optional
        Least pair score for two items to be duplicates: a probability for
        titles with lexical scoring (default 0.15), a cosine for vectors
        (default 0.9), as
        :func:`~simsearch.find_duplicates`). A calibration from reviewed pairs
        (:meth:`calibrate`) replaces it.
    k : int, default 10
        Neighbours per item: the candidate pairs are the union of both
        directions' ``k``-nearest lists, by exact similarity (the fit searches
        ``2 k``, an update ``3 k`` per new item; see
        :mod:`~simsearch.applications.incremental.neighbours`).
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
        Default :func:`~simsearch.applications.lexical.dedup_scoring`: the
        weights of ``PairScoring()`` with a vocabulary-free projection for the
        candidate search, so that the lexical model fit on a larger catalog
        searches the same neighbourhoods.
    index_params : dict, optional
        Passed to :class:`~simsearch.Index` (default ``ef_construction=100``).
    batch_size : int, default 10000
        Items searched and scored per step.
    progress : bool or None, default None
        Progress bars; ``None`` shows them when stderr is a terminal.
    ef : int, optional
        Search effort of the neighbour searches; default ``index_params["ef"]``
        if given, else ``max(2 (k + 1), 64)``.

    Attributes
    ----------
    groups_ : pyarrow.Table
        ``id``, ``group_id`` (int64): one row per live item, singletons
        included, in the order items arrived; the ``id`` column is named as in
        :func:`~simsearch.find_duplicates`. A copy of ``id`` named
        ``item_id`` follows, for code written before the names were merged
        (deprecated: it will be removed).
    threshold_ : float
        The threshold in use (the calibrated one after :meth:`calibrate`).
    calibration_ : ThresholdChoice or None
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
    >>> changes.select(["id", "old_group", "new_group", "event"]).to_pylist()
    [{'id': 13, 'old_group': None, 'new_group': 1, 'event': 'joined'}]
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
        ef: int | None = None,
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
        self.ef = ef

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
            threshold = default_threshold(not vectors and self.lexical)
        if vectors and ids is not None:
            check_unique_ids(as_id_array(ids, "ids"), "ids")
        encoder = None
        if not vectors:
            encoder = default_encoder() if self.encoder is None else self.encoder
        scoring = self.scoring if self.scoring is not None else dedup_scoring()
        loaded = load_items(
            items, ids=ids, id_col=self.id_col, text_col=self.text_col, encoder=encoder, lexical=self.lexical,
            scoring=scoring, progress=self.progress,
        )  # fmt: skip
        cands = self_join(
            loaded, k=SEARCH_FACTOR * self.k, floor=threshold - PAIR_MARGIN, scoring=scoring, index_params=self.index_params,
            batch_size=self.batch_size, progress=self.progress, ef=self.ef,
        )  # fmt: skip
        a, b, s = cands.pairs
        sim = search_similarity(cands.items.search, a, b)
        union = knn_union(len(cands.items), a, b, sim, self.k)  # the rule every update applies
        a, b, s, sim = a[union], b[union], s[union], sim[union]
        hit = s >= threshold
        scorer = CrossScorer(cands.items, scoring, cands.rules, cands.calibration)
        linkage = GroupLinkage(scorer, cands.conflict if loaded.lexical_text else None)
        labels = group_pairs(
            len(cands.items), a[hit], b[hit], s[hit], cross_score=linkage, link_threshold=threshold,
            max_group_size=self.max_group_size, conflict=linkage if loaded.lexical_text else None,
            tie_key=id_ranks(cands.ids),
        )  # fmt: skip
        n = len(cands.items)
        self._kind = "vectors" if vectors else "texts"
        self._scoring = scoring
        self._items = cands.items
        self._titles = loaded.texts
        self._lexical_model = loaded.lexical_model
        self._index = cands.index if cands.index is not None else self._new_index(cands.items.search)
        self._rules = cands.rules
        self._vetoes = cands.vetoes
        self._score_calibration = cands.calibration
        self._keys = cands.ids
        self._row_of = row_map(self._keys)
        self._alive = np.ones(n, dtype=bool)
        _, gid = np.unique(labels, return_inverse=True)  # 0..G-1 in order of each group's first item
        self._group = gid.astype(np.int64)
        self._next_group = int(gid.max()) + 1 if n else 0
        self._edges = (a, b, s)
        self._edge_sim = sim
        self._linkage = linkage
        self._floor = float(threshold - PAIR_MARGIN)
        self._base_threshold = float(threshold)
        self._grouped_at = float(threshold)
        self.calibration_: ThresholdChoice | None = None
        self._encoder_id = encoder_identity(encoder) if encoder is not None else None
        self._dim = int(cands.items.vectors.shape[1])
        return self

    def _check_params(self) -> float | None:
        threshold = None if self.threshold is None else check_score(self.threshold)
        check_k(self.k)
        check_positive_int(self.batch_size, "batch_size")
        check_max_group_size(self.max_group_size)
        chosen_ef(self.ef, self.index_params)
        return threshold

    def _new_index(self, search: np.ndarray) -> Any:
        params = dict(self.index_params or {})
        params.setdefault("ef_construction", 100)
        return build_index(search, params, self.progress)

    def _fitted(self) -> None:
        if not hasattr(self, "_items"):
            raise NotFittedError("this Deduplicator is not fitted: call fit() or Deduplicator.load() first")

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
        ids = self._keys.take(pa.array(live, type=pa.int64()))
        return pa.table({"id": ids, "group_id": pa.array(self._group[live], type=pa.int64()), "item_id": ids})

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
        floor = self.threshold_ if min_score is None else check_score(min_score, "min_score")
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
        return CrossScorer(items, self._scoring, self._rules, self._score_calibration)

    def _conflict(self, items: Items) -> Any:
        if items.features is None:
            return None
        vetoes = self._vetoes
        return lambda ra, rb: items.conflicts(items, ra, rb, vetoes)

    def _pair_scores(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        """Scores of pairs of rows, as the join gave them (probabilities for titles)."""
        raw = self._items.pair_scores(self._items, rows_a, rows_b, self._scoring)
        return raw if self._score_calibration is None else self._score_calibration.apply(raw)

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
            One row per item whose group changed: ``id``, ``old_group``
            (int64, null for a new item), ``new_group`` (int64, null for a
            removed one), ``event``: ``joined`` (a new item in a group with
            older items), ``new_group`` (a new item in a group of new items
            only), ``merged`` (its group merged into an older one), ``split``
            (its group split and its part got another id), ``removed``; and
            ``item_id``, a deprecated copy of ``id``.

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
            items = self._items if m == 0 else self._items.concat(items_new)
            if m:
                self._index.add(items_new.search, ids=new_rows.astype(np.uint64))
                added = True
            if removed_rows.size:
                self._index.remove(removed_rows.astype(np.uint64))
                removed = True
            alive = np.r_[self._alive, np.ones(m, dtype=bool)]
            alive[removed_rows] = False
            # Each new item's wider neighbourhood: the old items whose kNN lists it may enter.
            na, nb, ns = knn_pairs(
                self._index, items, new_rows, REVERSE_FACTOR * self.k, self._scoring, self._floor, self.batch_size,
                self.progress, chosen_ef(self.ef, self.index_params), self._score_calibration,
            )  # fmt: skip
            a, b, s = self._edges
            keep = alive[a] & alive[b]
            a, b, s = np.r_[a[keep], na], np.r_[b[keep], nb], np.r_[s[keep], ns].astype(np.float32)
            sim = np.r_[self._edge_sim[keep], search_similarity(items.search, na, nb)]
            union = knn_union(n_old + m, a, b, sim, self.k)
            old_group = np.r_[self._group, np.full(m, -1, dtype=np.int64)]
            old_group[removed_rows] = -1
            # Dirty: new rows, the live ends of dropped pairs (removed, or pushed out of
            # a kNN list) that could have linked their group, and the groups that lost
            # members. A dropped pair across two groups linked nothing: no merge used it.
            dirty = np.zeros(n_old + m, dtype=bool)
            dirty[new_rows] = True
            ea, eb, es = self._edges
            gone = ~keep & (es >= threshold) & (self._group[ea] == self._group[eb])
            dirty[ea[gone]] = dirty[eb[gone]] = True
            gone = ~union & (s >= threshold) & (old_group[a] == old_group[b]) & (old_group[a] >= 0)
            dirty[a[gone]] = dirty[b[gone]] = True
            edges, sim = (a[union], b[union], s[union]), sim[union]
            lost = np.unique(self._group[removed_rows])
            dirty[: n_old] |= np.isin(self._group, lost)
            all_keys = self._keys if m == 0 else pa.concat_arrays([self._keys, keys])
            self._linkage.cross, self._linkage.conflict_of = self._cross(items), self._conflict(items)
            cluster, affected = regroup(
                self._linkage, alive, old_group, edges, dirty, threshold, self._grouped_at, self._next_group,
                self.max_group_size, id_ranks(all_keys),
            )  # fmt: skip
            group, next_group, events = assign_ids(cluster, affected, old_group, self._group, self._next_group)
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
        self._alive, self._group, self._next_group, self._edges, self._edge_sim = alive, group, next_group, edges, sim
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
        ids = self._keys.take(pa.array(np.asarray(rows, dtype=np.int64)[order], type=pa.int64()))
        return pa.table(
            {
                "id": ids,
                "old_group": pa.array([old[i] for i in order], type=pa.int64()),
                "new_group": pa.array([new[i] for i in order], type=pa.int64()),
                "event": pa.array([events[i] for i in order], type=pa.string()),
                "item_id": ids,  # deprecated copy of id (the name before the tables were merged)
            }
        )

    def _check_removed(self, removed_ids: Any) -> np.ndarray:
        return rows_of_removed(self._row_of, removed_ids)

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
            keys = as_id_array(new_ids, "new_ids")
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
        return same_id_type(keys, self._keys.type, name)

    def _check_new_keys(self, keys: pa.Array) -> None:
        check_new_ids(self._row_of, keys)

    def _text_encoder(self) -> Any:
        if self.encoder is None:
            self.encoder = default_encoder()
        check_encoder(self._encoder_id, self.encoder)
        return self.encoder

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to folder ``path``, atomically.

        A new version folder is written and fsync-ed, then the ``CURRENT``
        pointer is swapped to it; older versions are deleted after. If the
        save is interrupted, ``path`` still holds the previous state (see
        :mod:`~simsearch.applications.incremental.state`).

        Raises
        ------
        ValueError
            ``path`` is a non-empty folder that is not a dedup state.
        OSError
            The files cannot be written (the previous state stays).
        """
        self._fitted()
        save_state(path, self._state_files())

    def _state_files(self) -> StateFiles:
        scoring = self._scoring
        header = {
            "items_kind": self._kind,
            "params": {
                "threshold": self._base_threshold,
                "k": int(self.k),
                "max_group_size": None if self.max_group_size is None else int(self.max_group_size),
                "id_col": self.id_col,
                "text_col": self.text_col,
                "lexical": self._lexical_model is not None,
                "scoring": scoring.to_dict(),
                "index_params": self.index_params or {},
                "batch_size": int(self.batch_size),
                "ef": None if self.ef is None else int(self.ef),
            },
            "encoder": self._encoder_id,
            "dim": self._dim,
            "floor": self._floor,
            "grouped_at": self._grouped_at,
            "next_group": self._next_group,
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
            "score_calibration": None if self._score_calibration is None else self._score_calibration.to_dict(),
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
        vocabulary = None
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
            vocabulary = pa.table({"term": pa.array(terms, type=pa.string())})
        columns = {"item_id": self._keys}  # the on-disk name, kept for old readers
        if self._titles is not None:
            columns["title"] = pa.array(self._titles, type=pa.string())
        return StateFiles(header, sections, pa.table(columns), vocabulary, index=self._index)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, encoder: Any = None, progress: bool | None = None) -> Deduplicator:
        """Open a state written by :meth:`save` (any readable format version).

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
            Not a dedup state, a newer format, a checksum mismatch
            (:class:`~simsearch.errors.CorruptFileError`,
            :class:`~simsearch.errors.FormatVersionError`), or an encoder
            other than the state's model.
        """
        files = load_state(path)
        try:
            return cls._restore(files, encoder, progress)
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            # the checksums matched, so these are crafted or mis-written fields, not a torn write
            raise CorruptFileError(f"the dedup state {os.fspath(path)!r} is inconsistent: {type(err).__name__}: {err}") from None

    @classmethod
    def _restore(cls, files: Any, encoder: Any, progress: bool | None) -> Deduplicator:
        """Build the estimator from a checked :func:`load_state` result."""
        header, sections = files.header, files.sections
        params = header["params"]
        scoring = PairScoring.from_dict(params["scoring"])  # states before format 3: no hashed_projection
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
            ef=params.get("ef"),  # absent before format 2
        )
        self._kind = header["items_kind"]
        self._encoder_id = header["encoder"]
        if encoder is not None and self._kind == "texts":
            check_encoder(self._encoder_id, encoder)
        self._keys = files.items.column("item_id").combine_chunks()
        self._titles = files.items.column("title").to_pylist() if "title" in files.items.column_names else None
        vectors = sections["vectors"]
        self._lexical_model = None
        if "idf" in sections:
            import scipy.sparse as sp

            terms = files.vocabulary.column("term").to_pylist()  # type: ignore[union-attr]
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

        self._index = Index.load(files.index_path, num_threads=(self.index_params or {}).get("num_threads"))
        self._scoring = scoring
        self._rules = {}
        self._vetoes = {}
        # States written before scores were probabilities have none: their raw scores stay raw.
        score_cal = header.get("score_calibration")
        self._score_calibration = None if score_cal is None else PairCalibration.from_dict(score_cal)
        self._alive = sections["alive"].astype(bool)
        self._group = sections["group"].astype(np.int64)
        self._edges = (sections["edge_a"].astype(np.int64), sections["edge_b"].astype(np.int64), sections["edge_s"])
        self._edge_sim = search_similarity(self._items.search, self._edges[0], self._edges[1])
        self._linkage = GroupLinkage(self._cross(self._items), self._conflict(self._items))
        self._row_of = row_map(self._keys, self._alive)
        self._floor = float(header["floor"])
        self._base_threshold = float(params["threshold"])
        self._grouped_at = float(header["grouped_at"])
        self._next_group = int(header["next_group"])
        self._dim = int(header["dim"])
        cal = header.get("calibration")
        self.calibration_ = None if cal is None else ThresholdChoice.from_dict(cal)
        return self


__all__ = ["EVENTS", "PAIR_MARGIN", "Deduplicator"]

