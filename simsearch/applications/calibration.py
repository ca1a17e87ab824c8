"""Turn raw pair scores into calibrated match probabilities, and measure how well they are.

A :class:`Calibrator` maps any monotone score (a cross-encoder logit, a
stacker's decision value, a cosine) to a probability in [0, 1], fit on
labelled validation pairs:

- ``"isotonic"``: the non-decreasing step function of best squared error
  (pool-adjacent-violators, scikit-learn's ``IsotonicRegression``), read
  between its knots by linear interpolation;
- ``"platt"``: a logistic curve ``1 / (1 + exp(-(a * s + b)))`` (Platt 1999);
- ``"auto"`` (default): isotonic when both classes have at least
  :data:`ISOTONIC_MIN_CLASS` pairs, else Platt; isotonic overfits a few
  dozen positives.

Its state is a handful of floats kept as JSON (:meth:`Calibrator.to_json`,
:meth:`Calibrator.save`), never pickled, so matching and dedup can store one
beside any model. :func:`reliability_table` and
:func:`expected_calibration_error` measure the result (Guo et al., "On
Calibration of Modern Neural Networks", ICML 2017: equal-width bins, ECE the
count-weighted mean gap between mean prediction and observed share).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from simsearch.errors import NotFittedError

__all__ = [
    "CALIBRATION_METHODS",
    "ISOTONIC_MIN_CLASS",
    "Calibrator",
    "ReliabilityBin",
    "expected_calibration_error",
    "format_reliability",
    "reliability_table",
]

CALIBRATION_METHODS = ("auto", "isotonic", "platt")
#: Fewest pairs of each class for ``method="auto"`` to choose isotonic.
ISOTONIC_MIN_CLASS = 50


def _scores_and_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if len(s) != len(y):
        raise ValueError(f"scores has {len(s)} values, labels has {len(y)}")
    if len(s) == 0:
        raise ValueError("no scores to calibrate on")
    if not np.isfinite(s.sum()):
        raise ValueError("scores contains NaN or infinity")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(np.int64)


class Calibrator:
    """A monotone map from scores to match probabilities, fit on labelled pairs.

    Parameters
    ----------
    method : {"auto", "isotonic", "platt"}, default "auto"

    Attributes
    ----------
    method_ : str
        The method used ("isotonic" or "platt").
    knots_ : ndarray of shape (n_knots,), float64
        Isotonic: the scores at the step function's corners.
    values_ : ndarray of shape (n_knots,), float64
        Isotonic: the probability at each knot.
    coef_, intercept_ : float
        Platt: ``p = 1 / (1 + exp(-(coef_ * s + intercept_)))``.

    Examples
    --------
    >>> import numpy as np
    >>> from simsearch.applications.calibration import Calibrator
    >>> cal = Calibrator("platt").fit([-2.0, -1.0, 0.5, 2.0], [0, 0, 1, 1])
    >>> bool(0 <= cal.predict([0.0])[0] <= 1)
    True
    """

    def __init__(self, method: str = "auto") -> None:
        self.method = method

    def fit(self, scores: Any, labels: Any) -> Calibrator:
        """Fit on ``scores`` (array-like of shape (n,), float) and ``labels`` (0/1).

        Raises
        ------
        ValueError
            Mismatched lengths, no scores, non-finite scores, labels other
            than 0/1, a single class, or an unknown method.
        """
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {self.method!r}")
        s, y = _scores_and_labels(scores, labels)
        counts = np.bincount(y, minlength=2)
        if counts.min() == 0:
            raise ValueError("calibration needs both matches and non-matches among the labelled pairs")
        method = self.method
        if method == "auto":
            method = "isotonic" if counts.min() >= ISOTONIC_MIN_CLASS else "platt"
        self.method_ = method
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
            self.knots_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.values_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        else:
            from sklearn.linear_model import LogisticRegression

            # Large C: a plain maximum-likelihood fit of the two parameters.
            lr = LogisticRegression(C=1e4, max_iter=1000).fit(s[:, None], y)
            self.coef_ = float(lr.coef_[0, 0])
            self.intercept_ = float(lr.intercept_[0])
        return self

    def predict(self, scores: Any) -> np.ndarray:
        """Probabilities of ``scores`` (array-like of shape (n,)), float64 in [0, 1].

        Raises
        ------
        NotFittedError
            Before :meth:`fit`.
        """
        if not hasattr(self, "method_"):
            raise NotFittedError("this Calibrator is not fitted yet: call fit(scores, labels) first")
        s = np.asarray(scores, dtype=np.float64).ravel()
        if self.method_ == "isotonic":
            return np.interp(s, self.knots_, self.values_)
        z = np.clip(self.coef_ * s + self.intercept_, -500.0, 500.0)
        return 1.0 / (1.0 + np.exp(-z))

    # -- JSON --------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The fitted state as a JSON-ready dict."""
        if not hasattr(self, "method_"):
            raise NotFittedError("this Calibrator is not fitted yet: call fit(scores, labels) first")
        if self.method_ == "isotonic":
            return {"method": "isotonic", "knots": self.knots_.tolist(), "values": self.values_.tolist()}
        return {"method": "platt", "coef": self.coef_, "intercept": self.intercept_}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibrator:
        """A fitted calibrator from :meth:`to_json`'s dict.

        Raises
        ------
        ValueError
            An unknown method or malformed fields.
        """
        method = data.get("method") if isinstance(data, dict) else None
        cal = cls(method if method in ("isotonic", "platt") else "auto")
        if method == "isotonic":
            knots = np.asarray(data.get("knots", []), dtype=np.float64)
            values = np.asarray(data.get("values", []), dtype=np.float64)
            if knots.ndim != 1 or knots.shape != values.shape or len(knots) == 0 or np.any(np.diff(knots) < 0):
                raise ValueError("isotonic calibration needs matching, sorted, non-empty knots and values")
            cal.knots_, cal.values_ = knots, values
        elif method == "platt":
            cal.coef_, cal.intercept_ = float(data["coef"]), float(data["intercept"])
        else:
            raise ValueError(f"unknown calibration method {method!r}")
        cal.method_ = method
        return cal

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically."""
        from simsearch._storage import write_json

        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibrator:
        """Read a calibrator written by :meth:`save`."""
        from simsearch._storage import read_json

        return cls.from_json(read_json(path, "a calibrator file"))


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: predictions in ``[low, high)``."""

    low: float
    high: float
    mean_predicted: float
    observed: float
    count: int


def reliability_table(probabilities: Any, labels: Any, n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins of predicted probability, each with its observed match share.

    Parameters
    ----------
    probabilities : array-like of shape (n,), float in [0, 1]
    labels : array-like of shape (n,), 0/1
    n_bins : int, default 10

    Returns
    -------
    list of ReliabilityBin
        The non-empty bins, lowest first; the last bin includes 1.0.
    """
    p, y = _scores_and_labels(probabilities, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1).clip(0)
    out = []
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            out.append(ReliabilityBin(b / n_bins, (b + 1) / n_bins, float(p[mask].mean()), float(y[mask].mean()), int(mask.sum())))
    return out


def expected_calibration_error(probabilities: Any, labels: Any, n_bins: int = 10) -> float:
    """Count-weighted mean of ``|mean predicted - observed share|`` over :func:`reliability_table`'s bins."""
    bins = reliability_table(probabilities, labels, n_bins)
    n = sum(b.count for b in bins)
    return float(sum(b.count * abs(b.mean_predicted - b.observed) for b in bins) / n)


def format_reliability(bins: list[ReliabilityBin]) -> str:
    """The reliability diagram as text: one line per bin with a bar of the observed share."""
    lines = ["  bin          mean pred  observed  count"]
    for b in bins:
        bar = "#" * int(round(b.observed * 20))
        lines.append(f"  [{b.low:.1f}, {b.high:.1f})  {b.mean_predicted:9.3f}  {b.observed:8.3f}  {b.count:5d}  {bar}")
    return "\n".join(lines)
