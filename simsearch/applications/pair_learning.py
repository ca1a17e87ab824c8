"""``CatalogMatcher.fit_pairs``: learn both matching stages from labelled (listing, product) pairs.

1. Fine-tune the encoder on the pairs' titles (:func:`~simsearch.finetune`,
   early stopping on the validation pairs), unless ``finetune=False``.
2. Encode and index the catalog with it, as ``fit`` does.
3. Fit a calibrated :class:`~simsearch.applications.pair_scorer.PairScorer`
   on the features of the pairs; with validation pairs, choose the
   probability threshold of best F1 on them.

Kept apart from :mod:`~simsearch.applications.matcher` so that the matcher
module holds retrieval and scoring, and this one the learning.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.applications._items import default_encoder
from simsearch.applications.metrics import best_f1_threshold
from simsearch.applications.pair_scorer import (
    FeatureConfig,
    PairScorer,
    labelled_pairs,
    text_pairs,
)

__all__ = ["fit_pairs"]


def fit_pairs(
    m: Any, pairs: Any, listings: Any, catalog: Any, *, valid_pairs: Any, listing_col: str, product_col: str,
    label_col: str, listing_id_col: str | None, listing_text_col: str | None, finetune: bool,
    finetune_dir: str | os.PathLike[str] | None, finetune_params: dict[str, Any] | None, price_col: str | None,
    extra_cols: tuple[str, ...] | list[str], learner: str, calibration: str,
) -> Any:
    """Fit the :class:`~simsearch.CatalogMatcher` ``m`` on labelled pairs; see its ``fit_pairs``.

    Returns
    -------
    CatalogMatcher
        ``m``, fitted.
    """
    from simsearch.encoders import TextEncoder
    from simsearch.encoders import finetune as finetune_encoder

    if not m.lexical:
        raise ValueError("fit_pairs needs the lexical features: make the matcher with lexical=True")
    if m.image_col:
        raise ValueError("fit_pairs learns from titles only: make the matcher without image_col")
    lid, ltext = listing_id_col or m.id_col, listing_text_col or m.text_col
    config = FeatureConfig(price_col, tuple(extra_cols))
    listing_table = _tables.read_table(listings, [lid, ltext, *config.columns], name="listings")
    catalog_table = _tables.read_table(catalog, [m.id_col, m.text_col, *config.columns], name="catalog")
    _tables.require_rows(listing_table, name="listings")
    _tables.require_rows(catalog_table, name="catalog")
    listing_text = dict(zip(_tables.id_column(listing_table, lid, name="listings").to_pylist(),
                            _tables.text_column(listing_table, ltext, name="listings")))
    product_text = dict(zip(_tables.id_column(catalog_table, m.id_col, name="catalog").to_pylist(),
                            _tables.text_column(catalog_table, m.text_col, name="catalog")))
    cols = (listing_col, product_col, label_col)
    train = labelled_pairs(pairs, cols, listing_text, product_text, "pairs")
    valid = labelled_pairs(valid_pairs, cols, listing_text, product_text, "valid_pairs") if valid_pairs is not None else None

    encoder = default_encoder() if m.encoder is None else m.encoder
    m.finetune_dir_ = None
    if finetune:
        if not isinstance(encoder, TextEncoder):
            raise ValueError(f"finetune=True needs a TextEncoder, got {type(encoder).__name__}")
        out = _new_model_dir() if finetune_dir is None else finetune_dir
        params = {"progress": m.progress, **(finetune_params or {})}
        m.finetune_dir_ = finetune_encoder(
            encoder, text_pairs(train, listing_text, product_text),
            text_pairs(valid, listing_text, product_text) if valid is not None else None, out=out, **params,
        )
        encoder = TextEncoder(
            model=m.finetune_dir_, precision=encoder.precision, max_length=encoder.max_length,
            batch_size=encoder.batch_size, num_threads=encoder.num_threads,
        )

    m.feature_config_ = config
    m.pair_scorer_ = None
    m.calibration_ = None
    m._fit_catalog(catalog_table, encoder)

    def features(labelled: pa.Table) -> np.ndarray:
        lt, rows, prods = m._resolve_pairs(labelled, listing_table, listing_col, product_col, lid, ltext)
        items = m._listing_items(lt, ltext)
        return m._pair_features(m._listing_side(lt, ltext, items), rows, prods)

    X = features(train)
    y = train.column(label_col).to_numpy(zero_copy_only=False).astype(np.int64)
    scorer = PairScorer(learner=learner, calibration=calibration).fit(X, y, config.names)
    m.pair_scorer_ = scorer
    if valid is not None:
        labels = valid.column(label_col).to_numpy(zero_copy_only=False).astype(np.int64)
        m.calibration_ = best_f1_threshold(scorer.predict_proba(features(valid)), labels)
    return m


def _new_model_dir() -> Any:
    """A fresh path for a fine-tuned model under the simsearch cache."""
    import tempfile
    from pathlib import Path

    from simsearch._storage import cache_dir

    root = cache_dir() / "finetuned"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root)) / "model"
