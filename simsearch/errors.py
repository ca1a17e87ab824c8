"""Every exception simsearch defines, under one base.

Each error also keeps the builtin base a caller would catch for that kind of
mistake (``ValueError`` for bad input, ``KeyError`` for an unknown id,
``OSError``-like file problems stay ``ValueError`` because the bytes, not the
system call, are wrong), so ``except ValueError`` keeps working while
``except simsearch.SimsearchError`` catches everything the library raises on
purpose.
"""

from __future__ import annotations

__all__ = [
    "SimsearchError",
    "DimensionError",
    "NotFittedError",
    "CorruptFileError",
    "FormatVersionError",
    "SignatureError",
    "MissingColumnError",
    "DuplicateIdError",
    "UnknownIdError",
    "ShardUnavailableError",
    "QueueFull",
    "DeadlineExceeded",
    "ClosedError",
    "LoadError",
    "CacheUnavailableError",
]


class SimsearchError(Exception):
    """Base class of every exception simsearch raises on purpose."""


class DimensionError(SimsearchError, ValueError):
    """An array has the wrong number of columns (or dimensions) for the index or model."""


class NotFittedError(SimsearchError, ValueError, AttributeError):
    """An estimator was used before ``fit`` (or ``load``); the same bases as scikit-learn's."""


class CorruptFileError(SimsearchError, ValueError):
    """A file or folder is truncated, damaged, crafted, or not of the expected kind."""


class FormatVersionError(CorruptFileError):
    """A file or folder was written by a format version this simsearch cannot read."""


class SignatureError(CorruptFileError):
    """A signed file's HMAC does not match the key, or a signature was required and is absent."""


class MissingColumnError(SimsearchError, KeyError, ValueError):
    """A table lacks a column the caller named (or one the operation needs)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(SimsearchError, ValueError):
    """An added id is already in the index."""


class UnknownIdError(SimsearchError, KeyError):
    """An id that is not in the index (or was removed) was asked for."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShardUnavailableError(SimsearchError, RuntimeError):
    """A shard could not be reached (its Ray actor died and was not restarted in time)."""


class QueueFull(SimsearchError):
    """The batcher's queue is full; retry after ``retry_after`` seconds.

    Attributes
    ----------
    retry_after : int
        Seconds after which the queue has likely drained (at least 1), what
        an HTTP server sends as ``Retry-After``.
    """

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(SimsearchError, TimeoutError):
    """A request's deadline passed before its result was ready; the work was dropped."""


class ClosedError(SimsearchError, RuntimeError):
    """A service, batcher or engine was used after ``close()``."""


class LoadError(SimsearchError, RuntimeError):
    """A served model or index folder failed to load (``simsearch serve`` reports why and stops)."""


class CacheUnavailableError(SimsearchError, ConnectionError):
    """An embedding cache's backing store (Redis, a SQLite file) could not be reached or read."""


class MissingFileError(CorruptFileError, FileNotFoundError):
    """A file that a saved folder lists or needs is missing: the folder is damaged or incomplete."""


class ModelMismatchError(SimsearchError, ValueError):
    """An index or cache was built with another model than the encoder given (its fingerprint differs)."""


class IdsExhaustedError(SimsearchError, ValueError):
    """Automatic ids reached the top of their 64-bit range; pass ids explicitly."""
