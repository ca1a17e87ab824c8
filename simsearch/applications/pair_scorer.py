"""The second matching stage: a calibrated classifier over cheap, explainable pair features.

:class:`CatalogMatcher` retrieves candidates through the index; the pair
scorer then decides, for each (listing, candidate) pair, how likely the two
are the same product. Its features (:data:`BASE_FEATURES`, plus price and
user columns) reuse the lexical evidence of
:mod:`simsearch.applications.lexical`:

- ``embedding_cosine``: cosine of the two titles' embeddings;
- ``embedding_margin``, ``tfidf_margin``: how far the pair's cosine falls
  below the best cosine among the listing's retrieved candidates (0 for the
  best candidate). Product catalogs are nearly one-to-one, so "is this the
  listing's best candidate" carries much of the decision;
- ``tfidf_cosine``: character n-gram TF-IDF cosine;
- ``token_jaccard``: word overlap;
- ``codes_both``, ``code_shared``, ``code_conflict``: both titles carry model
  codes; they share one (or a digit run); their codes are near misses
  (:func:`~simsearch.applications.lexical.code_relation`);
- ``code_contained``: share of one title's codes found inside the other
  title with spaces and separators removed (``kdl40v4100`` in ``sony
  kdl-40 v4100``), the larger of both directions;
- ``measures_both``, ``measure_shared``, ``measure_conflict``: both state a
  number with a unit; they share one; they state a unit and never the same
  value for it;
- ``length_ratio``: shorter over longer title, in characters;
- ``price_ratio`` (with a price column): lower over higher price, missing
  (NaN) when either is absent;
- ``<column>_similarity`` per extra column: for numbers, lower over higher;
  for text, word Jaccard; missing when either is absent.

The learner is scikit-learn's ``HistGradientBoostingClassifier`` (missing
values handled natively) or ``LogisticRegression``, wrapped in
``CalibratedClassifierCV`` so that scores are probabilities. It is saved with
skops, never pickled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.applications.lexical import (
    TextFeatures,
    TitleFacts,
    code_relation,
    measures_conflict,
    normalize_title,
    rowwise_dot,
)

#: Features every pair gets, in column order.
BASE_FEATURES = (
    "embedding_cosine",
    "embedding_margin",
    "tfidf_cosine",
    "tfidf_margin",
    "token_jaccard",
    "codes_both",
    "code_shared",
    "code_conflict",
    "code_contained",
    "measures_both",
    "measure_shared",
    "measure_conflict",
    "length_ratio",
)
LEARNERS = ("gradient_boosting", "logistic")
CALIBRATIONS = ("isotonic", "sigmoid")

_WORD = re.compile(r"[a-z0-9]+")
# Below this many rows, predictions run on one thread (see PairScorer.predict_proba).
_PARALLEL_ROWS = 50_000
_SQUASH = re.compile(r"[\s\-/._,]+")


@dataclass(frozen=True)
class FeatureConfig:
    """Which optional features the pair scorer uses.

    Attributes
    ----------
    price_col : str or None
        Numeric (or ``"$1,299.00"``-style text) price column present in both
        tables; gives ``price_ratio``.
    extra_cols : tuple of str
        Further columns present in both tables; each gives
        ``<column>_similarity``.
    """

    price_col: str | None = None
    extra_cols: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        """The table columns these features read."""
        return ([self.price_col] if self.price_col else []) + list(self.extra_cols)

    @property
    def names(self) -> list[str]:
        """Feature names, in column order."""
        return [*BASE_FEATURES, *(["price_ratio"] if self.price_col else []), *(f"{c}_similarity" for c in self.extra_cols)]

    def to_json(self) -> dict[str, Any]:
        return {"price_col": self.price_col, "extra_cols": list(self.extra_cols)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureConfig:
        return cls(price_col=data.get("price_col"), extra_cols=tuple(data.get("extra_cols", ())))


@dataclass
class PairSide:
    """What the features need of one side (listings or catalog), row ``i`` for item ``i``.

    Attributes
    ----------
    vectors : ndarray of shape (n, dim), float32
        Unit embeddings.
    lexical : TextFeatures
        TF-IDF rows and title facts.
    texts : list of str
        Titles.
    columns : dict of str to list
        Price and extra column values (``None`` where missing).
    """

    vectors: np.ndarray
    lexical: TextFeatures
    texts: list[str]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    _words: list[frozenset[str]] | None = None
    _squashed: list[str] | None = None

    @property
    def words(self) -> list[frozenset[str]]:
        if self._words is None:
            self._words = [frozenset(_WORD.findall(normalize_title(t))) for t in self.texts]
        return self._words

    @property
    def squashed(self) -> list[str]:
        if self._squashed is None:
            self._squashed = [_SQUASH.sub("", normalize_title(t)) for t in self.texts]
        return self._squashed


def best_candidate_scores(
    listings: PairSide, catalog: PairSide, rows: np.ndarray, prods: np.ndarray, n_listings: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best embedding and TF-IDF cosine of each listing over its candidates.

    Parameters
    ----------
    rows, prods : ndarray of shape (m,), int
        Candidate pairs (listing row, catalog row), e.g. from the index.
    n_listings : int

    Returns
    -------
    best_embedding, best_tfidf : ndarray of shape (n_listings,), float32
        ``-1`` for a listing with no candidate.
    """
    best_e = np.full(n_listings, -1.0, dtype=np.float32)
    best_t = np.full(n_listings, -1.0, dtype=np.float32)
    if len(rows):
        np.maximum.at(best_e, rows, rowwise_dot(listings.vectors, rows, catalog.vectors, prods))
        np.maximum.at(best_t, rows, rowwise_dot(listings.lexical.tfidf, rows, catalog.lexical.tfidf, prods))
    return best_e, best_t


def code_and_measure_features(fa: TitleFacts, fb: TitleFacts, squashed_a: str, squashed_b: str) -> tuple[float, ...]:
    """``codes_both`` .. ``measure_conflict`` of :data:`BASE_FEATURES` for two titles' facts.

    ``squashed_a`` and ``squashed_b`` are the normalized titles with spaces
    and separators removed (for ``code_contained``).
    """
    codes_both = code_shared = code_conflict = contained = 0.0
    if fa.codes and fb.codes:
        codes_both = 1.0
        relation = code_relation(fa, fb)
        code_shared, code_conflict = float(relation > 0), float(relation < 0)
    if fa.codes or fb.codes:
        in_b = sum(c in squashed_b for c in fa.codes) / len(fa.codes) if fa.codes else 0.0
        in_a = sum(c in squashed_a for c in fb.codes) / len(fb.codes) if fb.codes else 0.0
        contained = max(in_a, in_b)
    measures = (0.0, 0.0, 0.0)
    if fa.measures and fb.measures:
        measures = (1.0, float(bool(fa.measures & fb.measures)), float(measures_conflict(fa, fb)))
    return (codes_both, code_shared, code_conflict, contained, *measures)


def pair_features(
    config: FeatureConfig,
    listings: PairSide,
    catalog: PairSide,
    rows: np.ndarray,
    prods: np.ndarray,
    best: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Feature rows of the pairs ``(listings[rows[i]], catalog[prods[i]])``.

    Parameters
    ----------
    config : FeatureConfig
    listings, catalog : PairSide
    rows, prods : ndarray of shape (m,), int
    best : (ndarray, ndarray)
        Each listing's best embedding and TF-IDF cosine over its candidates
        (:func:`best_candidate_scores`); a pair scoring above them counts as the best.

    Returns
    -------
    ndarray of shape (m, len(config.names)), float64
        NaN marks a missing value (no price on one side).
    """
    rows = np.asarray(rows, dtype=np.int64)
    prods = np.asarray(prods, dtype=np.int64)
    out = np.zeros((len(rows), len(config.names)), dtype=np.float64)
    if len(rows) == 0:
        return out
    emb = rowwise_dot(listings.vectors, rows, catalog.vectors, prods)
    tfidf = rowwise_dot(listings.lexical.tfidf, rows, catalog.lexical.tfidf, prods)
    out[:, 0] = emb
    out[:, 1] = emb - np.maximum(best[0][rows], emb)
    out[:, 2] = tfidf
    out[:, 3] = tfidf - np.maximum(best[1][rows], tfidf)
    lw, cw = listings.words, catalog.words
    lf, cf = listings.lexical.facts, catalog.lexical.facts
    ls, cs = listings.squashed, catalog.squashed
    for i, (r, p) in enumerate(zip(rows.tolist(), prods.tolist())):
        a, b = lw[r], cw[p]
        out[i, 4] = len(a & b) / len(a | b) if (a or b) else 0.0
        out[i, 5:12] = code_and_measure_features(lf[r], cf[p], ls[r], cs[p])
        la, lb = len(listings.texts[r]), len(catalog.texts[p])
        out[i, 12] = min(la, lb) / max(la, lb) if max(la, lb) else 0.0
    col = len(BASE_FEATURES)
    for name in config.columns:
        out[:, col] = _column_similarity(listings.columns[name], catalog.columns[name], rows, prods)
        col += 1
    return out


def as_number(value: Any) -> float:
    """A price-like value as a float: ``12``, ``"$1,299.00"``; NaN when absent or unreadable."""
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    text = re.sub(r"[^0-9.\-]", "", str(value))
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _column_similarity(left: list[Any], right: list[Any], rows: np.ndarray, prods: np.ndarray) -> np.ndarray:
    """Lower over higher for numbers, word Jaccard for text; NaN when a side is missing."""
    sample = next((v for v in (*left, *right) if v is not None and v != ""), None)
    out = np.full(len(rows), np.nan)
    numeric = sample is not None and not np.isnan(as_number(sample))
    if numeric:
        a = np.array([as_number(left[r]) for r in rows])
        b = np.array([as_number(right[p]) for p in prods])
        hi = np.maximum(np.abs(a), np.abs(b))
        ok = np.isfinite(a) & np.isfinite(b)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[ok] = np.where(hi[ok] > 0, np.minimum(np.abs(a[ok]), np.abs(b[ok])) / hi[ok], 1.0)
        return out
    for i, (r, p) in enumerate(zip(rows.tolist(), prods.tolist())):
        x, y = left[r], right[p]
        if x is None or y is None or str(x) == "" or str(y) == "":
            continue
        a, b = set(_WORD.findall(normalize_title(str(x)))), set(_WORD.findall(normalize_title(str(y))))
        out[i] = len(a & b) / len(a | b) if (a or b) else 1.0
    return out


class PairScorer:
    """A calibrated classifier of (listing, product) feature rows.

    Parameters
    ----------
    learner : {"gradient_boosting", "logistic"}, default "gradient_boosting"
        ``HistGradientBoostingClassifier`` (interactions, missing values) or a
        standardized ``LogisticRegression`` (missing values set to 0).
    calibration : {"isotonic", "sigmoid"}, default "isotonic"
        ``CalibratedClassifierCV`` method, fit on up-to-5-fold cross-validated
        predictions of one learner trained on all pairs.
    random_state : int, default 0

    Attributes
    ----------
    model_ : sklearn.calibration.CalibratedClassifierCV
    feature_names_ : list of str
    reference_ : ndarray of shape (n_features,)
        Median of each feature over the training non-matches: the value a
        feature is set to when measuring its contribution.
    n_features_in_ : int
    """

    def __init__(self, learner: str = "gradient_boosting", calibration: str = "isotonic", random_state: int = 0) -> None:
        self.learner = learner
        self.calibration = calibration
        self.random_state = random_state

    def _estimator(self) -> Any:
        if self.learner == "gradient_boosting":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(
                max_iter=100, learning_rate=0.1, max_leaf_nodes=15, l2_regularization=1.0,
                early_stopping=False, random_state=self.random_state,
            )
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            SimpleImputer(strategy="constant", fill_value=0.0, keep_empty_features=True),
            StandardScaler(), LogisticRegression(C=1.0, max_iter=1000),
        )

    def fit(self, X: np.ndarray, y: np.ndarray, feature_names: Sequence[str]) -> PairScorer:
        """Fit on feature rows ``X`` (from :func:`pair_features`) and labels ``y`` (0/1).

        Raises
        ------
        ValueError
            Mismatched shapes, labels other than 0/1, a single class, or too
            few pairs of the rarer class to calibrate (fewer than 2).
        """
        from sklearn.calibration import CalibratedClassifierCV

        if self.learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {self.learner!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or X.shape[0] != len(y) or X.shape[1] != len(feature_names):
            raise ValueError(f"X must be (n_pairs, {len(feature_names)}) beside {len(y)} labels, got {X.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        counts = np.bincount(y.astype(np.int64), minlength=2)
        if counts.min() == 0:
            only = "matches" if counts[0] == 0 else "non-matches"
            raise ValueError(f"the labelled pairs are all {only}: the pair scorer needs both matches and non-matches")
        if counts.min() < 2:
            raise ValueError(f"the labelled pairs hold {counts.min()} pair of the rarer class; at least 2 are needed")
        cv = int(min(5, counts.min()))
        # ensemble=False: one learner fit on all pairs, calibrated on its
        # cross-validated predictions; predicting costs one model, not ``cv``.
        self.model_ = CalibratedClassifierCV(self._estimator(), method=self.calibration, cv=cv, ensemble=False)
        self.model_.fit(X, y.astype(np.int64))
        self.feature_names_ = list(feature_names)
        self.n_features_in_ = X.shape[1]
        negatives = X[y == 0]
        self.reference_ = np.array(
            [np.nanmedian(c) if np.isfinite(c).any() else np.nan for c in negatives.T], dtype=np.float64
        )
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability that each pair is a match, shape (n,), float64."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}; the scorer was fit on {self.n_features_in_} features")
        if len(X) == 0:
            return np.zeros(0)
        if len(X) >= _PARALLEL_ROWS:
            return self.model_.predict_proba(X)[:, 1]
        from threadpoolctl import threadpool_limits

        # HistGradientBoosting opens an OpenMP region per tree: on the few
        # thousand candidates of one batch its start-up costs more than the
        # work, 2-3x more on a busy machine, so small inputs run on one thread.
        with threadpool_limits(1, user_api="openmp"):
            return self.model_.predict_proba(X)[:, 1]

    def contributions(self, X: np.ndarray, top: int = 3) -> list[list[str]]:
        """The features that moved each pair's probability most.

        A feature's contribution is the probability minus the probability
        with that feature set to its median over training non-matches
        (``reference_``): how much this pair's value of it pushed the score
        up (``+``) or down (``-``).

        Returns
        -------
        list of list of str
            Per row, up to ``top`` entries ``"name=+0.41"``, largest magnitude first.
        """
        X = np.asarray(X, dtype=np.float64)
        if len(X) == 0:
            return []
        base = self.predict_proba(X)
        # Only (row, feature) cells away from the reference can contribute; most
        # binary features sit at it. All moved rows go to one predict call.
        same = (X == self.reference_) | (np.isnan(X) & np.isnan(self.reference_))
        rows, cols = np.nonzero(~same)
        moved = X[rows]
        moved[np.arange(len(rows)), cols] = self.reference_[cols]
        delta = np.zeros_like(X)
        delta[rows, cols] = base[rows] - self.predict_proba(moved)
        order = np.argsort(-np.abs(delta), axis=1, kind="stable")[:, :top]
        return [
            [f"{self.feature_names_[j]}={delta[i, j]:+.2f}" for j in order[i] if abs(delta[i, j]) >= 0.005]
            for i in range(len(X))
        ]

    # -- files -------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted scorer with skops (no pickle), atomically."""
        import skops.io as sio

        from simsearch._storage import atomic_write_bytes

        atomic_write_bytes(Path(path), sio.dumps(self.__dict__))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairScorer:
        """Read a scorer written by :meth:`save`.

        Only scikit-learn, NumPy and SciPy types are trusted; a file holding
        anything else is refused.

        Raises
        ------
        ValueError
            If the file holds types other than those.
        """
        import skops.io as sio

        data = Path(path).read_bytes()
        untrusted = sio.get_untrusted_types(data=data)
        foreign = [t for t in untrusted if not t.startswith(("sklearn.", "numpy.", "scipy.", "builtins."))]
        if foreign:
            raise ValueError(f"{str(path)!r} holds types outside scikit-learn/NumPy/SciPy, refused: {foreign[:5]}")
        state = sio.loads(data, trusted=untrusted)
        if not isinstance(state, dict) or "model_" not in state:
            raise ValueError(f"{str(path)!r} is not a saved PairScorer")
        scorer = cls.__new__(cls)
        scorer.__dict__.update(state)
        return scorer


def labelled_pairs(
    pairs: Any, cols: tuple[str, str, str], listing_text: dict[Any, str], product_text: dict[Any, str], name: str
) -> pa.Table:
    """Read labelled pairs and check their labels and ids against the two tables."""
    listing_col, product_col, label_col = cols
    table = _tables.read_table(pairs, list(cols), name=name)
    _tables.require_rows(table, name=name)
    labels = table.column(label_col).to_pylist()
    if any(v not in (0, 1) for v in labels):
        bad = next(v for v in labels if v not in (0, 1))
        raise ValueError(f"{name} column {label_col!r} must hold 0 or 1, found {bad!r}")
    if len(set(labels)) < 2:
        only = "matches (1)" if labels[0] == 1 else "non-matches (0)"
        raise ValueError(f"{name} holds only {only}: learning needs both matches and non-matches")
    for col, known, what in ((listing_col, listing_text, "listings"), (product_col, product_text, "catalog")):
        missing = [v for v in table.column(col).to_pylist() if v not in known]
        if missing:
            raise ValueError(f"{name} name {len(missing)} {col} values not in {what}, e.g. {missing[:3]}")
    return table


def text_pairs(table: pa.Table | None, listing_text: dict[Any, str], product_text: dict[Any, str]) -> list[tuple[str, str, int]] | None:
    """(listing title, product title, label) of labelled id pairs; empty titles get a placeholder."""
    if table is None:
        return None
    names = table.column_names
    return [
        (listing_text[a] or "untitled", product_text[b] or "untitled", int(y))
        for a, b, y in zip(*(table.column(c).to_pylist() for c in names))
    ]


__all__ = [
    "BASE_FEATURES",
    "FeatureConfig",
    "PairScorer",
    "PairSide",
    "as_number",
    "best_candidate_scores",
    "code_and_measure_features",
    "labelled_pairs",
    "pair_features",
    "text_pairs",
]
