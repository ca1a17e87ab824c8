"""Calibrator, reliability table and ECE against scikit-learn and hand-computed references."""

from __future__ import annotations

import numpy as np
import pytest

from simsearch.applications.calibration import (
    ISOTONIC_MIN_CLASS,
    Calibrator,
    expected_calibration_error,
    format_reliability,
    reliability_table,
)
from simsearch.errors import NotFittedError


@pytest.fixture(scope="module")
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000)
    labels = (rng.random(2000) < 1 / (1 + np.exp(-2.0 * scores + 0.5))).astype(int)
    return scores, labels


def test_isotonic_matches_sklearn(scored):
    from sklearn.isotonic import IsotonicRegression

    scores, labels = scored
    cal = Calibrator("isotonic").fit(scores, labels)
    ref = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    grid = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(cal.predict(grid), ref.predict(grid), atol=1e-12)
    assert np.all(np.diff(cal.predict(grid)) >= 0)


def test_platt_matches_logistic_regression(scored):
    from sklearn.linear_model import LogisticRegression

    scores, labels = scored
    cal = Calibrator("platt").fit(scores, labels)
    ref = LogisticRegression(C=1e4, max_iter=1000).fit(scores[:, None], labels)
    grid = np.linspace(-4, 4, 41)
    np.testing.assert_allclose(cal.predict(grid), ref.predict_proba(grid[:, None])[:, 1], atol=1e-9)
    # The generating curve had slope 2 and intercept -0.5.
    assert cal.coef_ == pytest.approx(2.0, abs=0.3)
    assert cal.intercept_ == pytest.approx(-0.5, abs=0.2)


def test_auto_picks_platt_for_few_positives(scored):
    scores, labels = scored
    assert Calibrator().fit(scores, labels).method_ == "isotonic"
    few = np.r_[np.ones(ISOTONIC_MIN_CLASS - 1), np.zeros(200)].astype(int)
    s = np.r_[np.linspace(0.5, 2, ISOTONIC_MIN_CLASS - 1), np.linspace(-2, 1, 200)]
    assert Calibrator().fit(s, few).method_ == "platt"


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_json_round_trip(scored, method, tmp_path):
    scores, labels = scored
    cal = Calibrator(method).fit(scores, labels)
    cal.save(tmp_path / "cal.json")
    back = Calibrator.load(tmp_path / "cal.json")
    np.testing.assert_array_equal(back.predict(scores), cal.predict(scores))
    assert back.method_ == method


def test_reliability_and_ece_by_hand():
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 1.0])
    y = np.array([0, 0, 1, 1, 1, 1])
    bins = reliability_table(p, y, n_bins=10)
    assert [(b.count, round(b.observed, 3)) for b in bins] == [(1, 0.0), (2, 0.5), (3, 1.0)]
    # |0.05 - 0| * 1 + |0.15 - 0.5| * 2 + |(0.95 + 0.95 + 1) / 3 - 1| * 3, over 6.
    expected = (0.05 + 0.35 * 2 + abs(2.9 / 3 - 1) * 3) / 6
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(expected)
    assert "mean pred" in format_reliability(bins)


def test_calibrated_scores_have_small_ece(scored):
    scores, labels = scored
    probs = Calibrator("platt").fit(scores, labels).predict(scores)
    assert expected_calibration_error(probs, labels) < 0.05
    raw = 1 / (1 + np.exp(-5 * scores))  # overconfident
    assert expected_calibration_error(raw, labels) > expected_calibration_error(probs, labels)


def test_bad_input():
    with pytest.raises(ValueError, match="both matches and non-matches"):
        Calibrator().fit([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels"):
        Calibrator().fit([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        Calibrator().fit([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="method"):
        Calibrator("beta").fit([0.1, 0.2], [0, 1])
    with pytest.raises(ValueError, match="2 values"):
        Calibrator().fit([0.1, 0.2], [0, 1, 1])
    with pytest.raises(NotFittedError):
        Calibrator().predict([0.5])
    with pytest.raises(ValueError, match="unknown calibration"):
        Calibrator.from_json({"method": "beta"})
