"""Match listings to a product catalog: retrieve through the index, re-score exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.applications._items import Items, as_vectors, build_index, default_encoder, progress_bar, unit_rows
from simsearch.applications.dedup import DEFAULT_TEXT_THRESHOLD, DEFAULT_VECTOR_THRESHOLD
from simsearch.applications.lexical import Calibration, LexicalModel, PairScoring, best_f1_threshold

class CatalogMatcher:
    """Match product listings (titles, optionally images) to a catalog.

    ``fit`` encodes the catalog titles and builds an int8 index over them;
    ``match`` retrieves ``n_candidates`` products per listing through the
    index, scores each candidate exactly (embedding cosine, character n-gram
    TF-IDF cosine, model codes and measures: see
    :class:`~simsearch.applications.PairScoring`), fuses an image cosine when
    both sides have images, and returns the best ``k``.

    Parameters
    ----------
    encoder : TextEncoder, optional
        Encodes titles; default ``TextEncoder()`` (all-MiniLM-L6-v2, int8).
    threshold : float, optional
        Least score of a match. ``None``: the threshold learned by
        :meth:`calibrate` if it ran, else 0.5 (lexical scoring) or 0.9 (embedding
        cosine only).
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

    Attributes
    ----------
    n_products_ : int
        Catalog size after ``fit``.
    threshold_ : float
        Threshold in use (after ``fit`` or ``calibrate``).
    calibration_ : Calibration or None
        Result of the last :meth:`calibrate`.

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
    ) -> None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if n_candidates is not None and (not isinstance(n_candidates, (int, np.integer)) or n_candidates < k):
            raise ValueError(f"n_candidates must be an integer >= k ({k}), got {n_candidates!r}")
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
        if threshold is not None and not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        self.calibration_: Calibration | None = None

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
        """
        columns = [self.id_col, self.text_col] + ([self.image_col] if self.image_col else [])
        table = _tables.read_table(catalog, columns, name="catalog")
        _tables.require_rows(table, name="catalog")
        self.product_ids_ = _tables.id_column(table, self.id_col, name="catalog").combine_chunks()
        texts = _tables.text_column(table, self.text_col, name="catalog")
        self.encoder_ = default_encoder() if self.encoder is None else self.encoder
        self.lexical_ = LexicalModel(self.scoring).fit(texts) if self.lexical else None
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
        return DEFAULT_TEXT_THRESHOLD if self.lexical else DEFAULT_VECTOR_THRESHOLD

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("this CatalogMatcher is not fitted yet: call fit(catalog) first")

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
            (float32, higher is better), ``rank`` (int32, 1 = best) and
            ``is_match`` (``score >= threshold_``); ``min(k, n_products_)`` rows
            per listing, listings in input order.

        Raises
        ------
        RuntimeError
            If called before :meth:`fit`.
        MissingColumnError, FileNotFoundError, ValueError
            Bad input, as in :meth:`fit`; an empty table gives an empty result.
        """
        self._check_fitted()
        id_col = id_col or self.id_col
        text_col = text_col or self.text_col
        columns = [id_col, text_col] + ([self.image_col] if self.image_col else [])
        parts = []
        n_rows = _tables.count_rows(listings)
        bar = progress_bar(n_rows or 0, "matching", self.progress)
        for batch in _tables.iter_batches(listings, columns, batch_rows=self.batch_size, name="listings"):
            table = pa.Table.from_batches([batch])
            parts.append(self._match_table(table, id_col, text_col))
            bar.update(table.num_rows)
        bar.close()
        if not parts:
            return self._empty_result(pa.string())
        return pa.concat_tables(parts)

    def _empty_result(self, listing_type: pa.DataType) -> pa.Table:
        return pa.table(
            {
                "listing_id": pa.array([], type=listing_type),
                "product_id": pa.array([], type=self.product_ids_.type),
                "score": pa.array([], type=pa.float32()),
                "rank": pa.array([], type=pa.int32()),
                "is_match": pa.array([], type=pa.bool_()),
            }
        )

    def _match_table(self, table: pa.Table, id_col: str, text_col: str) -> pa.Table:
        listing_ids = table.column(id_col).combine_chunks()
        if table.num_rows == 0:
            return self._empty_result(listing_ids.type)
        items = self._listing_items(table, text_col)
        n_cand = min(self.n_candidates or max(4 * self.k, 20), self.n_products_)
        found, _ = self.index_.search(items.search, k=n_cand, ef=max(2 * n_cand, 64))
        rows = np.repeat(np.arange(len(items), dtype=np.int64), n_cand)
        prods = found.reshape(-1)
        valid = prods != np.uint64(2**64 - 1)
        rows, prods = rows[valid], prods[valid].astype(np.int64)
        scores = self._scores(items, rows, prods, self._images(table, "listings") if self.image_col else None)
        # Best k per listing: sort by (listing, -score), then keep the first k of each run.
        order = np.lexsort((prods, -scores, rows))
        rows, prods, scores = rows[order], prods[order], scores[order]
        starts = np.searchsorted(rows, rows, side="left")
        rank = np.arange(len(rows)) - starts + 1
        keep = rank <= self.k
        rows, prods, scores, rank = rows[keep], prods[keep], scores[keep], rank[keep]
        return pa.table(
            {
                "listing_id": listing_ids.take(pa.array(rows)),
                "product_id": self.product_ids_.take(pa.array(prods)),
                "score": pa.array(scores, type=pa.float32()),
                "rank": pa.array(rank.astype(np.int32), type=pa.int32()),
                "is_match": pa.array(scores >= self.threshold_),
            }
        )

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

    # -- labelled pairs --------------------------------------------------

    def score_pairs(
        self,
        pairs: Any,
        listings: Any = None,
        *,
        listing_col: str = "listing_id",
        product_col: str = "product_id",
        id_col: str | None = None,
        text_col: str | None = None,
    ) -> np.ndarray:
        """Score given (listing, product) pairs exactly, without retrieval.

        Parameters
        ----------
        pairs : table
            With ``listing_col`` and ``product_col``; the listing titles come
            from ``listings`` or, when it is None, from a ``text_col`` column
            of ``pairs`` itself.
        listings : table, optional
            Listing ids and titles (``id_col``, ``text_col``).

        Returns
        -------
        ndarray of shape (n_pairs,), float32

        Raises
        ------
        ValueError
            A product id not in the catalog, or a listing id not in ``listings``.
        """
        self._check_fitted()
        id_col = id_col or self.id_col
        text_col = text_col or self.text_col
        table = _tables.read_table(pairs, name="pairs")
        _tables.require_columns(table, [listing_col, product_col], name="pairs")
        if listings is None:
            _tables.require_columns(table, [text_col], name="pairs")
            lt = pa.table({id_col: table.column(listing_col), text_col: table.column(text_col)})
            listing_rows = np.arange(table.num_rows)
        else:
            lt = _tables.read_table(listings, [id_col, text_col] + ([self.image_col] if self.image_col else []), name="listings")
            row_of = {v: i for i, v in enumerate(_tables.id_column(lt, id_col, name="listings").to_pylist())}
            wanted = table.column(listing_col).to_pylist()
            missing = [v for v in wanted if v not in row_of]
            if missing:
                raise ValueError(f"pairs name {len(missing)} listing ids not in listings, e.g. {missing[:3]}")
            listing_rows = np.array([row_of[v] for v in wanted], dtype=np.int64)
        product_rows = self._product_rows(table.column(product_col).to_pylist())
        items = self._listing_items(lt, text_col)
        images = self._images(lt, "listings") if (self.image_col and self.image_col in lt.column_names) else None
        return self._scores(items, listing_rows, product_rows, images)

    def _product_rows(self, product_ids: list[Any]) -> np.ndarray:
        if self._row_of is None:
            self._row_of = {v: i for i, v in enumerate(self.product_ids_.to_pylist())}
        missing = [v for v in product_ids if v not in self._row_of]
        if missing:
            raise ValueError(f"pairs name {len(missing)} product ids not in the catalog, e.g. {missing[:3]}")
        return np.array([self._row_of[v] for v in product_ids], dtype=np.int64)

    def calibrate(
        self,
        pairs: Any,
        listings: Any = None,
        *,
        label_col: str = "label",
        listing_col: str = "listing_id",
        product_col: str = "product_id",
        id_col: str | None = None,
        text_col: str | None = None,
    ) -> Calibration:
        """Choose the threshold that maximizes F1 on labelled pairs.

        Parameters
        ----------
        pairs : table
            ``listing_col``, ``product_col`` and ``label_col`` (1 match, 0 not),
            and the listing title in ``text_col`` unless ``listings`` is given.
        listings : table, optional
            Listing ids and titles.

        Returns
        -------
        Calibration
            Threshold, F1, precision and recall there; it is also stored in
            ``calibration_`` and used by later :meth:`match` calls.

        Raises
        ------
        ValueError
            No pairs, labels other than 0/1, no positive pair, unknown ids.
        """
        table = _tables.read_table(pairs, name="pairs")
        _tables.require_columns(table, [label_col], name="pairs")
        _tables.require_rows(table, name="pairs")
        labels = table.column(label_col).to_numpy(zero_copy_only=False)
        scores = self.score_pairs(
            table, listings, listing_col=listing_col, product_col=product_col, id_col=id_col, text_col=text_col
        )
        self.calibration_ = best_f1_threshold(scores, labels)
        return self.calibration_
