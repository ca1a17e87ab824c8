"""Pair scores of the dedup as probabilities: a logistic map of the raw pair score.

The raw score of :class:`~simsearch.applications.PairScoring` (weighted
cosines plus the code and measure rules, about ``[-1.2, 1.2]``) orders pairs
well but means nothing on its own. :class:`PairCalibration` maps it to the
probability that the two titles are one product,
``p = 1 / (1 + exp(-(slope * raw + intercept)))`` (Platt scaling). The map
is monotone, so thresholds, groups and rankings carry over unchanged; only
the scale is new.

The default coefficients ship as JSON (``simsearch/data/dedup_calibration.json``,
no pickle), fitted by ``benchmarks/dedup_calibration.py`` on the kNN
candidate pairs of two development sets: a whole-cluster sample of PriceRunner
(seed 1, disjoint from the benchmark's evaluation sample) and the Shopee
``dev`` split. :meth:`PairCalibration.fit` refits them from labelled pairs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PairCalibration", "default_calibration"]

_DEFAULT_FILE = Path(__file__).resolve().parents[1] / "data" / "dedup_calibration.json"
# Probabilities this close to 0 or 1 are clipped before the inverse map.
_EPS = 1e-6


@dataclass(frozen=True)
class PairCalibration:
    """``p = sigmoid(slope * raw + intercept)``, from raw pair scores to probabilities.

    Parameters
    ----------
    slope : float
        Must be positive (the map keeps the order of scores).
    intercept : float
    """

    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and self.slope > 0 and math.isfinite(self.intercept)):
            raise ValueError(f"slope must be finite and > 0 and intercept finite, got {self.slope}, {self.intercept}")

    def apply(self, raw: Any) -> np.ndarray:
        """Probabilities of raw scores.

        Parameters
        ----------
        raw : array-like of any shape, float

        Returns
        -------
        ndarray of the same shape, float32, in [0, 1]
        """
        z = self.slope * np.asarray(raw, dtype=np.float64) + self.intercept
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def raw(self, probability: float) -> float:
        """The raw score whose probability is ``probability`` (the inverse of :meth:`apply`)."""
        p = min(max(float(probability), _EPS), 1.0 - _EPS)
        return (math.log(p / (1.0 - p)) - self.intercept) / self.slope

    @classmethod
    def fit(cls, raw: Any, labels: Any) -> PairCalibration:
        """Fit the map on labelled pairs (logistic regression on the raw score).

        Parameters
        ----------
        raw : array-like of shape (m,), float
            Raw pair scores.
        labels : array-like of shape (m,), bool or 0/1
            Whether each pair is a true duplicate.

        Raises
        ------
        ValueError
            Fewer than two pairs, only one class, or a map that reverses the
            order of scores.
        """
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(raw, dtype=np.float64).reshape(-1, 1)
        y = np.asarray(labels).astype(bool)
        if len(x) != len(y) or len(y) < 2 or y.all() or not y.any():
            raise ValueError("calibration needs labelled pairs of both classes, one label per score")
        model = LogisticRegression(C=1e4).fit(x, y)
        return cls(float(model.coef_[0, 0]), float(model.intercept_[0]))

    def to_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PairCalibration:
        return cls(float(values["slope"]), float(values["intercept"]))


def default_calibration() -> PairCalibration:
    """The shipped calibration of the default :class:`~simsearch.applications.PairScoring` (see the module docstring)."""
    with open(_DEFAULT_FILE, encoding="utf-8") as f:
        return PairCalibration.from_dict(json.load(f))
