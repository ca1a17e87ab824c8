"""simsearch: similarity search for product catalogs.

The public API is re-exported here. Heavy parts (encoders, which import
onnxruntime and tokenizers) load lazily on first attribute access, so
``import simsearch`` stays fast for index-only users.
"""

from __future__ import annotations

import importlib
from typing import Any

from simsearch.errors import (
    CorruptFileError,
    DimensionError,
    FormatVersionError,
    NotFittedError,
    ShardUnavailableError,
    SimsearchError,
    UnknownIdError,
)
from simsearch.index import Index

__version__ = "0.1.0"

# name -> module that defines it; imported on first access.
_LAZY: dict[str, str] = {
    "TextEncoder": "simsearch.encoders",
    "ImageEncoder": "simsearch.encoders",
    "distill": "simsearch.encoders",
    "finetune": "simsearch.encoders",
    "EmbeddingCache": "simsearch.cache",
    "RedisEmbeddingCache": "simsearch.cache",
    "KNNClassifier": "simsearch.applications",
    "CatalogMatcher": "simsearch.applications",
    "find_duplicates": "simsearch.applications",
    "PairScoring": "simsearch.applications",
    "ShardedIndex": "simsearch.sharding",
    "Service": "simsearch.serving",
    "Deduplicator": "simsearch.applications",
    "evaluate": "simsearch.evaluation",
}

__all__ = [
    "Index",
    "__version__",
    "SimsearchError",
    "DimensionError",
    "NotFittedError",
    "CorruptFileError",
    "FormatVersionError",
    "UnknownIdError",
    "ShardUnavailableError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
