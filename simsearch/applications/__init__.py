"""The jobs users come for: kNN classification, catalog matching, duplicate detection.

Layers inside (each imports only those above it):

- ``lexical``, ``metrics``, ``grouping``: title evidence, quality measures,
  grouping of scored pairs;
- ``_items``: items as vectors and lexical features, and their pair scores;
- ``candidates``: the candidate join every dedup path shares;
- ``dedup`` (``find_duplicates``, ``choose_threshold``), ``ray_jobs`` (the
  Ray engine), ``incremental`` (``Deduplicator``), ``review`` (the review
  loop), ``classifier``, ``pair_scorer`` and ``matcher`` (``CatalogMatcher``).
"""

from typing import Any

from simsearch.applications.classifier import KNNClassifier
from simsearch.applications.dedup import Duplicates, choose_threshold, find_duplicates
from simsearch.applications.incremental import Deduplicator
from simsearch.applications.lexical import PairScoring, extract_facts
from simsearch.applications.matcher import CatalogMatcher
from simsearch.applications.metrics import (
    ThresholdChoice,
    best_f1_threshold,
    mean_group_f1,
    pairwise_precision_recall,
    recall_at_k,
)
from simsearch.applications.pair_scorer import FeatureConfig, PairScorer

__all__ = [
    "CatalogMatcher",
    "Deduplicator",
    "Duplicates",
    "FeatureConfig",
    "KNNClassifier",
    "PairScorer",
    "PairScoring",
    "ThresholdChoice",
    "best_f1_threshold",
    "choose_threshold",
    "extract_facts",
    "find_duplicates",
    "mean_group_f1",
    "pairwise_precision_recall",
    "recall_at_k",
]

# Deprecated names of ThresholdChoice: the one result type of every threshold choice.
_DEPRECATED = {"Calibration": "CatalogMatcher.calibrate", "ReviewCalibration": "Deduplicator.calibrate"}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        import warnings

        warnings.warn(
            f"simsearch.applications.{name} is deprecated; {_DEPRECATED[name]} returns a "
            "simsearch.applications.ThresholdChoice",
            DeprecationWarning,
            stacklevel=2,
        )
        return ThresholdChoice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
