"""Embedding caches: encode each text once per model.

Entries are keyed by (model, key): ``model`` is the encoder's fingerprint (plus
whether vectors are normalised), ``key`` a hash of the text. A changed model
has a new fingerprint, so it can never read another model's vectors: the cache
is invalidated by construction, with nothing to flush.

:class:`EmbeddingCache` keeps the entries in one SQLite file in WAL mode, safe
for several threads and processes; :class:`RedisEmbeddingCache` keeps them in
Redis, to share them between the replicas of a service. Both count hits and
misses.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simsearch._storage import cache_dir
from simsearch.errors import CacheUnavailableError, CorruptFileError

_log = logging.getLogger(__name__)
_ON_ERROR = ("miss", "raise")

# SQLite caps the number of "?" in one statement (32766 since 3.32, 999 before).
_SQL_BATCH = 900


class _Counters:
    """Thread-safe hit and miss counters shared by the cache classes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def _count(self, hits: int, misses: int) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses

    @property
    def hits(self) -> int:
        """Number of keys found by :meth:`get_many` since creation or :meth:`reset_stats`."""
        return self._hits

    @property
    def misses(self) -> int:
        """Number of keys not found by :meth:`get_many`."""
        return self._misses

    @property
    def hit_rate(self) -> float:
        """``hits / (hits + misses)``; 0.0 before any lookup."""
        total = self._hits + self._misses
        return self._hits / total if total else 0.0

    def reset_stats(self) -> None:
        """Set the hit and miss counters back to zero."""
        with self._lock:
            self._hits = 0
            self._misses = 0


def _check_put(keys: Sequence[bytes], vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
    if len(keys) != vectors.shape[0]:
        raise ValueError(f"got {len(keys)} keys for {vectors.shape[0]} vectors")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise TypeError(f"vectors must be floating point, got {vectors.dtype}")
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _decode(blob: Any, dim: int | None) -> np.ndarray | None:
    """The float32 vector in ``blob``, or None (a miss) for an entry that cannot be one.

    A damaged or foreign entry (not bytes, a length that is no multiple of 4,
    another ``dim`` than asked for, NaN or inf) is treated as absent, so the
    caller recomputes it and ``put_many`` replaces it.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) == 0 or len(blob) % 4:
        return None
    if dim is not None and len(blob) != 4 * dim:
        return None
    # A copy: frombuffer would alias the driver's bytes, which are read-only.
    vector = np.frombuffer(blob, dtype=np.float32).copy()
    if not np.isfinite(vector).all():
        return None
    return vector


_SCHEMA = [("model", "TEXT"), ("key", "BLOB"), ("vector", "BLOB")]


class EmbeddingCache(_Counters):
    """Embedding cache in a SQLite file (WAL mode), shared by threads and processes.

    Parameters
    ----------
    path : str or os.PathLike or None, default=None
        The SQLite file; created if absent. ``None``:
        ``<cache dir>/embeddings.sqlite``, where the cache dir is
        ``$SIMSEARCH_CACHE`` or the user cache directory. ``":memory:"`` keeps
        the entries in this process only.
    timeout : float, default=30.0
        Seconds to wait for another process's write lock before raising
        :class:`~simsearch.errors.CacheUnavailableError`.

    Raises
    ------
    CorruptFileError
        If ``path`` is not an SQLite database, is damaged, or holds an
        ``embeddings`` table of another layout.

    Attributes
    ----------
    path : str
        The database file.
    hits, misses : int
        Lookups answered and not answered since creation.
    hit_rate : float
        ``hits / (hits + misses)``.

    Examples
    --------
    >>> import numpy as np
    >>> from simsearch import EmbeddingCache
    >>> cache = EmbeddingCache(":memory:")
    >>> cache.put_many("model-a", [b"k1"], np.ones((1, 4), dtype=np.float32))
    >>> [v is None for v in cache.get_many("model-a", [b"k1", b"k2"])]
    [False, True]
    >>> cache.hit_rate
    0.5
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> None:
        super().__init__()
        if path is None:
            path = cache_dir() / "embeddings.sqlite"
        if str(path) != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            path = str(Path(path).expanduser())
        self.path = str(path)
        # One connection guarded by a lock: sqlite3 connections must not be
        # used by two threads at once, and lookups are short.
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        try:
            with self._sql():
                if self.path != ":memory:":
                    self._db.execute("PRAGMA journal_mode=WAL")
                    # In WAL mode NORMAL loses at most the last commits on power
                    # loss and never corrupts the file: fine for a cache.
                    self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings ("
                    " model TEXT NOT NULL, key BLOB NOT NULL, vector BLOB NOT NULL,"
                    " PRIMARY KEY (model, key)) WITHOUT ROWID"
                )
                columns = [(row[1], row[2].upper()) for row in self._db.execute("PRAGMA table_info(embeddings)")]
            if columns != _SCHEMA:
                raise CorruptFileError(
                    f"{self.path!r} holds an 'embeddings' table with columns {columns}, not a simsearch embedding cache"
                )
        except BaseException:
            self._db.close()
            raise

    def _sql(self) -> Any:
        """The connection's lock, translating SQLite's errors into the library's."""
        return _SqlGuard(self)

    def __repr__(self) -> str:
        return f"EmbeddingCache(path={self.path!r}, hits={self.hits}, misses={self.misses})"

    def get_many(self, model: str, keys: Sequence[bytes], dim: int | None = None) -> list[np.ndarray | None]:
        """Look up vectors.

        Parameters
        ----------
        model : str
            Namespace, normally an encoder fingerprint.
        keys : sequence of bytes
            Content hashes.
        dim : int, optional
            The vectors' dimension; an entry of another size is a miss.

        Returns
        -------
        list of (ndarray of shape (dim,), float32) or None
            One entry per key, ``None`` where absent.
        """
        found: dict[bytes, bytes] = {}
        unique = list(dict.fromkeys(keys))
        with self._sql():
            for start in range(0, len(unique), _SQL_BATCH):
                part = unique[start : start + _SQL_BATCH]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, vector FROM embeddings WHERE model = ? AND key IN ({marks})", (model, *part)
                )
                found.update(rows)
        result = [_decode(found[k], dim) if k in found else None for k in keys]
        hits = sum(v is not None for v in result)
        self._count(hits, len(result) - hits)
        return result

    def put_many(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store vectors (an existing entry is replaced).

        Parameters
        ----------
        model : str
            Namespace, normally an encoder fingerprint.
        keys : sequence of bytes
            Content hashes, one per row.
        vectors : ndarray of shape (n, dim), floating
            Stored as float32.
        """
        vectors = _check_put(keys, vectors)
        rows = [(model, k, v.tobytes()) for k, v in zip(keys, vectors)]
        with self._sql():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._sql():
            return int(self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def clear(self, model: str | None = None) -> None:
        """Delete every entry, or only those of ``model``."""
        with self._sql():
            if model is None:
                self._db.execute("DELETE FROM embeddings")
            else:
                self._db.execute("DELETE FROM embeddings WHERE model = ?", (model,))

    def close(self) -> None:
        """Close the database connection."""
        with self._db_lock:
            self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SqlGuard:
    """Hold an :class:`EmbeddingCache`'s connection lock; SQLite errors leave as the library's errors."""

    def __init__(self, cache: EmbeddingCache) -> None:
        self._cache = cache

    def __enter__(self) -> None:
        self._cache._db_lock.acquire()

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        self._cache._db_lock.release()
        path = self._cache.path
        if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
            raise CacheUnavailableError(f"the embedding cache {path!r} stayed locked by another writer: {err}") from err
        if isinstance(err, (sqlite3.DatabaseError, sqlite3.InterfaceError)):
            raise CorruptFileError(f"the embedding cache {path!r} is not a readable SQLite database: {err}") from err
        if isinstance(err, UnicodeDecodeError):  # a damaged page turned a schema or model name into non-UTF-8 bytes
            raise CorruptFileError(f"the embedding cache {path!r} is damaged: a text field is not UTF-8 ({err})") from err


class RedisEmbeddingCache(_Counters):
    """Embedding cache in Redis, shared by the replicas of a service.

    Each entry is one Redis string ``<prefix><model>:<key hex>`` holding the
    float32 bytes of the vector.

    Parameters
    ----------
    url : str, default="redis://127.0.0.1:6379/0"
        Redis URL, as ``redis.Redis.from_url`` takes it.
    prefix : str, default="simsearch:emb:"
        Prefix of every key, to share a database with other data.
    ttl : int or None, default=None
        Expiry of new entries in seconds; ``None`` keeps them (let Redis's
        ``maxmemory-policy`` evict).
    on_error : {"miss", "raise"}, default="miss"
        What a lookup or store does when Redis cannot be reached or answers
        with an error: ``"miss"`` treats every key as absent (the caller
        computes the vectors; a store is skipped) and logs a warning at most
        once a minute, so a cache outage never stops the service; ``"raise"``
        raises :class:`~simsearch.errors.CacheUnavailableError`.
    timeout : float, default=2.0
        Seconds to wait for Redis to connect or answer, so an unreachable
        server is an error (or a miss), never a hang.

    Attributes
    ----------
    errors : int
        Operations that failed since creation.

    Raises
    ------
    ImportError
        If the ``redis`` package is missing.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "simsearch:emb:",
        ttl: int | None = None,
        on_error: str = "miss",
        timeout: float = 2.0,
    ) -> None:
        super().__init__()
        try:
            import redis
        except ImportError as err:
            raise ImportError("RedisEmbeddingCache needs redis-py; install it with: pip install 'simsearch[redis]'") from err
        if ttl is not None and (not isinstance(ttl, int) or ttl < 1):
            raise ValueError(f"ttl must be a positive int or None, got {ttl!r}")
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.url = url
        self.prefix = prefix
        self.ttl = ttl
        self.on_error = on_error
        self.errors = 0
        self._last_warning = 0.0
        self._redis_error = redis.exceptions.RedisError
        self._client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)

    def _failed(self, what: str, err: Exception) -> None:
        """Count a failed operation; raise it (``on_error="raise"``) or log it at most once a minute."""
        with self._lock:
            self.errors += 1
            now = time.monotonic()
            warn = now - self._last_warning > 60.0
            if warn:
                self._last_warning = now
        message = f"the Redis embedding cache at {self.url} failed to {what}: {err}"
        if self.on_error == "raise":
            raise CacheUnavailableError(message) from err
        if warn:
            _log.warning("%s; treating it as a cache miss", message)

    def __repr__(self) -> str:
        return f"RedisEmbeddingCache(url={self.url!r}, hits={self.hits}, misses={self.misses})"

    def _name(self, model: str, key: bytes) -> str:
        return f"{self.prefix}{model}:{key.hex()}"

    def get_many(self, model: str, keys: Sequence[bytes], dim: int | None = None) -> list[np.ndarray | None]:
        """Look up vectors; see :meth:`EmbeddingCache.get_many`."""
        if not keys:
            return []
        try:
            blobs = self._client.mget([self._name(model, k) for k in keys])
        except (self._redis_error, OSError) as err:
            self._failed("look up vectors", err)
            blobs = [None] * len(keys)
        result = [None if b is None else _decode(b, dim) for b in blobs]
        hits = sum(v is not None for v in result)
        self._count(hits, len(result) - hits)
        return result

    def put_many(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store vectors; see :meth:`EmbeddingCache.put_many`."""
        vectors = _check_put(keys, vectors)
        pipe = self._client.pipeline(transaction=False)
        for k, v in zip(keys, vectors):
            pipe.set(self._name(model, k), v.tobytes(), ex=self.ttl)
        try:
            pipe.execute()
        except (self._redis_error, OSError) as err:
            self._failed("store vectors", err)

    def clear(self, model: str | None = None) -> None:
        """Delete every entry under the prefix, or only those of ``model``."""
        literal = self.prefix if model is None else f"{self.prefix}{model}:"
        # Escape glob characters so that only this prefix matches.
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in literal) + "*"
        batch = []
        for name in self._client.scan_iter(match=pattern, count=1000):
            batch.append(name)
            if len(batch) >= 1000:
                self._client.delete(*batch)
                batch = []
        if batch:
            self._client.delete(*batch)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> RedisEmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
