"""Embedding and search as a service.

:class:`Service` is the in-process, thread-safe front (adaptive batching,
deadlines, embedding cache, durable writes) that any server can call;
:mod:`simsearch.serving.app` wraps it in an HTTP (ASGI) app, which
``simsearch serve`` runs on uvicorn. The app needs the ``serve`` extra:
``pip install 'simsearch[serve]'``.
"""

from __future__ import annotations

from simsearch.serving.batcher import AdaptiveBatcher, BatchStats, DeadlineExceeded, QueueFull
from simsearch.serving.service import (
    MAX_K,
    DuplicateIdError,
    EmbedResult,
    Hit,
    SearchResult,
    Service,
    WriteResult,
)

__all__ = [
    "MAX_K",
    "AdaptiveBatcher",
    "BatchStats",
    "DeadlineExceeded",
    "DuplicateIdError",
    "EmbedResult",
    "Hit",
    "QueueFull",
    "SearchResult",
    "Service",
    "WriteResult",
]
