"""Service: a thread-safe front over an encoder and an index, for any server to call."""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simsearch._validation import NO_ID, as_float_matrix, check_positive_int
from simsearch.serving import store
from simsearch.serving.batcher import AdaptiveBatcher, BatchStats, DeadlineExceeded, QueueFull

#: Largest ``k`` a search may ask for.
MAX_K = 1000
_ON_MISS = ("wait", "async")


class DuplicateIdError(ValueError):
    """An added id is already in the index."""


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


class Service:
    """Embed, search, match, add and remove through one thread-safe object.

    Texts from concurrent calls are gathered by an
    :class:`~simsearch.serving.batcher.AdaptiveBatcher` into shared encoder
    calls. Calls may carry a timeout; work past it is dropped and the call
    raises :class:`~simsearch.serving.DeadlineExceeded`. When the queue is
    full, calls raise :class:`~simsearch.serving.QueueFull` at once.

    Writes to a service opened from a folder (:meth:`open`) are durable
    through a write-ahead log: each add or remove is fsync-ed to
    ``wal.log`` before it returns, replayed by the next :meth:`open`, and
    folded into the folder's files by :meth:`save` (automatically every
    ``snapshot_every`` writes, and by :meth:`close`).

    Parameters
    ----------
    encoder : TextEncoder
        Encodes texts; anything with ``encode(texts, progress=...)``, ``dim``,
        ``name`` and ``fingerprint``.
    index : Index
        Holds unit vectors under the inner product (or cosine); its keys are
        the service's internal row numbers.
    ids, titles : sequence, optional
        Row ``i`` is the id and title of index key ``i`` (an index folder's
        ``items.parquet``). By default the index's own keys are the ids and
        items have no title.
    max_batch_size : int, default=32
        Most texts gathered into one call of the encoder.
    model_batch_size : int, default=8
        Texts per model run inside that call. The encoder sorts a call's
        texts by length and pads each model run to its longest text, so
        small runs over sorted texts waste little on padding; one run of 32
        product titles pads to the longest of 32 and, on this model, costs
        more per title than runs of 8.
    max_wait_ms : float, default=5.0
        Longest a batch waits for company (adaptive: a lone request does not wait).
    max_queue : int, default=1024
        Most texts waiting for the encoder before calls raise ``QueueFull``.
    cache : EmbeddingCache or None, default=None
        Vectors are looked up here first; computed vectors are stored.
    on_miss : {"wait", "async"}, default="wait"
        For :meth:`embed` with a cache: ``"wait"`` computes misses before
        answering; ``"async"`` answers at once with the cached vectors, flags
        the misses (NaN rows) and computes them in the background for later
        calls. Searches always wait for their vectors.
    timeout : float or None, default=None
        Default timeout of a call in seconds; ``None``: no deadline.
    match_threshold : float, default=0.9
        Least cosine for :meth:`match` to call a hit a match (embedding
        cosine only; :class:`~simsearch.CatalogMatcher` adds lexical evidence
        but needs the catalog's TF-IDF, which a served index does not keep).
    path : path-like or None, default=None
        Index folder for snapshots and the write-ahead log; set by :meth:`open`.
    snapshot_every : int, default=1000
        Logged writes after which :meth:`save` runs by itself.
    on_batch : callable or None, default=None
        Called with each encoder batch's :class:`~simsearch.serving.batcher.BatchStats` (for metrics).
    index_version : int, default=0
        Version to start counting writes from (an index folder's ``meta.json`` keeps it).

    Attributes
    ----------
    index_version : int
        Count of writes applied to the folder since it was built; every
        answer carries it.
    model_name, model_fingerprint : str
        The encoder's.

    Examples
    --------
    >>> from simsearch import Index, Service, TextEncoder  # doctest: +SKIP
    >>> service = Service(TextEncoder(), Index(384, metric="ip"))  # doctest: +SKIP
    >>> service.add([1, 2], ["apple iphone 8 64gb", "sony kdl-40 lcd tv"])  # doctest: +SKIP
    WriteResult(count=2, index_version=1)
    >>> service.search(["iphone 8"], k=1).hits[0][0].id  # doctest: +SKIP
    1
    """

    def __init__(
        self,
        encoder: Any,
        index: Any,
        ids: Sequence[Any] | None = None,
        titles: Sequence[str | None] | None = None,
        *,
        max_batch_size: int = 32,
        model_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        cache: Any = None,
        on_miss: str = "wait",
        timeout: float | None = None,
        match_threshold: float = 0.9,
        path: str | os.PathLike[str] | None = None,
        snapshot_every: int = 1000,
        on_batch: Callable[[BatchStats], None] | None = None,
        index_version: int = 0,
    ) -> None:
        if on_miss not in _ON_MISS:
            raise ValueError(f"on_miss must be 'wait' or 'async', got {on_miss!r}")
        if on_miss == "async" and cache is None:
            raise ValueError("on_miss='async' needs a cache to answer from")
        if int(encoder.dim) != int(index.dim):
            raise ValueError(f"the encoder gives {encoder.dim}-d vectors, the index holds {index.dim}-d ones")
        self.timeout = _check_timeout(timeout)
        self.snapshot_every = check_positive_int(snapshot_every, "snapshot_every")
        self.model_batch_size = check_positive_int(model_batch_size, "model_batch_size")
        self.encoder = encoder
        self.index = index
        self.cache = cache
        self.on_miss = on_miss
        self.match_threshold = float(match_threshold)
        self.path = Path(path) if path is not None else None
        self.model_name = str(encoder.name)
        self.model_fingerprint = str(encoder.fingerprint)
        self.index_version = int(index_version)
        self._namespace = f"{self.model_fingerprint}:unit"  # as TextEncoder.encode names its cache entries
        keys = index.ids() if len(index) else np.empty(0, dtype=np.uint64)
        if ids is None:
            self._ids: dict[int, Any] = {int(k): int(k) for k in keys}
            self._titles: dict[int, str | None] = {}
        else:
            ids = list(ids)
            titles = list(titles) if titles is not None else [None] * len(ids)
            if len(titles) != len(ids):
                raise ValueError(f"got {len(ids)} ids and {len(titles)} titles")
            self._ids = dict(enumerate(ids))
            self._titles = dict(enumerate(titles))
        self._key_of: dict[Any, int] = {self._ids[int(k)]: int(k) for k in keys}
        self._next_key = max(self._ids, default=-1) + 1
        self._id_kind = _id_kind(self._ids.values())
        self._write_lock = threading.Lock()  # one writer at a time: log order = apply order
        self._stats_lock = threading.Lock()
        self._stats = {"deadline_exceeded": 0, "queue_full": 0, "async_dropped": 0}
        self._pending: set[bytes] = set()  # async misses being computed
        self._wal: store.WriteAheadLog | None = None
        self._meta: dict[str, Any] = {}
        self._replaying = False
        self._closed = False
        self.batcher = AdaptiveBatcher(
            self._encode_batch, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, on_batch=on_batch
        )

    # ------------------------------------------------------------------ folders
    @classmethod
    def open(cls, path: str | os.PathLike[str], encoder: Any = None, **kwargs: Any) -> Service:
        """Serve an index folder written by ``simsearch index build``, replaying its write-ahead log.

        Parameters
        ----------
        path : path-like
            The folder (``index.ssi``, ``items.parquet``, ``meta.json``).
        encoder : TextEncoder or None, default=None
            ``None`` builds the encoder the folder was built with (its
            ``model_path`` and ``precision``).
        **kwargs
            Passed to :class:`Service`.

        Raises
        ------
        FileNotFoundError
            If the folder does not exist.
        ValueError
            If it is not an index folder, or the encoder's fingerprint differs
            from the one the index was built with.
        """
        index, ids, titles, meta = store.read_folder(path)
        if encoder is None:
            from simsearch.encoders import TextEncoder

            encoder = TextEncoder(model=meta.get("model_path"), precision=meta.get("precision", "int8"))
        built_with = meta.get("fingerprint")
        if built_with and built_with != encoder.fingerprint:
            raise ValueError(
                f"the index in {os.fspath(path)!r} was built with model {meta.get('model')!r} (fingerprint {built_with[:12]}), "
                f"the encoder is {encoder.name!r} (fingerprint {encoder.fingerprint[:12]}): serve it with the same model"
            )
        service = cls(encoder, index, ids, titles, path=path, index_version=int(meta.get("version", 0)), **kwargs)
        service._meta = meta
        service._replaying = True
        try:
            service._wal = store.WriteAheadLog(Path(path) / store.WAL_FILE)
            for record, vectors in service._wal.replay():
                service._apply(record, vectors)
        except BaseException:
            # Not close(): a half-replayed state must not be saved over the log.
            service._closed = True
            service.batcher.close()
            if service._wal is not None:
                service._wal.close()
            raise
        service._replaying = False
        return service

    def save(self) -> None:
        """Fold the logged writes into the folder's files and empty the log.

        Raises
        ------
        ValueError
            If the service has no folder (it was not made by :meth:`open`).
        """
        if self.path is None:
            raise ValueError("this service has no index folder to save to; use Service.open(path)")
        with self._write_lock:
            self._save_locked()

    def _save_locked(self) -> None:
        if self.path is None or self._wal is None:
            raise ValueError("this service has no index folder to save to; use Service.open(path)")
        n = self._next_key
        ids = [self._ids.get(k) for k in range(n)]
        titles = [self._titles.get(k) for k in range(n)]
        meta = dict(self._meta)
        meta.update(format=store.INDEX_DIR_FORMAT, count=len(self.index), version=self.index_version)
        store.write_snapshot(self.path, self.index, ids, titles, meta)
        self._wal.truncate()

    def close(self) -> None:
        """Finish queued work, save logged writes into the folder, and close the log."""
        if self._closed:
            return
        self._closed = True
        self.batcher.close()
        if self._wal is not None:
            with self._write_lock:
                if self._wal.records:
                    self._save_locked()
                self._wal.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    @property
    def dim(self) -> int:
        """Length of the vectors."""
        return int(self.index.dim)

    def __len__(self) -> int:
        return len(self.index)

    def stats(self) -> dict[str, float]:
        """Counters for monitoring: queue depth, batches, cache hits and misses, dropped and refused calls."""
        with self._stats_lock:
            out: dict[str, float] = dict(self._stats)
        out.update(
            queue_depth=self.batcher.depth,
            batches=self.batcher.batches,
            items=len(self.index),
            index_version=self.index_version,
            async_pending=len(self._pending),
        )
        if self.cache is not None:
            out.update(cache_hits=self.cache.hits, cache_misses=self.cache.misses, cache_hit_rate=self.cache.hit_rate)
        return out

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(texts, batch_size=self.model_batch_size, progress=False), dtype=np.float32)

    def submit_embed(self, texts: Sequence[str], timeout: float | None = None, on_miss: str | None = None) -> Future:
        """Start embedding ``texts``; returns a future of an :class:`EmbedResult`.

        The non-blocking form of :meth:`embed`, for servers with an event
        loop (``asyncio.wrap_future``). Input errors and a full queue raise
        here, at once; a missed deadline is raised by the future.

        Raises
        ------
        TypeError, ValueError
            As :meth:`embed`.
        QueueFull
            If the queue cannot take the texts to encode.
        """
        from simsearch.encoders.text import _check_texts

        items = _check_texts(texts)
        on_miss = self.on_miss if on_miss is None else on_miss
        if on_miss not in _ON_MISS:
            raise ValueError(f"on_miss must be 'wait' or 'async', got {on_miss!r}")
        deadline = self._deadline(timeout)
        n = len(items)
        if n == 0:
            return _done(EmbedResult(np.empty((0, self.dim), dtype=np.float32), np.zeros(0, dtype=bool)))
        if self.cache is None:
            return _chain(self._submit(items, deadline), lambda v: EmbedResult(v, np.zeros(n, dtype=bool)))
        keys = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in items]
        found = self.cache.get_many(self._namespace, keys)
        out = np.empty((n, self.dim), dtype=np.float32)
        first_row: dict[bytes, int] = {}  # each distinct missing text is encoded once
        for row, vec in enumerate(found):
            if vec is None:
                first_row.setdefault(keys[row], row)
            else:
                out[row] = vec
        missing = np.array([v is None for v in found], dtype=bool)
        if not first_row:
            return _done(EmbedResult(out, missing))
        miss_keys = list(first_row)
        miss_texts = [items[first_row[k]] for k in miss_keys]
        if on_miss == "async":
            self._compute_later(miss_keys, miss_texts)
            out[missing] = np.nan
            return _done(EmbedResult(out, missing))

        def fill(vectors: np.ndarray) -> EmbedResult:
            self.cache.put_many(self._namespace, miss_keys, vectors)
            fresh = dict(zip(miss_keys, vectors))
            for row in np.flatnonzero(missing):
                out[row] = fresh[keys[row]]
            return EmbedResult(out, np.zeros(n, dtype=bool))

        return _chain(self._submit(miss_texts, deadline), fill)

    def _submit(self, texts: list[str], deadline: float | None) -> Future:
        try:
            return self.batcher.submit(texts, deadline)
        except QueueFull:
            self._count("queue_full")
            raise

    def _compute_later(self, keys: list[bytes], texts: list[str]) -> None:
        with self._stats_lock:
            todo = [(k, t) for k, t in zip(keys, texts) if k not in self._pending]
            self._pending.update(k for k, _ in todo)
        if not todo:
            return
        todo_keys = [k for k, _ in todo]
        try:
            future = self.batcher.submit([t for _, t in todo])
        except QueueFull:
            # Background work yields to callers: a full queue drops it, the next lookup retries.
            with self._stats_lock:
                self._pending.difference_update(todo_keys)
                self._stats["async_dropped"] += 1
            return

        def store_vectors(f: Future) -> None:
            try:
                if f.exception() is None:
                    self.cache.put_many(self._namespace, todo_keys, f.result())
            finally:
                with self._stats_lock:
                    self._pending.difference_update(todo_keys)

        future.add_done_callback(store_vectors)

    def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> EmbedResult:
        """Unit vectors of ``texts``, computed in shared batches.

        Parameters
        ----------
        texts : sequence of str
            Non-empty texts.
        timeout : float or None, default=None
            Seconds before the call gives up; ``None`` uses the service's ``timeout``.

        Returns
        -------
        EmbedResult
            ``vectors`` of shape (n, dim), float32, and the ``missing`` mask.

        Raises
        ------
        TypeError
            If ``texts`` is a str or holds a non-str.
        ValueError
            If a text is empty, or there are more texts than the queue holds.
        QueueFull
            If the queue is full (retry after ``err.retry_after`` seconds).
        DeadlineExceeded
            If the timeout passed before the vectors were ready.
        """
        return self._wait(self.submit_embed(texts, timeout), timeout)

    def _wait(self, future: Future, timeout: float | None) -> Any:
        seconds = self.timeout if timeout is None else _check_timeout(timeout)
        try:
            # The batcher enforces the deadline; the small grace lets it answer first.
            return future.result(None if seconds is None else seconds + 0.05)
        except FutureTimeout:
            future.cancel()
            self._count("deadline_exceeded")
            raise DeadlineExceeded(f"no result within the timeout of {seconds * 1000:g} ms; the request was dropped") from None
        except DeadlineExceeded:
            self._count("deadline_exceeded")
            raise

    async def wait_async(self, future: Future, timeout: float | None = None) -> Any:
        """Await a future of :meth:`submit_embed` in an asyncio event loop.

        The same deadline handling as the blocking calls: past ``timeout``
        (default: the service's) the work is dropped and
        :class:`~simsearch.serving.DeadlineExceeded` is raised.
        """
        import asyncio

        seconds = self.timeout if timeout is None else _check_timeout(timeout)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), None if seconds is None else seconds + 0.05)
        except asyncio.TimeoutError:
            future.cancel()
            self._count("deadline_exceeded")
            raise DeadlineExceeded(f"no result within the timeout of {seconds * 1000:g} ms; the request was dropped") from None
        except DeadlineExceeded:
            self._count("deadline_exceeded")
            raise

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = self.timeout if timeout is None else _check_timeout(timeout)
        return None if seconds is None else time.monotonic() + seconds

    def search(self, queries: Any, k: int = 10, *, timeout: float | None = None) -> SearchResult:
        """The ``k`` nearest items of each query.

        Parameters
        ----------
        queries : sequence of str, or array-like of shape (n, dim), float
            Query texts (encoded in shared batches) or query vectors
            (scaled to unit length; a 1-D array of length ``dim`` is one query).
        k : int, default=10
            Results per query, 1 to ``MAX_K`` (1000).
        timeout : float or None, default=None
            Seconds before the call gives up.

        Returns
        -------
        SearchResult

        Raises
        ------
        ValueError
            Empty text, wrong dimension, NaN, zero vector, k out of range.
        TypeError
            Queries that are neither texts nor float vectors.
        QueueFull, DeadlineExceeded
            As :meth:`embed`.
        """
        k = check_k(k)
        if _is_texts(queries):
            vectors = self._wait(self.submit_embed(queries, timeout, on_miss="wait"), timeout).vectors
        else:
            vectors = self.query_vectors(queries)
        return self.search_vectors(vectors, k)

    def query_vectors(self, queries: Any) -> np.ndarray:
        """Check query vectors and scale them to unit length; float32 (n, dim).

        Raises
        ------
        ValueError
            Wrong dimension, NaN or inf, or a zero vector.
        TypeError
            Non-float values.
        """
        q = np.array(as_float_matrix(queries, "queries", self.dim), dtype=np.float32, copy=True)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if q.shape[0] and not norms.all():
            raise ValueError(f"queries[{int(np.argmin(norms[:, 0]))}] is a zero vector; it has no direction to search")
        return q / norms

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> SearchResult:
        """Search with unit query vectors of shape (n, dim), float32 (see :meth:`query_vectors`)."""
        k = check_k(k)
        version = self.index_version
        keys, scores = self.index.search(vectors, k=k)
        hits = []
        for row_keys, row_scores in zip(keys, scores):
            row = []
            for key, score in zip(row_keys, row_scores):
                if key == NO_ID:
                    break
                key = int(key)
                row.append(Hit(self._ids[key], self._titles.get(key), float(score)))
            hits.append(row)
        return SearchResult(hits, version)

    def match(self, listings: Sequence[str], k: int = 5, *, threshold: float | None = None, timeout: float | None = None) -> SearchResult:
        """The best ``k`` catalog items for each listing title, each flagged ``is_match``.

        Parameters
        ----------
        listings : sequence of str
            Listing titles.
        k : int, default=5
            Candidates per listing.
        threshold : float or None, default=None
            Least cosine of a match; ``None`` uses ``match_threshold``.
        timeout : float or None, default=None
            Seconds before the call gives up.

        Returns
        -------
        SearchResult
            Hits with ``is_match`` set.

        Raises
        ------
        TypeError, ValueError, QueueFull, DeadlineExceeded
            As :meth:`search`.
        """
        texts = _text_list(listings, "listings")
        vectors = self._wait(self.submit_embed(texts, timeout, on_miss="wait"), timeout).vectors if texts else np.empty((0, self.dim), np.float32)
        return self.match_vectors(vectors, k, threshold)

    def match_vectors(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None) -> SearchResult:
        """:meth:`match` for listing vectors of shape (n, dim), float32, unit length."""
        threshold = self.match_threshold if threshold is None else float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        result = self.search_vectors(vectors, k)
        for row in result.hits:
            for hit in row:
                hit.is_match = hit.score >= threshold
        return result

    # ------------------------------------------------------------------ writes
    def add(self, ids: Sequence[Any], titles: Sequence[str], vectors: Any = None) -> WriteResult:
        """Add items; durable once this returns (for a service opened from a folder).

        Parameters
        ----------
        ids : sequence of int or str
            New ids, of the type the catalog uses, not already present.
        titles : sequence of str
            One non-empty title per id.
        vectors : array-like of shape (n, dim), float, optional
            The items' vectors; by default the titles are encoded.

        Returns
        -------
        WriteResult

        Raises
        ------
        DuplicateIdError
            If an id is already in the index or repeats (a ``ValueError``).
        TypeError, ValueError
            Ids of the wrong type, empty titles, wrong vector dimension.
        """
        from simsearch.encoders.text import _check_texts

        ids = list(ids)
        titles = _check_texts(titles)
        if len(titles) != len(ids):
            raise ValueError(f"got {len(ids)} ids and {len(titles)} titles; give one title per id")
        for i, item_id in enumerate(ids):
            _check_id(item_id, self._id_kind, f"ids[{i}]")
        if len(set(ids)) != len(ids):
            raise DuplicateIdError("ids repeats an id")
        if vectors is None:
            vecs = self._encode_batch(titles) if ids else np.empty((0, self.dim), np.float32)
        else:
            vecs = self.query_vectors(vectors)
            if len(vecs) != len(ids):
                raise ValueError(f"got {len(vecs)} vectors for {len(ids)} ids")
        if not ids:
            return WriteResult(0, self.index_version)
        with self._write_lock:
            self._check_open()
            present = [i for i in ids if i in self._key_of]
            if present:
                raise DuplicateIdError(f"id {present[0]!r} is already in the index")
            keys = list(range(self._next_key, self._next_key + len(ids)))
            record = {"op": "add", "keys": keys, "ids": ids, "titles": titles, "version": self.index_version + 1}
            self._log(record, vecs)
            self._apply(record, vecs)
            return WriteResult(len(ids), self.index_version)

    def remove(self, ids: Sequence[Any]) -> WriteResult:
        """Remove items by id; durable once this returns (for a service opened from a folder).

        Raises
        ------
        KeyError
            If an id is not in the index (nothing is removed then).
        """
        ids = list(ids)
        if not ids:
            return WriteResult(0, self.index_version)
        with self._write_lock:
            self._check_open()
            unknown = [i for i in ids if i not in self._key_of]
            if unknown:
                raise KeyError(f"unknown id {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
            keys = sorted({self._key_of[i] for i in ids})
            record = {"op": "remove", "keys": keys, "version": self.index_version + 1}
            self._log(record, None)
            self._apply(record, None)
            return WriteResult(len(keys), self.index_version)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the service is closed")

    def _log(self, record: dict[str, Any], vectors: np.ndarray | None) -> None:
        if self._wal is not None:
            self._wal.append(record, vectors)

    def _apply(self, record: dict[str, Any], vectors: np.ndarray | None) -> None:
        """Apply a logged write; idempotent, so replaying it over a newer snapshot is harmless."""
        keys = np.asarray(record["keys"], dtype=np.uint64)
        if record["op"] == "add":
            for key, item_id, title in zip(record["keys"], record["ids"], record["titles"]):
                # Names first: a search that finds the key must find its id.
                self._ids[key], self._titles[key] = item_id, title
                self._key_of[item_id] = key
            new = ~self.index.contains(keys)
            if new.any():
                self.index.add(vectors[new], ids=keys[new])
            self._next_key = max(self._next_key, int(keys.max()) + 1)
        elif record["op"] == "remove":
            present = self.index.contains(keys)
            if present.any():
                self.index.remove(keys[present])
            for key in record["keys"]:
                self._key_of.pop(self._ids.get(key), None)
        else:
            raise ValueError(f"unknown write-ahead log record {record['op']!r}")
        # The record names the version it makes; max() keeps a replay over a
        # snapshot that already counted it from counting it twice.
        self.index_version = max(self.index_version, int(record.get("version", self.index_version + 1)))
        if self._wal is not None and self._wal.records >= self.snapshot_every and not self._replaying:
            self._save_locked()



def check_k(k: Any) -> int:
    """``k`` as an int in 1..MAX_K, or a ValueError/TypeError naming it."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _is_texts(queries: Any) -> bool:
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of str or an array of vectors, got a single str; wrap it in a list: [query]")
    return isinstance(queries, (list, tuple)) and len(queries) > 0 and isinstance(queries[0], str)


def _text_list(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of str, got a single str; wrap it in a list")
    return list(texts)


def _id_kind(ids: Any) -> str | None:
    for item_id in ids:
        return "str" if isinstance(item_id, str) else "int"
    return None


def _check_id(item_id: Any, kind: str | None, name: str) -> None:
    if kind == "str" or (kind is None and isinstance(item_id, str)):
        if not isinstance(item_id, str) or not item_id:
            raise TypeError(f"{name} must be a non-empty str (the catalog's ids are strings), got {item_id!r}")
        return
    if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
        raise TypeError(f"{name} must be an int (the catalog's ids are integers), got {item_id!r}")
    if not -(2**63) <= int(item_id) < 2**63:
        raise ValueError(f"{name} = {item_id} does not fit in a signed 64-bit integer")


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _chain(inner: Future, then: Callable[[Any], Any]) -> Future:
    """A future of ``then(inner.result())``; cancelling it cancels ``inner``."""
    outer: Future = Future()

    def relay(f: Future) -> None:
        if f.cancelled():
            outer.cancel()
            return
        err = f.exception()
        if err is not None:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(err)
            return
        try:
            value = then(f.result())
        except BaseException as e:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(e)
            return
        if outer.set_running_or_notify_cancel():
            outer.set_result(value)

    inner.add_done_callback(relay)
    outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
    return outer
