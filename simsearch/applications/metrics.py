"""Quality measures of the applications, and the threshold each is chosen by.

- :func:`mean_group_f1` and :func:`pairwise_precision_recall` score a
  grouping (dedup) against true groups;
- :func:`best_f1_threshold` picks the pair-score threshold of best F1 on
  labelled pairs (matching, the review loop);
- :func:`recall_at_k` scores search results against true neighbours;
- :class:`ThresholdChoice` is what every threshold choice returns: from
  labelled items (:func:`~simsearch.applications.choose_threshold`), labelled
  pairs (:meth:`~simsearch.CatalogMatcher.calibrate`) or reviewed pairs
  (:meth:`~simsearch.Deduplicator.calibrate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from collections.abc import Iterable
from typing import Any

import numpy as np

from simsearch._validation import NO_ID, check_k

__all__ = [
    "ThresholdChoice",
    "best_f1_threshold",
    "expected_calibration_error",
    "mean_group_f1",
    "pairwise_precision_recall",
    "recall_at_k",
    "match_recall_at_k",
]


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen on labelled data, and its quality there.

    Attributes
    ----------
    threshold : float
        Pairs scoring at least this are duplicates (or matches).
    f1, precision, recall : float
        Pairwise, at ``threshold``: over labelled pairs (weighted estimates
        over the candidate pairs for reviewed pairs), or over all pairs of
        items sharing a predicted / true group for labelled items.
    n_labelled : int
        Labelled pairs (or items) the choice was made on.
    n_positive : int
        How many of the labelled pairs are matches (0 for labelled items).
    method : str
        ``"max_f1"`` (best pairwise F1), ``"target_precision"`` (the lowest
        threshold reaching ``target_precision``) or ``"max_mean_f1"`` (best
        mean per-item group F1, :func:`~simsearch.applications.choose_threshold`).
    mean_f1 : float or None
        Mean per-item F1 of the grouping at ``threshold`` (labelled items only).
    previous_threshold : float or None
        The threshold in use before (a recalibration from reviewed pairs).
    target_precision : float or None
    precision_interval, recall_interval : tuple of float, or None
        Bootstrap confidence intervals at level ``confidence`` (reviewed pairs).
    confidence : float or None
    duplicates : Duplicates or None
        From :func:`~simsearch.applications.choose_threshold`: the duplicates
        at ``threshold``, grouped from the same candidate join (so a caller
        that wants both the threshold and its result joins once). Not part of
        :meth:`to_dict`, equality or the repr.
    """

    threshold: float
    f1: float
    precision: float
    recall: float
    n_labelled: int = 0
    n_positive: int = 0
    method: str = "max_f1"
    mean_f1: float | None = None
    previous_threshold: float | None = None
    target_precision: float | None = None
    precision_interval: tuple[float, float] | None = None
    recall_interval: tuple[float, float] | None = None
    confidence: float | None = None
    duplicates: Any = field(default=None, repr=False, compare=False)

    @property
    def n_pairs(self) -> int:
        """Deprecated: the labelled pairs, now :attr:`n_labelled`."""
        import warnings

        warnings.warn("ThresholdChoice.n_pairs is deprecated; use n_labelled", DeprecationWarning, stacklevel=2)
        return self.n_labelled

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (``duplicates`` left out)."""
        out = asdict(self)
        del out["duplicates"]
        for name in ("precision_interval", "recall_interval"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ThresholdChoice:
        """Inverse of :meth:`to_dict`; also reads the dicts of the older result types.

        Matchers saved before the types were merged stored ``n_pairs`` for
        :attr:`n_labelled`; dedup states stored every field but ``mean_f1``.
        """
        values = dict(values)
        if "n_pairs" in values:
            values["n_labelled"] = values.pop("n_pairs")
        known = {f.name for f in fields(cls)} - {"duplicates"}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown threshold-choice fields {sorted(unknown)}")
        for name in ("precision_interval", "recall_interval"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def summary(self) -> str:
        """One line for people: the threshold and the estimates (with intervals when known)."""
        def est(value: float, interval: tuple[float, float] | None) -> str:
            return f"{value:.3f}" + ("" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]")

        start = "" if self.previous_threshold is None else f"{self.previous_threshold:.3f} -> "
        level = "" if self.confidence is None else f" ({self.confidence:.0%} intervals)"
        return (
            f"threshold {start}{self.threshold:.3f} ({self.method}, {self.n_labelled} labels, {self.n_positive} "
            f"duplicates): precision {est(self.precision, self.precision_interval)}, recall "
            f"{est(self.recall, self.recall_interval)}{level}, F1 {self.f1:.3f}"
        )


def mean_group_f1(labels: Any, groups: Any) -> float:
    """Mean per-item F1 of predicted groups against true groups.

    For item ``i`` with true group ``T`` and predicted group ``P`` (both holding
    ``i``), ``F1 = 2 |T & P| / (|T| + |P|)``; the result is the mean over items,
    as in the Shopee competition metric.

    Parameters
    ----------
    labels : array-like of shape (n,)
        True group of each item.
    groups : array-like of shape (n,)
        Predicted group of each item (singletons get labels of their own).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If the two differ in shape or are empty.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape:
        raise ValueError(f"labels and groups differ in shape: {labels.shape} and {groups.shape}")
    if len(labels) == 0:
        raise ValueError("no items to score")
    _, t = np.unique(labels, return_inverse=True)
    _, p = np.unique(groups, return_inverse=True)
    both = t.astype(np.int64) * (p.max() + 1) + p
    _, b, inter = np.unique(both, return_inverse=True, return_counts=True)
    true_size = np.bincount(t)[t]
    pred_size = np.bincount(p)[p]
    return float(np.mean(2.0 * inter[b] / (true_size + pred_size)))


def pairwise_precision_recall(labels: Any, groups: Any) -> tuple[float, float]:
    """Precision and recall over all pairs of items sharing a group.

    Parameters
    ----------
    labels : array-like of shape (n,)
        True group of each item.
    groups : array-like of shape (n,)
        Predicted group of each item.

    Returns
    -------
    (precision, recall) : tuple of float
        ``1.0`` where there is nothing to predict or nothing predicted.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)

    def pairs(*keys: np.ndarray) -> int:
        _, counts = np.unique(np.stack(keys, axis=1), axis=0, return_counts=True)
        return int(np.sum(counts * (counts - 1) // 2))

    _, t = np.unique(labels, return_inverse=True)
    _, p = np.unique(groups, return_inverse=True)
    tp, true, pred = pairs(t, p), pairs(t), pairs(p)
    return (tp / pred if pred else 1.0), (tp / true if true else 1.0)


def f1_of(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (0 when both are 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def best_f1_threshold(scores: Any, labels: Any, weights: Any = None) -> ThresholdChoice:
    """The threshold that maximizes pairwise F1, with precision and recall there.

    Every distinct score is tried (a pair is a match when ``score >= threshold``);
    among equal F1 the highest threshold wins, the more cautious choice. The
    returned threshold is halfway between the chosen score and the next lower
    one, so that a slightly different score of the same pair does not flip it.

    Parameters
    ----------
    scores : array-like of shape (n,), float
    labels : array-like of shape (n,), {0, 1} or bool
    weights : array-like of shape (n,), float, optional
        How many pairs each labelled pair stands for (the inverse of its
        chance of being picked, for pairs sampled by stratum); precision,
        recall and F1 are then weighted estimates. Default: 1 each.

    Returns
    -------
    ThresholdChoice
        ``method="max_f1"``, ``n_labelled`` and ``n_positive`` set.

    Raises
    ------
    ValueError
        If the arrays differ in length, are empty, hold NaN, the labels are
        not 0/1 or hold no positive, or a weight is not positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, got {scores.shape} and {labels.shape}")
    if len(scores) == 0:
        raise ValueError("no labelled pairs to calibrate on")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        labels = labels.astype(bool)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != scores.shape:
        raise ValueError(f"weights has shape {weights.shape}, scores {scores.shape}")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError("weights must be finite and positive")
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ValueError("labels hold no positive pair: a threshold cannot be chosen")
    order = np.argsort(-scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[order]
    tp = np.cumsum(w * y)
    predicted = np.cumsum(w)
    # Only the last position of each run of equal scores is a valid cut.
    last = np.r_[s[1:] != s[:-1], True]
    precision = tp / predicted
    recall = tp / tp[-1]
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    f1 = np.where(last, f1, -1.0)
    best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[0])  # highest threshold among ties
    below = s[best + 1] if best + 1 < len(s) else s[best] - 1e-3
    return ThresholdChoice(
        threshold=float((s[best] + below) / 2),
        f1=float(f1[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
        n_labelled=len(s),
        n_positive=n_pos,
    )


def recall_at_k(found: Any, truth: Any, k: int) -> float:
    """Share of the true ``k`` nearest neighbours that a search found in its first ``k``.

    Parameters
    ----------
    found : array-like of shape (n, k_found), uint64
        Ids returned per query, best first; rows shorter than ``k`` are padded
        with :data:`~simsearch._validation.NO_ID`.
    truth : array-like of shape (n, k_true), uint64
        True neighbour ids per query, best first, padded with ``NO_ID`` where
        fewer exist.
    k : int
        Only the first ``k`` columns of each are compared.

    Returns
    -------
    float
        Found true ids over true ids, counted over all queries (``NO_ID``
        padding counts on neither side); 1.0 when there is no true id.

    Raises
    ------
    ValueError
        If the two have different numbers of rows, are not 2-D, or ``k`` is
        not a positive integer.

    Examples
    --------
    >>> import numpy as np
    >>> from simsearch._validation import NO_ID
    >>> found = np.array([[1, 2], [3, NO_ID]], dtype=np.uint64)
    >>> truth = np.array([[2, 9], [3, NO_ID]], dtype=np.uint64)
    >>> recall_at_k(found, truth, 2)
    0.6666666666666666
    """
    k = check_k(k)
    found = np.asarray(found, dtype=np.uint64)
    truth = np.asarray(truth, dtype=np.uint64)
    if found.ndim != 2 or truth.ndim != 2:
        raise ValueError(f"found and truth must be 2-D (n, k), got shapes {found.shape} and {truth.shape}")
    if len(found) != len(truth):
        raise ValueError(f"found has {len(found)} rows, truth has {len(truth)}")
    f, t = found[:, :k], truth[:, :k]
    valid = t != NO_ID
    total = int(valid.sum())
    if total == 0:
        return 1.0
    hits = 0
    step = max(1, (1 << 22) // (t.shape[1] * max(f.shape[1], 1)))  # bounds the (rows, k, k) comparison
    for start in range(0, len(t), step):
        tt, ff = t[start : start + step], f[start : start + step]
        # A true id counts once if it appears anywhere in the same row of found.
        hits += int(((tt[:, :, None] == ff[:, None, :]).any(axis=2) & (tt != NO_ID)).sum())
    return hits / total


def match_recall_at_k(true_pairs: set[tuple[Any, Any]], found: Iterable[tuple[Any, Any, int]], ks: Iterable[int]) -> dict[str, float]:
    """Share of listings whose true product is among their first ``k`` matches, for each ``k``.

    Parameters
    ----------
    true_pairs : set of (listing_id, product_id)
        The right answers; every listing in them counts, found or not.
    found : iterable of (listing_id, product_id, rank)
        The matches, rank 1 the best.
    ks : iterable of int
        The cut-offs.

    Returns
    -------
    dict
        ``"recall@K"`` -> float in [0, 1].
    """
    listings = {a for a, _ in true_pairs}
    best: dict[Any, int] = {}
    for lid, pid, rank in found:
        if (lid, pid) in true_pairs:
            best[lid] = min(rank, best.get(lid, rank))
    return {f"recall@{r}": sum(1 for lid in listings if best.get(lid, 10**9) <= r) / len(listings) for r in ks}


def expected_calibration_error(probabilities: Any, labels: Any, bins: int = 10) -> float:
    """Expected calibration error of probabilities against binary outcomes.

    The mean, weighted by bin size, of ``|mean probability - fraction of
    positives|`` over ``bins`` equal-width bins of ``[0, 1]``.

    Parameters
    ----------
    probabilities : array-like of shape (m,), float in [0, 1]
    labels : array-like of shape (m,), bool or 0/1
    bins : int, default 10

    Returns
    -------
    float
        0 for no input.

    Examples
    --------
    >>> expected_calibration_error([0.9, 0.9, 0.1, 0.1], [1, 1, 0, 0])
    0.1
    """
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(np.float64).ravel()
    if len(p) != len(y):
        raise ValueError(f"probabilities has {len(p)} entries, labels has {len(y)}")
    if len(p) == 0:
        return 0.0
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(which, p, bins) - np.bincount(which, y, bins))
    return round(float(gap.sum() / len(p)), 12)
