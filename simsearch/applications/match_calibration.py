"""CatalogMatcher scores as match probabilities: the shipped map of its zero-shot score, and its refit.

With no pair model and no labels, :class:`~simsearch.CatalogMatcher` scores a
(listing, product) pair with the raw score of
:class:`~simsearch.applications.PairScoring` (weighted cosines plus the code
and measure rules, about ``[-1.2, 1.2]``), or with the embedding cosine when
``lexical=False``. A :class:`ScoreMap` turns that raw score into the
probability that the pair is a match, with Platt scaling
(:class:`~simsearch.applications.dedup_calibration.PairCalibration`,
``p = sigmoid(slope * raw + intercept)``), and carries the default threshold
on that scale. The map is monotone, so rankings do not change.

The default maps (one for the lexical score, one for the cosine) ship as JSON
(``simsearch/data/match_calibration.json``, no pickle), fitted by
``benchmarks/match_calibration.py`` on the **validation** splits only of the
Magellan / DeepMatcher benchmark sets (Beer, iTunes-Amazon, Fodors-Zagats,
DBLP-ACM, DBLP-Scholar; Mudgal et al., SIGMOD 2018, as serialized by Ditto;
BSD-3-Clause as redistributed): the pairs ``CatalogMatcher(k=5)`` returns
when each split's left records are matched to a catalog of its right
records, labelled by the sets' ground truth. WDC (terms unconfirmed) and
Abt-Buy ("research and benchmarking use only") were left out. The default threshold is the one of best mean F1
over the fitting sets' validation pairs (0.35 for the lexical score).

How well it holds on sets it was not fit on (leave-one-dataset-out, test
splits, ``benchmarks/RESULTS.md``): expected calibration error at most 0.05
on 5 of 13 sets (Beer, Fodors-Zagats, DBLP-ACM and its dirty twin, Abt-Buy:
0.023), 0.06-0.19 on the rest (the four WDC sets 0.10-0.16): one score means
different things on different data. With labels of your own, ``calibrate``
refits the map on them.

Image scores (a blend of the text score and the image cosine) go through the
text map uncalibrated: no labelled image matching data was at hand to fit one.

:func:`calibrate_matcher` refits the map (Platt on the user's labelled
pairs) and the threshold, for ``CatalogMatcher.calibrate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.applications.dedup_calibration import PairCalibration
from simsearch.applications.metrics import ThresholdChoice, best_f1_threshold
from simsearch.errors import CorruptFileError

__all__ = [
    "DEFAULT_MATCH_CALIBRATION",
    "MatcherPairScores",
    "ScoreMap",
    "calibrate_matcher",
    "default_score_map",
    "raw_threshold",
]

DEFAULT_MATCH_CALIBRATION = Path(__file__).resolve().parents[1] / "data" / "match_calibration.json"


def raw_threshold(lexical: bool) -> float:
    """The default threshold of the raw scores (``score_map_ = None``): 0.5 lexical, 0.9 cosine, as before the map."""
    return 0.5 if lexical else 0.9


@dataclass(frozen=True)
class ScoreMap:
    """Raw matcher score -> match probability, with the default threshold on that scale.

    Parameters
    ----------
    calibration : PairCalibration
        ``p = sigmoid(slope * raw + intercept)``.
    threshold : float
        Least probability of a match when the matcher is given none, in (0, 1).
    source : str
        ``"default"`` (the shipped map) or ``"labels"`` (refit by ``calibrate``).
    """

    calibration: PairCalibration
    threshold: float
    source: str = "default"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {self.threshold}")

    def apply(self, raw: Any) -> np.ndarray:
        """Probabilities of raw scores: array-like of any shape -> float32 of that shape, in [0, 1]."""
        return self.calibration.apply(raw)

    def to_dict(self) -> dict[str, Any]:
        return {**self.calibration.to_dict(), "threshold": float(self.threshold), "source": self.source}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScoreMap:
        """The map of :meth:`to_dict`'s dict.

        Raises
        ------
        CorruptFileError
            Missing or malformed fields (a ``ValueError``).
        """
        try:
            return cls(PairCalibration.from_dict(values), float(values["threshold"]), str(values.get("source", "default")))
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"a matcher score map needs slope > 0, intercept and threshold in (0, 1): {err}") from err


@lru_cache(maxsize=2)
def default_score_map(lexical: bool = True) -> ScoreMap:
    """The shipped map of the lexical score (``lexical=True``) or of the embedding cosine (see the module docstring)."""
    with open(DEFAULT_MATCH_CALIBRATION, encoding="utf-8") as f:
        body = json.load(f)
    return ScoreMap.from_dict({**body["lexical" if lexical else "embedding"], "source": "default"})


def calibrate_matcher(raw: np.ndarray, labels: np.ndarray) -> tuple[ScoreMap, ThresholdChoice]:
    """Refit the score map on labelled pairs, and choose the probability threshold of best F1 on them.

    Parameters
    ----------
    raw : ndarray of shape (n,), float
        The matcher's raw scores of the pairs.
    labels : ndarray of shape (n,), 0/1
        1 for a match.

    Returns
    -------
    ScoreMap
        The refit map (``source="labels"``), its threshold the chosen one.
    ThresholdChoice
        Threshold, F1, precision and recall on the pairs, probability scale.

    Raises
    ------
    ValueError
        Labels other than 0/1, no positive pair or no negative pair (Platt
        scaling needs both).
    """
    labels = np.asarray(labels)
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not labels.any():
        raise ValueError("the labelled pairs hold no positive pair: calibration needs matches and non-matches")
    if labels.all():
        raise ValueError("the labelled pairs hold no negative pair: calibration needs matches and non-matches")
    try:
        calibration = PairCalibration.fit(raw, labels)
    except ValueError as err:  # a map that reverses the order: matches score below non-matches
        raise ValueError(f"the labelled pairs cannot be calibrated: matches do not score above non-matches ({err})") from err
    choice = best_f1_threshold(calibration.apply(raw), labels)
    # best_f1_threshold returns a midpoint between two probabilities: inside (0, 1) unless all
    # probabilities saturate; keep the map usable then.
    threshold = min(max(choice.threshold, 1e-6), 1.0 - 1e-6)
    return ScoreMap(calibration, threshold, "labels"), choice


class MatcherPairScores:
    """``score_pairs`` and ``calibrate`` of :class:`~simsearch.CatalogMatcher`, and its score map.

    A mixin: kept here, beside the map it fits, so that the matcher module
    holds retrieval and scoring. It uses the matcher's fitted state.
    """

    def _score_map(self) -> ScoreMap | None:
        """The map the raw scores go through, or None (probabilities already, or raw scores asked for)."""
        if self.pair_scorer_ is not None or self._pair_model() is not None:
            return None
        return getattr(self, "score_map_", None)

    def _probabilities(self, raw: np.ndarray) -> np.ndarray:
        score_map = self._score_map()
        return raw if score_map is None else score_map.apply(raw)

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
            Match probabilities, as ``score`` of :meth:`match` (raw scores
            when ``score_map_`` is None).

        Raises
        ------
        ValueError
            A product id not in the catalog, or a listing id not in ``listings``.
        """
        return self._probabilities(self._raw_pair_scores(pairs, listings, listing_col, product_col, id_col, text_col))

    def _raw_pair_scores(
        self, pairs: Any, listings: Any, listing_col: str, product_col: str, id_col: str | None, text_col: str | None
    ) -> np.ndarray:
        """:meth:`score_pairs` before the score map: raw zero-shot scores, or the pair model's / scorer's probabilities."""
        self._check_fitted()
        id_col = id_col or self.id_col
        text_col = text_col or self.text_col
        table = _tables.read_table(pairs, name="pairs")
        lt, listing_rows, product_rows = self._resolve_pairs(table, listings, listing_col, product_col, id_col, text_col)
        items = self._listing_items(lt, text_col)
        if self.pair_scorer_ is not None:
            side = self._listing_side(lt, text_col, items)
            return self.pair_scorer_.predict_proba(self._pair_features(side, listing_rows, product_rows)).astype(np.float32)
        model = self._pair_model()
        if model is not None:
            texts = _tables.text_column(lt, text_col, name="listings")
            left = [texts[r] for r in listing_rows]
            return model.predict_proba(left, [self.catalog_texts_[p] for p in product_rows]).astype(np.float32)
        images = self._images(lt, "listings") if (self.image_col and self.image_col in lt.column_names) else None
        return self._scores(items, listing_rows, product_rows, images)

    def _resolve_pairs(
        self, table: pa.Table, listings: Any, listing_col: str, product_col: str, id_col: str, text_col: str
    ) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """The listings table of ``pairs`` and each pair's (listing row, product row)."""
        _tables.require_columns(table, [listing_col, product_col], name="pairs")
        extra = ([self.image_col] if self.image_col else []) + self._feature_columns()
        if listings is None:
            _tables.require_columns(table, [text_col, *self._feature_columns()], name="pairs")
            lt = pa.table(
                {id_col: table.column(listing_col), text_col: table.column(text_col),
                 **{c: table.column(c) for c in self._feature_columns()}}
            )
            listing_rows = np.arange(table.num_rows)
        else:
            lt = _tables.read_table(listings, [id_col, text_col] + extra, name="listings")
            row_of = {v: i for i, v in enumerate(_tables.id_column(lt, id_col, name="listings").to_pylist())}
            wanted = table.column(listing_col).to_pylist()
            missing = [v for v in wanted if v not in row_of]
            if missing:
                raise ValueError(f"pairs name {len(missing)} listing ids not in listings, e.g. {missing[:3]}")
            listing_rows = np.array([row_of[v] for v in wanted], dtype=np.int64)
        product_rows = self._product_rows(table.column(product_col).to_pylist())
        return lt, listing_rows, product_rows

    def _product_rows(self, product_ids: list[Any]) -> np.ndarray:
        if getattr(self, "_row_of", None) is None:
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
    ) -> ThresholdChoice:
        """Fit the score map and the threshold to labelled pairs.

        With the zero-shot score (no pair model, no :meth:`fit_pairs`), the
        map from the raw score to the probability is refit on the pairs
        (Platt scaling, ``score_map_``) and the threshold is the probability
        of best F1 on them; rankings do not change. With a pair model or a
        pair scorer (probabilities already), only the threshold is chosen.

        Parameters
        ----------
        pairs : table
            ``listing_col``, ``product_col`` and ``label_col`` (1 match, 0 not),
            and the listing title in ``text_col`` unless ``listings`` is given.
        listings : table, optional
            Listing ids and titles.

        Returns
        -------
        ThresholdChoice
            Threshold (probability scale), F1, precision and recall there; it
            is also stored in ``calibration_`` and used by later :meth:`match`
            calls.

        Raises
        ------
        ValueError
            No pairs, labels other than 0/1, no positive pair (or, to refit
            the map, no negative pair), unknown ids.
        """
        table = _tables.read_table(pairs, name="pairs")
        _tables.require_columns(table, [label_col], name="pairs")
        _tables.require_rows(table, name="pairs")
        labels = table.column(label_col).to_numpy(zero_copy_only=False)
        scores = self._raw_pair_scores(table, listings, listing_col, product_col, id_col, text_col)
        if self.pair_scorer_ is not None or self._pair_model() is not None:
            self.calibration_ = best_f1_threshold(scores, labels)
        else:
            self.score_map_, self.calibration_ = calibrate_matcher(scores, labels)
        return self.calibration_
