"""Embedding and search as a service.

:class:`Service` is the in-process, thread-safe front (adaptive batching,
deadlines, embedding cache) that any server can call; its :class:`Catalog`
holds the items and makes writes durable;
:mod:`simsearch.serving.app` wraps it in an HTTP (ASGI) app, which
``simsearch serve`` runs on uvicorn. The app needs the ``serve`` extra:
``pip install 'simsearch[serve]'``.
"""

from __future__ import annotations

from simsearch.errors import DeadlineExceeded, DuplicateIdError, QueueFull
from simsearch.serving.batcher import AdaptiveBatcher, BatchStats
from simsearch.serving.catalog import Catalog
from simsearch.serving.results import EmbedResult, Hit, SearchResult, WriteResult
from simsearch.serving.service import MAX_K, Service

__all__ = [
    "MAX_K",
    "AdaptiveBatcher",
    "BatchStats",
    "Catalog",
    "DeadlineExceeded",
    "DuplicateIdError",
    "EmbedResult",
    "Hit",
    "QueueFull",
    "SearchResult",
    "Service",
    "WriteResult",
]
