"""The review loop: pick pairs for a person to label, then recalibrate the threshold.

Labels are expensive, so the loop asks only about pairs whose answer can move
the decision, and still keeps the estimate honest:

- **Selection** (:func:`sample_review_pairs`). The candidate pairs are cut into
  equal-width score strata over their whole range. Labels go to the strata by
  Neyman allocation, ``n_h ~ N_h * sigma_h``, where ``N_h`` is the stratum's
  size and ``sigma_h = sqrt(p_h (1 - p_h))`` with ``p_h`` a prior chance of a
  match that rises from 0 to 1 across the current threshold: strata near the
  threshold, where a label is least predictable, get most of them; every
  stratum gets at least two, so the far ends are seen too. Each labelled pair
  carries the weight ``N_h / n_h``, the number of candidate pairs it stands for.
- **Calibration** (:func:`calibrate`). Weighted precision, recall and F1 at
  every cut give the threshold (maximum F1, or the lowest threshold whose
  precision reaches a target) through
  :func:`~simsearch.applications.best_f1_threshold`. The confidence intervals
  of precision and recall at that threshold come from a bootstrap that
  resamples the labels within each stratum, as they were drawn.

Recall here is relative to the candidate pairs the dedup keeps (each item's
``k`` nearest neighbours scoring above a floor), the pairs a threshold can act
on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simsearch import _tables
from simsearch._validation import check_positive_int
from simsearch.applications.metrics import ThresholdChoice, best_f1_threshold, f1_of

#: Columns a labels file must have; ``weight`` and ``stratum`` are read when present.
LABEL_COLUMNS = ("id_a", "id_b", "label")


def sample_review_pairs(
    scores: np.ndarray, threshold: float, n: int, *, n_strata: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose ``n`` pairs to label: most near ``threshold``, some across the range.

    Parameters
    ----------
    scores : ndarray of shape (m,), float
        Scores of every candidate pair.
    threshold : float
        The threshold in use.
    n : int
        Pairs wanted (all ``m`` if fewer).
    n_strata : int, default 16
        Equal-width score strata.
    seed : int, default 0

    Returns
    -------
    picked : ndarray of shape (n,), int64
        Positions in ``scores``, ordered by score (highest first).
    stratum : ndarray of shape (n,), int64
    weight : ndarray of shape (n,), float64
        Candidate pairs each picked pair stands for (``N_h / n_h``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = check_positive_int(n, "n")
    m = len(scores)
    if m == 0:
        raise ValueError("there are no candidate pairs to review")
    lo, hi = float(scores.min()), float(scores.max())
    width = (hi - lo) / n_strata if hi > lo else 1.0
    stratum = np.minimum(((scores - lo) / width).astype(np.int64), n_strata - 1)
    sizes = np.bincount(stratum, minlength=n_strata)
    centers = lo + (np.arange(n_strata) + 0.5) * width
    # Prior chance of a duplicate: a logistic step across the threshold.
    scale = max(hi - lo, 1e-6) / 20
    p = 1.0 / (1.0 + np.exp(-np.clip((centers - threshold) / scale, -50, 50)))
    want = _allocate(sizes, sizes * np.maximum(np.sqrt(p * (1 - p)), 0.02), min(n, m))
    rng = np.random.default_rng(seed)
    picked, strata, weights = [], [], []
    for h in np.flatnonzero(want):
        members = np.flatnonzero(stratum == h)
        chosen = rng.choice(members, size=int(want[h]), replace=False)
        picked.append(chosen)
        strata.append(np.full(len(chosen), h, dtype=np.int64))
        weights.append(np.full(len(chosen), sizes[h] / want[h], dtype=np.float64))
    picked_a, strata_a, weights_a = np.concatenate(picked), np.concatenate(strata), np.concatenate(weights)
    order = np.argsort(-scores[picked_a], kind="stable")
    return picked_a[order], strata_a[order], weights_a[order]


def _allocate(sizes: np.ndarray, merit: np.ndarray, n: int) -> np.ndarray:
    """Split ``n`` labels over strata: at least two each (or all), then by merit."""
    want = np.minimum(sizes, 2)
    if want.sum() == n:
        return want
    if want.sum() > n:  # too few labels for two per stratum: one each where merit is highest
        want = np.zeros_like(sizes)
        filled = np.flatnonzero(sizes > 0)
        want[filled[np.argsort(-merit[filled], kind="stable")[:n]]] = 1
        left = n - int(want.sum())
        if left > 0:  # more labels than non-empty strata: a second one, best merit first
            room = np.flatnonzero(sizes > 1)
            want[room[np.argsort(-merit[room], kind="stable")[:left]]] += 1
        return want
    left = n - int(want.sum())
    while left > 0:
        room = sizes - want
        share = np.where(room > 0, merit, 0.0)
        if share.sum() <= 0:
            share = (room > 0).astype(np.float64)
        extra = np.minimum(np.floor(left * share / share.sum()).astype(np.int64), room)
        if extra.sum() == 0:  # hand out the remainder one at a time, best merit first
            extra = np.zeros_like(sizes)
            extra[int(np.argmax(np.where(room > 0, share, -1.0)))] = 1
        want += extra
        left -= int(extra.sum())
    return want


def read_labels(source: Any, *, name: str = "labels") -> pa.Table:
    """Read and check a labels table: ``id_a``, ``id_b``, ``label`` (+ ``weight``, ``stratum``).

    Rows with an empty label are skipped (pairs not reviewed yet); every other
    label must be 0 or 1 (``"0"``/``"1"``, ``true``/``false`` also read).

    Parameters
    ----------
    source : table or path
        A pyarrow Table, pandas DataFrame, mapping or Parquet/CSV path.
    name : str
        Names the source in errors.

    Returns
    -------
    pyarrow.Table
        The labelled rows: ``id_a``, ``id_b``, ``label`` (int8), ``weight``
        (float64, 1 when absent) and ``stratum`` (int64, 0 when absent).

    Raises
    ------
    MissingColumnError
        A required column is missing (a ``ValueError``).
    ValueError
        A label other than 0/1, a non-positive weight, or no labelled row.
    """
    table = _tables.read_table(source, name=name)
    _tables.require_columns(table, list(LABEL_COLUMNS), name=name)
    raw = table.column("label").cast(pa.string()).to_pylist() if table.num_rows else []
    values = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
    labels, keep = [], []
    for row, value in enumerate(raw):
        text = "" if value is None else str(value).strip().lower()
        if text == "":
            continue
        if text not in values:
            raise ValueError(f"{name} row {row + 1}: label must be 0 or 1, got {value!r}")
        labels.append(values[text])
        keep.append(row)
    if not keep:
        raise ValueError(f"{name} has no labelled row: fill the label column with 0 or 1")
    rows = pa.array(keep, type=pa.int64())
    n = len(keep)
    weight = table.column("weight").take(rows).cast(pa.float64()) if "weight" in table.column_names else pa.array(np.ones(n))
    stratum = table.column("stratum").take(rows).cast(pa.int64()) if "stratum" in table.column_names else pa.array(np.zeros(n, dtype=np.int64))
    w = np.asarray(pc.fill_null(weight, 1.0).to_numpy(zero_copy_only=False), dtype=np.float64)
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"{name}: weight must be a positive number in every labelled row")
    return pa.table(
        {
            "id_a": table.column("id_a").take(rows),
            "id_b": table.column("id_b").take(rows),
            "label": pa.array(labels, type=pa.int8()),
            "weight": pa.array(w),
            "stratum": pc.fill_null(stratum, 0),
        }
    )


def calibrate(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    strata: np.ndarray,
    previous_threshold: float,
    *,
    target_precision: float | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> ThresholdChoice:
    """Recalibrate the threshold on labelled pairs and estimate its quality.

    Parameters
    ----------
    scores : ndarray of shape (n,), float
        Current scores of the labelled pairs.
    labels : ndarray of shape (n,), {0, 1}
    weights : ndarray of shape (n,), float
        Candidate pairs each labelled pair stands for.
    strata : ndarray of shape (n,), int
        Stratum each pair was drawn from (the bootstrap resamples within them).
    previous_threshold : float
    target_precision : float in (0, 1], optional
        Choose the lowest threshold whose estimated precision reaches it
        (the most recall at that precision) instead of maximum F1.
    confidence : float, default 0.95
    n_boot : int, default 2000
        Bootstrap resamples (fewer, at least 200, for very many labels).
    seed : int, default 0

    Returns
    -------
    ThresholdChoice
        ``method`` is ``"max_f1"`` or ``"target_precision"``; the intervals,
        ``confidence`` and ``previous_threshold`` are set.

    Raises
    ------
    ValueError
        No positive label, or no threshold reaches ``target_precision``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    weights = np.asarray(weights, dtype=np.float64)
    best = best_f1_threshold(scores, labels, weights)  # validates the arrays
    threshold, method = best.threshold, "max_f1"
    if target_precision is not None:
        if not 0 < target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {target_precision}")
        threshold, method = _precision_threshold(scores, labels, weights, target_precision), "target_precision"
    precision, recall = _weighted_pr(scores, labels, weights, threshold)
    p_lo, p_hi, r_lo, r_hi = _bootstrap(scores, labels, weights, np.asarray(strata), threshold, confidence, n_boot, seed)
    return ThresholdChoice(
        threshold=float(threshold),
        f1=float(f1_of(precision, recall)),
        precision=float(precision),
        recall=float(recall),
        n_labelled=int(len(scores)),
        n_positive=int(labels.sum()),
        method=method,
        previous_threshold=float(previous_threshold),
        target_precision=None if target_precision is None else float(target_precision),
        precision_interval=(float(p_lo), float(p_hi)),
        recall_interval=(float(r_lo), float(r_hi)),
        confidence=float(confidence),
    )


def _weighted_pr(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, threshold: float) -> tuple[float, float]:
    above = scores >= threshold
    tp = float(np.sum(weights * labels * above))
    predicted = float(np.sum(weights * above))
    positive = float(np.sum(weights * labels))
    return (tp / predicted if predicted else 1.0), (tp / positive if positive else 1.0)


def _precision_threshold(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, target: float) -> float:
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[order]
    precision = np.cumsum(w * y) / np.cumsum(w)
    last = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero(last & (precision >= target))
    if len(ok) == 0:
        raise ValueError(
            f"no threshold reaches precision {target} on these labels (the best is {precision[last].max():.3f})"
        )
    cut = int(ok[-1])  # the lowest such threshold keeps the most recall
    below = s[cut + 1] if cut + 1 < len(s) else s[cut] - 1e-3
    return float((s[cut] + below) / 2)


def _bootstrap(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    strata: np.ndarray,
    threshold: float,
    confidence: float,
    n_boot: int,
    seed: int,
) -> tuple[float, float, float, float]:
    """Percentile intervals of weighted precision and recall, resampling within strata."""
    rng = np.random.default_rng(seed)
    above = scores >= threshold
    # Thousands of resamples of a few hundred labels are cheap; for a very large
    # labelled set fewer resamples already pin the interval down.
    n_boot = int(min(n_boot, max(200, 20_000_000 // max(len(scores), 1))))
    tp = np.zeros(n_boot)
    predicted = np.zeros(n_boot)
    positive = np.zeros(n_boot)
    for h in np.unique(strata):
        rows = np.flatnonzero(strata == h)
        m = len(rows)
        w, y, a = weights[rows], labels[rows], above[rows]
        step = max(1, 4_000_000 // m)  # resamples per chunk: bounded memory
        for start in range(0, n_boot, step):
            b = min(step, n_boot - start)
            draws = rng.integers(0, m, size=(b, m)) + (np.arange(b) * m)[:, None]
            counts = np.bincount(draws.ravel(), minlength=b * m).reshape(b, m)
            tp[start : start + b] += counts @ (w * y * a)
            predicted[start : start + b] += counts @ (w * a)
            positive[start : start + b] += counts @ (w * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 1.0)
        recall = np.where(positive > 0, tp / positive, 1.0)
    tail = (1 - confidence) / 2 * 100
    p_lo, p_hi = np.percentile(precision, [tail, 100 - tail])
    r_lo, r_hi = np.percentile(recall, [tail, 100 - tail])
    return float(p_lo), float(p_hi), float(r_lo), float(r_hi)


def __getattr__(name: str) -> Any:
    # Deprecated name: one threshold-choice type for every application.
    if name == "ReviewCalibration":
        import warnings

        warnings.warn(
            "ReviewCalibration is deprecated; use simsearch.applications.ThresholdChoice",
            DeprecationWarning,
            stacklevel=2,
        )
        return ThresholdChoice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
