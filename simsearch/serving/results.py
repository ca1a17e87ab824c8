"""What :class:`~simsearch.serving.Service` calls return: plain dataclasses, easy to serialise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EmbedResult:
    """Vectors of the texts of one :meth:`Service.embed` call.

    Attributes
    ----------
    vectors : ndarray of shape (n, dim), float32
        Unit vectors, row ``i`` for text ``i``; rows of missing texts are NaN.
    missing : ndarray of shape (n,), bool
        True where the vector was not in the cache and is being computed in
        the background (only with ``on_miss="async"``).
    """

    vectors: np.ndarray
    missing: np.ndarray


@dataclass
class Hit:
    """One search result: the item's id and title, its score, and for matches whether it passes the threshold."""

    id: Any
    title: str | None
    score: float
    is_match: bool | None = None


@dataclass
class SearchResult:
    """Results of :meth:`Service.search` or :meth:`Service.match`.

    Attributes
    ----------
    hits : list of list of Hit
        One list per query, best first, at most ``k`` long (shorter when the
        index holds fewer items).
    index_version : int
        The version of the index that answered.
    """

    hits: list[list[Hit]]
    index_version: int


@dataclass
class WriteResult:
    """Result of :meth:`Service.add` or :meth:`Service.remove`: how many items, and the index version after the write."""

    count: int
    index_version: int
