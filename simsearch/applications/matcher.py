"""Match listings to a product catalog: retrieve through the index, re-score exactly."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch._validation import check_k, check_positive_int
from simsearch.applications._items import (
    Items,
    as_vectors,
    build_index,
    default_encoder,
    progress_bar,
    unit_rows,
)
from simsearch.applications.candidates import (
    SCORE_KIND_KEY,
    check_score,
    chosen_ef,
    cross_join,
)
from simsearch.applications.lexical import LexicalModel, PairScoring, hybrid_vectors
from simsearch.applications.match_calibration import (
    MatcherPairScores,
    default_score_map,
    raw_threshold,
)
from simsearch.applications.metrics import ThresholdChoice
from simsearch.applications.pair_learning import fit_pairs
from simsearch.applications.pair_model import PairModel, resolve_pair_model, top_per_row
from simsearch.applications.pair_scorer import (
    FeatureConfig,
    PairScorer,
    PairSide,
    best_candidate_scores,
    pair_features,
)
from simsearch.applications.saved_matcher import (
    MANIFEST,
    MATCHER_FORMAT,
    MATCHER_FORMAT_VERSION,
    read_matcher,
    write_matcher,
)
from simsearch.errors import NotFittedError

__all__ = ["MANIFEST", "MATCHER_FORMAT", "MATCHER_FORMAT_VERSION", "CatalogMatcher"]

_UNSET = object()  # score_map_ before the first fit (None means raw scores)


class CatalogMatcher(MatcherPairScores):
    """Match product listings (titles, optionally images) to a catalog.

    ``fit`` encodes the catalog titles and builds an int8 index over them;
    ``match`` retrieves ``n_candidates`` products per listing through the
    index, scores each candidate exactly (embedding cosine, character n-gram
    TF-IDF cosine, model codes and measures: see
    :class:`~simsearch.applications.PairScoring`), fuses an image cosine when
    both sides have images, and returns the best ``k``. ``score`` is the
    probability that the pair is a match: the raw score through a shipped
    monotone map (:mod:`~simsearch.applications.match_calibration`, fitted on
    the validation splits of the Magellan / DeepMatcher benchmark sets; so the
    ranking is the raw score's), and :meth:`calibrate` refits that map on your
    labelled pairs. With a pair model
    (``pair_model="default"`` or your own; not with images), the best
    ``rerank`` candidates of that score are then scored by the cross-encoder
    (:class:`~simsearch.applications.pair_model.PairModel`), so ``score`` is
    the cross-encoder's match probability. The shipped model
    ranks worse than the lexical score on product titles today (top-1 0.79
    against 0.94 on the bundled PriceRunner sample, ``benchmarks/RESULTS.md``),
    so it is not the default.

    ``fit_pairs`` learns from labelled (listing, product) pairs instead: it
    fine-tunes the encoder (:func:`~simsearch.finetune`), indexes the catalog
    with it, and fits a calibrated pair scorer
    (:class:`~simsearch.applications.pair_scorer.PairScorer`); ``match`` then
    scores candidates with it, so ``score`` is a match probability, and adds a
    ``top_features`` column. ``save`` and ``load`` keep a fitted matcher in a
    directory.

    Parameters
    ----------
    encoder : TextEncoder, optional
        Encodes titles; default ``TextEncoder()`` (all-MiniLM-L6-v2, int8).
    threshold : float, optional
        Least score (probability) of a match. ``None``: the threshold learned
        by :meth:`calibrate` if it ran, else the pair model's (chosen on its
        validation pairs), else the shipped map's (best mean F1 on its
        validation pairs; ``score_map_.threshold``).
    k : int, default 5
        Products returned per listing.
    id_col, text_col : str, default "id", "title"
        Columns of the catalog (and, by default, of the listings).
    image_col : str, optional
        Column with images: either vectors (lists of floats) or anything
        ``image_encoder.encode`` takes (e.g. file paths). Used when present in
        both catalog and listings.
    image_encoder : encoder, optional
        Encodes ``image_col`` values that are not vectors.
    image_weight : float, default 0.3
        With images, ``score = (1 - image_weight) * text_score + image_weight *
        image_cosine``.
    lexical : bool, default True
        Use the lexical evidence; ``False`` scores with the embedding alone.
    scoring : PairScoring, optional
        Weights of the text score.
    n_candidates : int, optional
        Products retrieved per listing before re-scoring; default
        ``max(4 * k, 20)``.
    index_params : dict, optional
        Passed to :class:`~simsearch.Index`.
    batch_size : int, default 4096
        Listings per step of :meth:`match`.
    progress : bool or None, default None
        Progress bars; ``None`` shows them when stderr is a terminal.
    ef : int, optional
        Search breadth of the retrieval.
    pair_model : "default", PairModel, path or None, default None
        The cross-encoder stage: ``"default"`` is the model shipped with
        simsearch (:func:`~simsearch.applications.pair_model.default_pair_model`),
        a path opens a saved one (e.g. from
        :func:`~simsearch.applications.pair_training.train_pair_model`),
        ``None`` scores with the lexical score alone. Not used with images,
        nor after :meth:`fit_pairs` (its pair scorer decides).
    rerank : int, optional
        Candidates per listing the pair model scores; default ``max(2 * k, 5)``
        (at most ``n_candidates``).

    Attributes
    ----------
    n_products_ : int
        Catalog size after ``fit``.
    threshold_ : float
        Threshold in use (after ``fit`` or ``calibrate``).
    calibration_ : ThresholdChoice or None
        Result of the last :meth:`calibrate` (or of :meth:`fit_pairs` on its
        validation pairs).
    score_map_ : ScoreMap or None
        The map from the raw score to ``score`` (after ``fit``): the shipped
        one for the lexical score or the embedding cosine, or the one
        :meth:`calibrate` refit. ``None`` (a folder saved before format
        version 4, or set by hand) returns the raw score, with the old default
        thresholds 0.5 (lexical) and 0.9 (cosine) (a loaded folder keeps the
        threshold it was saved with). Not used with a pair model
        or after :meth:`fit_pairs`, whose scores are probabilities already.
    pair_scorer_ : PairScorer or None
        The learned second stage, after :meth:`fit_pairs`.
    feature_config_ : FeatureConfig or None
        Price and extra columns the pair scorer reads.

    Examples
    --------
    >>> from simsearch import CatalogMatcher
    >>> catalog = {"id": [1, 2], "title": ["sony kdl-40v4100 40 lcd tv", "apple iphone 8 64gb"]}
    >>> m = CatalogMatcher(k=1).fit(catalog)  # doctest: +SKIP
    >>> m.match({"id": ["a"], "title": ["Sony KDL40V4100 LCD television"]}).to_pylist()  # doctest: +SKIP
    [{'listing_id': 'a', 'product_id': 1, 'score': 0.8..., 'rank': 1, 'is_match': True}]
    """

    def __init__(
        self,
        encoder: Any = None,
        threshold: float | None = None,
        k: int = 5,
        *,
        id_col: str = "id",
        text_col: str = "title",
        image_col: str | None = None,
        image_encoder: Any = None,
        image_weight: float = 0.3,
        lexical: bool = True,
        scoring: PairScoring | None = None,
        n_candidates: int | None = None,
        index_params: dict[str, Any] | None = None,
        batch_size: int = 4096,
        progress: bool | None = None,
        ef: int | None = None,
        pair_model: str | os.PathLike[str] | PairModel | None = None,
        rerank: int | None = None,
    ) -> None:
        k = check_k(k)
        if n_candidates is not None and check_k(n_candidates, "n_candidates") < k:
            raise ValueError(f"n_candidates must be an integer >= k ({k}), got {n_candidates!r}")
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
        if threshold is not None:
            check_score(threshold)
        check_positive_int(batch_size, "batch_size")
        if rerank is not None:
            check_k(rerank, "rerank")
        chosen_ef(ef, index_params)
        self.encoder = encoder
        self.threshold = threshold
        self.k = int(k)
        self.id_col = id_col
        self.text_col = text_col
        self.image_col = image_col
        self.image_encoder = image_encoder
        self.image_weight = image_weight
        self.lexical = lexical
        self.scoring = scoring if scoring is not None else PairScoring()
        self.n_candidates = n_candidates
        self.index_params = index_params
        self.batch_size = batch_size
        self.progress = progress
        self.ef = ef
        self.pair_model = pair_model
        self.rerank = rerank
        self.calibration_: ThresholdChoice | None = None
        self.pair_scorer_: PairScorer | None = None
        self.feature_config_: FeatureConfig | None = None

    # -- fitting ---------------------------------------------------------

    def fit(self, catalog: Any) -> CatalogMatcher:
        """Encode and index the catalog.

        Parameters
        ----------
        catalog : pyarrow.Table, pandas.DataFrame, mapping or path
            Rows with ``id_col`` and ``text_col`` (and ``image_col`` if set).

        Returns
        -------
        self

        Raises
        ------
        FileNotFoundError
            A path that does not exist.
        MissingColumnError
            A missing column (a ``ValueError``).
        ValueError
            An empty catalog, or null or repeated ids.

        Notes
        -----
        After :meth:`fit_pairs`, ``fit`` swaps in a new catalog and keeps what
        was learned: the fine-tuned encoder and the pair scorer (the catalog
        then needs the price and extra columns too).
        """
        if self.pair_scorer_ is not None:
            return self._fit_catalog(catalog, self.encoder_)
        return self._fit_catalog(catalog, default_encoder() if self.encoder is None else self.encoder)

    def _feature_columns(self) -> list[str]:
        return self.feature_config_.columns if self.feature_config_ is not None else []

    def _fit_catalog(self, catalog: Any, encoder: Any) -> CatalogMatcher:
        columns = [self.id_col, self.text_col] + ([self.image_col] if self.image_col else [])
        table = _tables.read_table(catalog, columns + self._feature_columns(), name="catalog")
        _tables.require_rows(table, name="catalog")
        self.product_ids_ = _tables.id_column(table, self.id_col, name="catalog").combine_chunks()
        texts = _tables.text_column(table, self.text_col, name="catalog")
        self.encoder_ = encoder
        self.lexical_ = LexicalModel(self.scoring).fit(texts) if self.lexical else None
        self.catalog_texts_ = texts
        self._catalog_side_cache: PairSide | None = None
        self.catalog_columns_ = {c: table.column(c).to_pylist() for c in self._feature_columns()}
        if getattr(self, "score_map_", _UNSET) is _UNSET or (self.score_map_ and self.score_map_.source == "default"):
            self.score_map_ = default_score_map(self.lexical)  # a map refit by calibrate (or None) is kept
        self.catalog_ = Items.from_texts(texts, self.encoder_, self.lexical_, self.scoring, self.progress)
        self.images_ = self._images(table, "catalog") if self.image_col else None
        self.index_ = build_index(self.catalog_.search, self.index_params, self.progress)
        self.n_products_ = table.num_rows
        self._row_of: dict[Any, int] | None = None
        return self

    @property
    def threshold_(self) -> float:
        if self.calibration_ is not None:
            return self.calibration_.threshold
        if self.threshold is not None:
            return float(self.threshold)
        if self.pair_scorer_ is not None:
            return 0.5  # a calibrated probability
        if self._pair_model() is not None:
            return self._pair_model().threshold  # type: ignore[union-attr]
        score_map = getattr(self, "score_map_", _UNSET)
        if score_map is _UNSET:
            return default_score_map(self.lexical).threshold
        return raw_threshold(self.lexical) if score_map is None else score_map.threshold

    def _pair_model(self) -> PairModel | None:
        """The cross-encoder stage in use, or None (images, a learned pair scorer, or none asked for)."""
        if self.image_col or self.pair_scorer_ is not None:
            return None
        return resolve_pair_model(self.pair_model)

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise NotFittedError("this CatalogMatcher is not fitted yet: call fit(catalog) first")

    def _images(self, table: pa.Table, name: str) -> np.ndarray:
        column = table.column(self.image_col)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type):
            values = column.to_pylist()
            if any(v is None for v in values):
                raise ValueError(f"{name} column {self.image_col!r} has null image vectors")
            return as_vectors(np.asarray(values, dtype=np.float32), f"{name} {self.image_col}")
        if self.image_encoder is None:
            raise ValueError(
                f"{name} column {self.image_col!r} holds {column.type} values, not vectors: "
                "pass image_encoder to encode them"
            )
        return unit_rows(np.asarray(self.image_encoder.encode(column.to_pylist()), dtype=np.float32))

    # -- matching --------------------------------------------------------

    def match(self, listings: Any, *, id_col: str | None = None, text_col: str | None = None) -> pa.Table:
        """The best ``k`` catalog products for each listing.

        Parameters
        ----------
        listings : pyarrow.Table, pandas.DataFrame, mapping or path
            Rows with an id and a title column (and the image column if the
            matcher has one); read in batches.
        id_col, text_col : str, optional
            Column names in ``listings``; default the catalog's.

        Returns
        -------
        pyarrow.Table
            ``listing_id``, ``product_id`` (types as in the inputs), ``score``
            (float32: the match probability in [0, 1], or the raw score when
            ``score_map_`` is None), ``rank`` (int32, 1 = best) and
            ``is_match`` (``score >= threshold_``); ``min(k, n_products_)`` rows
            per listing, listings in input order; the schema metadata
            ``{b"simsearch.score": b"probability"}`` marks probabilities. After
            :meth:`fit_pairs`, ``score`` is the pair scorer's match probability and a
            ``top_features`` column (list of str, ``"name=+0.41"``) gives the
            features that moved it most.

        Raises
        ------
        NotFittedError
            If called before :meth:`fit`.
        MissingColumnError, FileNotFoundError, ValueError
            Bad input, as in :meth:`fit`; an empty table gives an empty result.
        """
        self._check_fitted()
        id_col = id_col or self.id_col
        text_col = text_col or self.text_col
        columns = [id_col, text_col] + ([self.image_col] if self.image_col else []) + self._feature_columns()
        parts = []
        n_rows = _tables.count_rows(listings)
        bar = progress_bar(n_rows or 0, "matching", self.progress)
        for batch in _tables.iter_batches(listings, columns, batch_rows=self.batch_size, name="listings"):
            table = pa.Table.from_batches([batch])
            parts.append(self._match_table(table, id_col, text_col))
            bar.update(table.num_rows)
        bar.close()
        result = pa.concat_tables(parts) if parts else self._empty_result(pa.string())
        if self._score_map() is not None or self.pair_scorer_ is not None or self._pair_model() is not None:
            # The mark find_duplicates puts on calibrated scores, so reports read them as probabilities.
            result = result.replace_schema_metadata({SCORE_KIND_KEY: b"probability"})
        return result

    def _empty_result(self, listing_type: pa.DataType) -> pa.Table:
        columns = {
            "listing_id": pa.array([], type=listing_type),
            "product_id": pa.array([], type=self.product_ids_.type),
            "score": pa.array([], type=pa.float32()),
            "rank": pa.array([], type=pa.int32()),
            "is_match": pa.array([], type=pa.bool_()),
        }
        if self.pair_scorer_ is not None:
            columns["top_features"] = pa.array([], type=pa.list_(pa.string()))
        return pa.table(columns)

    def _match_table(self, table: pa.Table, id_col: str, text_col: str) -> pa.Table:
        listing_ids = table.column(id_col).combine_chunks()
        if table.num_rows == 0:
            return self._empty_result(listing_ids.type)
        items = self._listing_items(table, text_col)
        rows, prods = self._candidates(items)
        if self.pair_scorer_ is not None:
            side = self._listing_side(table, text_col, items)
            features = self._pair_features(side, rows, prods, rows, prods)
            scores = self.pair_scorer_.predict_proba(features).astype(np.float32)
        else:
            scores = self._scores(items, rows, prods, self._images(table, "listings") if self.image_col else None)
            model = self._pair_model()
            if model is not None:
                rows, prods, scores, _, _ = top_per_row(rows, prods, scores, self.rerank or max(2 * self.k, 5))
                texts = _tables.text_column(table, text_col, name="listings")
                scores = model.predict_proba([texts[r] for r in rows], [self.catalog_texts_[p] for p in prods]).astype(np.float32)
        # Ranked on the raw score, then mapped: the map is monotone, so no new ties decide the order.
        rows, prods, scores, rank, kept_at = top_per_row(rows, prods, scores, self.k)
        scores = self._probabilities(scores)
        result = {
            "listing_id": listing_ids.take(pa.array(rows)),
            "product_id": self.product_ids_.take(pa.array(prods)),
            "score": pa.array(scores, type=pa.float32()),
            "rank": pa.array(rank.astype(np.int32), type=pa.int32()),
            "is_match": pa.array(scores >= self.threshold_),
        }
        if self.pair_scorer_ is not None:
            # Explaining costs one prediction per feature: only for the rows returned.
            kept = features[kept_at]
            result["top_features"] = pa.array(self.pair_scorer_.contributions(kept), type=pa.list_(pa.string()))
        return pa.table(result)

    def _listing_items(self, table: pa.Table, text_col: str) -> Items:
        texts = _tables.text_column(table, text_col, name="listings")
        items = Items.from_texts(texts, self.encoder_, self.lexical_, self.scoring, progress=False)
        if items.vectors.shape[1] != self.catalog_.vectors.shape[1]:
            raise ValueError(
                f"listings have dimension {items.vectors.shape[1]}, the catalog has {self.catalog_.vectors.shape[1]}"
            )
        return items

    def _scores(self, items: Items, rows: np.ndarray, prods: np.ndarray, images: np.ndarray | None) -> np.ndarray:
        text = items.pair_scores(self.catalog_, rows, prods, self.scoring)
        if images is None or self.images_ is None:
            return text
        if images.shape[1] != self.images_.shape[1]:
            raise ValueError(f"listing images have dimension {images.shape[1]}, the catalog's have {self.images_.shape[1]}")
        image = np.einsum("ij,ij->i", images[rows], self.images_[prods])
        return ((1.0 - self.image_weight) * text + self.image_weight * image).astype(np.float32)

    # -- learned matching -------------------------------------------------

    def _candidates(self, items: Items) -> tuple[np.ndarray, np.ndarray]:
        """(listing row, catalog row) of each listing's retrieved candidates, listing-major."""
        n_cand = min(self.n_candidates or max(4 * self.k, 20), self.n_products_)
        return cross_join(self.index_, items.search, n_cand, chosen_ef(self.ef, self.index_params))

    def _listing_side(self, table: pa.Table, text_col: str, items: Items) -> PairSide:
        texts = _tables.text_column(table, text_col, name="listings")
        columns = {c: table.column(c).to_pylist() for c in self._feature_columns()}
        return PairSide(items.vectors, items.features, texts, columns)  # type: ignore[arg-type]

    def _catalog_side(self) -> PairSide:
        if getattr(self, "_catalog_side_cache", None) is None:
            self._catalog_side_cache = PairSide(
                self.catalog_.vectors, self.catalog_.features, self.catalog_texts_, self.catalog_columns_  # type: ignore[arg-type]
            )
        return self._catalog_side_cache

    def _pair_features(
        self,
        side: PairSide,
        rows: np.ndarray,
        prods: np.ndarray,
        cand_rows: np.ndarray | None = None,
        cand_prods: np.ndarray | None = None,
    ) -> np.ndarray:
        """Feature rows of (listing ``rows[i]``, product ``prods[i]``); candidates retrieved when not given."""
        if cand_rows is None or cand_prods is None:
            search = hybrid_vectors(side.vectors, side.lexical.projection, self.scoring.vector_weight)
            cand_rows, cand_prods = self._candidates(Items(side.vectors, side.lexical, search))
        catalog = self._catalog_side()
        best = best_candidate_scores(side, catalog, cand_rows, cand_prods, len(side.vectors))
        return pair_features(self.feature_config_ or FeatureConfig(), side, catalog, rows, prods, best)

    def fit_pairs(
        self,
        pairs: Any,
        listings: Any,
        catalog: Any,
        *,
        valid_pairs: Any = None,
        listing_col: str = "listing_id",
        product_col: str = "product_id",
        label_col: str = "label",
        listing_id_col: str | None = None,
        listing_text_col: str | None = None,
        finetune: bool = True,
        finetune_dir: str | os.PathLike[str] | None = None,
        finetune_params: dict[str, Any] | None = None,
        price_col: str | None = None,
        extra_cols: tuple[str, ...] | list[str] = (),
        learner: str = "gradient_boosting",
        calibration: str = "isotonic",
    ) -> CatalogMatcher:
        """Learn both stages from labelled (listing, product) pairs.

        1. Fine-tune the encoder on the pairs' titles (:func:`~simsearch.finetune`,
           early stopping on ``valid_pairs``), unless ``finetune=False``.
        2. Encode and index ``catalog`` with it, as :meth:`fit` does.
        3. Fit a calibrated :class:`~simsearch.applications.pair_scorer.PairScorer`
           on the features of ``pairs``.
        4. With ``valid_pairs``, choose the probability threshold of best F1 on
           them (``calibration_``); without, 0.5.

        Parameters
        ----------
        pairs : table
            ``listing_col``, ``product_col`` and ``label_col`` (1 match, 0 not).
        listings : table
            Listing ids and titles (``listing_id_col``, ``listing_text_col``,
            default the catalog's columns), plus ``price_col`` and ``extra_cols``.
        catalog : table
            Product ids and titles (``id_col``, ``text_col``), plus
            ``price_col`` and ``extra_cols``.
        valid_pairs : table, optional
            Labelled pairs of the same kind, for early stopping and the threshold.
        finetune : bool, default True
            Fine-tune the encoder; ``False`` keeps it as given.
        finetune_dir : path, optional
            Where the fine-tuned model goes (must not exist); default a new
            directory under the simsearch cache.
        finetune_params : dict, optional
            Further keyword arguments of :func:`~simsearch.finetune`
            (``epochs``, ``learning_rate``, ``trainable_layers``...).
        price_col : str, optional
            Price column of both tables (``price_ratio`` feature).
        extra_cols : sequence of str
            Further columns of both tables, compared as numbers or words.
        learner : {"gradient_boosting", "logistic"}
        calibration : {"isotonic", "sigmoid"}

        Returns
        -------
        self

        Raises
        ------
        ValueError
            No pairs, labels other than 0/1, only matches or only
            non-matches, ids absent from ``listings`` or ``catalog``, an empty
            table, ``lexical=False`` or an image matcher.
        MissingColumnError
            A missing column (a ``ValueError``).
        """
        return fit_pairs(
            self, pairs, listings, catalog, valid_pairs=valid_pairs, listing_col=listing_col,
            product_col=product_col, label_col=label_col, listing_id_col=listing_id_col,
            listing_text_col=listing_text_col, finetune=finetune, finetune_dir=finetune_dir,
            finetune_params=finetune_params, price_col=price_col, extra_cols=extra_cols, learner=learner,
            calibration=calibration,
        )

    # -- files -------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted matcher to the new folder ``path``; nothing is pickled.

        The folder format (manifest with checksums, the encoder, the index,
        the catalog, the pair scorer) is :mod:`~simsearch.applications.saved_matcher`;
        it is built beside ``path`` and renamed into place when complete.

        Raises
        ------
        NotFittedError
            If the matcher is not fitted.
        ValueError
            If it uses images or an encoder other than :class:`~simsearch.TextEncoder`.
        FileExistsError
            If ``path`` exists.
        """
        self._check_fitted()
        write_matcher(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, progress: bool | None = None, num_threads: int | None = None) -> CatalogMatcher:
        """Open a matcher written by :meth:`save`; it scores as the saved one did.

        Parameters
        ----------
        path : path-like
        progress : bool or None
            Progress bars of the loaded matcher.
        num_threads : int, optional
            Encoder threads.

        Raises
        ------
        ValueError
            Not a matcher folder, a newer format version, or a file whose
            checksum does not match (:class:`~simsearch.errors.CorruptFileError`,
            :class:`~simsearch.errors.FormatVersionError`).
        """
        return read_matcher(cls, path, progress=progress, num_threads=num_threads)

