"""The jobs users come for: kNN classification, catalog matching, duplicate detection."""

from simsearch.applications.classifier import KNNClassifier
from simsearch.applications.dedup import (
    Duplicates,
    ThresholdChoice,
    choose_threshold,
    find_duplicates,
    mean_group_f1,
    pairwise_precision_recall,
)
from simsearch.applications.incremental import Deduplicator
from simsearch.applications.lexical import Calibration, PairScoring, best_f1_threshold, extract_facts
from simsearch.applications.matcher import CatalogMatcher
from simsearch.applications.review import ReviewCalibration
from simsearch.applications.pair_scorer import FeatureConfig, PairScorer

__all__ = [
    "Calibration",
    "CatalogMatcher",
    "Deduplicator",
    "Duplicates",
    "FeatureConfig",
    "KNNClassifier",
    "PairScorer",
    "PairScoring",
    "ReviewCalibration",
    "ThresholdChoice",
    "best_f1_threshold",
    "choose_threshold",
    "extract_facts",
    "find_duplicates",
    "mean_group_f1",
    "pairwise_precision_recall",
]
