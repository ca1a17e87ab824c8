"""Service: a thread-safe front over an encoder and an index, for any server to call."""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import numpy as np

from simsearch._validation import NO_ID, as_float_matrix, check_ef, check_positive_int, check_texts, l2_normalize
from simsearch._validation import check_k as _check_k_range
from simsearch.errors import DeadlineExceeded, DuplicateIdError, ModelMismatchError, QueueFull
from simsearch.serving import store
from simsearch.serving.batcher import AdaptiveBatcher, BatchStats
from simsearch.serving.catalog import Catalog
from simsearch.serving.futures import chain, done, wait, wait_async
from simsearch.serving.results import EmbedResult, Hit, SearchResult, WriteResult

__all__ = [
    "MAX_K",
    "DuplicateIdError",
    "EmbedResult",
    "Hit",
    "SearchResult",
    "Service",
    "WriteResult",
    "check_effort",
    "check_k",
]

#: Largest ``k`` a search may ask for.
MAX_K = 1000
_ON_MISS = ("wait", "async")


class Service:
    """Embed, search, match, add and remove through one thread-safe object.

    Texts from concurrent calls are gathered by an
    :class:`~simsearch.serving.batcher.AdaptiveBatcher` into shared encoder
    calls. Calls may carry a timeout. When the queue is full, or the work
    ahead would hold a call past its timeout, the call raises
    :class:`~simsearch.serving.QueueFull` at once; work that falls behind
    after it was queued is shed with ``QueueFull`` too (load shedding: retry
    after ``err.retry_after`` seconds). A timeout shorter than the call's
    own compute raises :class:`~simsearch.serving.DeadlineExceeded` (see
    :mod:`simsearch.serving.batcher` for the policy).

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
    catalog : Catalog
        The items (index keys to ids and titles) and the write path: adds and
        removes, the write-ahead log and snapshots
        (:class:`~simsearch.serving.catalog.Catalog`).

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
        self.catalog = Catalog(index, ids, titles, path=path, version=index_version, snapshot_every=snapshot_every)
        self.model_batch_size = check_positive_int(model_batch_size, "model_batch_size")
        self.encoder = encoder
        self.index = index
        self.cache = cache
        self.on_miss = on_miss
        self.match_threshold = float(match_threshold)
        self.model_name = str(encoder.name)
        self.model_fingerprint = str(encoder.fingerprint)
        self._namespace = f"{self.model_fingerprint}:unit"  # as TextEncoder.encode names its cache entries
        self._stats_lock = threading.Lock()
        # queue_full: refused at admission; shed: refused after queueing (here
        # when the timeout passed; the batcher counts its own).
        self._stats = {"deadline_exceeded": 0, "queue_full": 0, "shed": 0, "async_dropped": 0}
        self._pending: set[bytes] = set()  # async misses being computed
        self._closed = False
        # Batches gather texts of similar length: the encoder pads each model run to its longest text.
        self.batcher = AdaptiveBatcher(
            self._encode_batch, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue, on_batch=on_batch, key=len
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
        CorruptFileError
            If it is not an index folder, or is damaged.
        ModelMismatchError
            (a ``ValueError``) If the encoder's fingerprint differs from the
            one the index was built with.
        """
        index, ids, titles, meta = store.read_folder(path)
        if encoder is None:
            from simsearch.encoders import TextEncoder

            encoder = TextEncoder(model=meta.get("model_path"), precision=meta.get("precision", "int8"))
        built_with = meta.get("fingerprint")
        if built_with and built_with != encoder.fingerprint:
            raise ModelMismatchError(
                f"the index in {os.fspath(path)!r} was built with model {meta.get('model')!r} (fingerprint {built_with[:12]}), "
                f"the encoder is {encoder.name!r} (fingerprint {encoder.fingerprint[:12]}): serve it with the same model"
            )
        service = cls(encoder, index, ids, titles, path=path, index_version=int(meta.get("version", 0)), **kwargs)
        service.catalog.meta = meta
        try:
            service.catalog.open_log()
        except BaseException:
            # The catalog closed itself without saving: a half-replayed state must not be saved over the log.
            service._closed = True
            service.batcher.close()
            raise
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
        self.catalog.save()

    def close(self) -> None:
        """Finish queued work, save logged writes into the folder, and close the log."""
        if self._closed:
            return
        self._closed = True
        self.batcher.close()
        self.catalog.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    @property
    def index_version(self) -> int:
        """Count of writes applied to the folder since it was built; every answer carries it."""
        return self.catalog.version

    @property
    def path(self) -> Path | None:
        """The index folder, or ``None`` for a service not opened from one."""
        return self.catalog.path

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
        out["shed"] += self.batcher.shed
        out.update(
            late=self.batcher.late,
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
        items = check_texts(texts)
        on_miss = self.on_miss if on_miss is None else on_miss
        if on_miss not in _ON_MISS:
            raise ValueError(f"on_miss must be 'wait' or 'async', got {on_miss!r}")
        deadline = self._deadline(timeout)
        n = len(items)
        if n == 0:
            return done(EmbedResult(np.empty((0, self.dim), dtype=np.float32), np.zeros(0, dtype=bool)))
        if self.cache is None:
            return chain(self._submit(items, deadline), lambda v: EmbedResult(v, np.zeros(n, dtype=bool)))
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
            return done(EmbedResult(out, missing))
        miss_keys = list(first_row)
        miss_texts = [items[first_row[k]] for k in miss_keys]
        if on_miss == "async":
            self._compute_later(miss_keys, miss_texts)
            out[missing] = np.nan
            return done(EmbedResult(out, missing))

        def fill(vectors: np.ndarray) -> EmbedResult:
            self.cache.put_many(self._namespace, miss_keys, vectors)
            fresh = dict(zip(miss_keys, vectors))
            for row in np.flatnonzero(missing):
                out[row] = fresh[keys[row]]
            return EmbedResult(out, np.zeros(n, dtype=bool))

        return chain(self._submit(miss_texts, deadline), fill)

    def _submit(self, texts: list[str], deadline: float | None) -> Future:
        try:
            return self.batcher.submit(texts, deadline)
        except QueueFull:
            self._count("queue_full")
            raise
        except DeadlineExceeded:
            self._count("deadline_exceeded")
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
            If the service is overloaded: the queue is full, or the work
            ahead would hold the call past its timeout, or the call was
            still queued when its timeout passed (retry after
            ``err.retry_after`` seconds).
        DeadlineExceeded
            If the timeout is shorter than encoding the texts takes even
            with nothing queued, or the model call did not return within
            another timeout (at least 1 s) of it passing. Texts being
            encoded when the timeout passes are waited for and answered.
        """
        return self._wait(self.submit_embed(texts, timeout), timeout)

    def _wait(self, future: Future, timeout: float | None) -> Any:
        seconds = self.timeout if timeout is None else _check_timeout(timeout)
        return wait(future, seconds, self._give_up_waiting, self._hung)

    async def wait_async(self, future: Future, timeout: float | None = None) -> Any:
        """Await a future of :meth:`submit_embed` in an asyncio event loop.

        The same deadline handling as the blocking calls: work still queued
        when ``timeout`` (default: the service's) passes is shed with
        :class:`~simsearch.serving.QueueFull`; work being computed is
        awaited (its result is answered, a little late); a model call that
        has not returned within another ``timeout`` (at least 1 s) raises
        :class:`~simsearch.serving.DeadlineExceeded`.
        """
        seconds = self.timeout if timeout is None else _check_timeout(timeout)
        return await wait_async(future, seconds, self._give_up_waiting, self._hung)

    def _give_up_waiting(self, future: Future, seconds: float) -> None:
        """The timeout passed: shed the work if it still waits in the queue (raise QueueFull); return if it is being computed."""
        if future.cancel():
            # Still queued at its deadline: the work ahead took longer than
            # planned, the server is behind: load shedding, not a failure.
            self._count("shed")
            raise QueueFull(
                f"overloaded: still queued when the timeout of {seconds * 1000:g} ms passed; the request was shed, retry later",
                self.batcher.retry_after(),
            )

    def _hung(self, seconds: float) -> DeadlineExceeded:
        self._count("deadline_exceeded")
        return DeadlineExceeded(
            f"the model call for this request did not return within {seconds * 1000:g} ms of the timeout passing; the result was dropped"
        )

    def _deadline(self, timeout: float | None) -> float | None:
        seconds = self.timeout if timeout is None else _check_timeout(timeout)
        return None if seconds is None else time.monotonic() + seconds

    def search(self, queries: Any, k: int = 10, *, ef: int | None = None, timeout: float | None = None) -> SearchResult:
        """The ``k`` nearest items of each query.

        Parameters
        ----------
        queries : sequence of str, or array-like of shape (n, dim), float
            Query texts (encoded in shared batches) or query vectors
            (scaled to unit length; a 1-D array of length ``dim`` is one query).
        k : int, default=10
            Results per query, 1 to ``MAX_K`` (1000).
        ef : int or None, default=None
            Search effort: the candidate list size of the graph walk (at
            least ``k`` is used); larger is slower and finds more of the true
            nearest items. ``None`` uses the index's own ``ef`` (saved with
            the index file).
        timeout : float or None, default=None
            Seconds before the call gives up.

        Returns
        -------
        SearchResult

        Raises
        ------
        ValueError
            Empty text, wrong dimension, NaN, zero vector, k or ef out of range.
        TypeError
            Queries that are neither texts nor float vectors; a non-integer k or ef.
        QueueFull, DeadlineExceeded
            As :meth:`embed`.
        """
        # Checked before any text is queued for the encoder: a bad k or ef costs no model call.
        k = check_k(k)
        ef = check_effort(ef)
        if _is_texts(queries):
            vectors = self._wait(self.submit_embed(queries, timeout, on_miss="wait"), timeout).vectors
        else:
            vectors = self.query_vectors(queries)
        return self.search_vectors(vectors, k, ef)

    def query_vectors(self, queries: Any) -> np.ndarray:
        """Check query vectors and scale them to unit length; float32 (n, dim).

        Raises
        ------
        ValueError
            Wrong dimension, NaN or inf, or a zero vector.
        TypeError
            Non-float values.
        """
        return l2_normalize(as_float_matrix(queries, "queries", self.dim), "queries")

    def search_vectors(self, vectors: np.ndarray, k: int = 10, ef: int | None = None) -> SearchResult:
        """Search with unit query vectors of shape (n, dim), float32 (see :meth:`query_vectors`).

        ``ef`` as in :meth:`search` (``None``: the index's own); the index checks it and clamps it to at least ``k``.
        """
        k = check_k(k)
        version = self.index_version
        keys, scores = self.index.search(vectors, k=k, ef=ef)
        hits = []
        for row_keys, row_scores in zip(keys, scores):
            row = []
            for key, score in zip(row_keys, row_scores):
                if key == NO_ID:
                    break
                row.append(self.catalog.hit(int(key), float(score)))
            hits.append(row)
        return SearchResult(hits, version)

    def match(
        self, listings: Sequence[str], k: int = 5, *, threshold: float | None = None, ef: int | None = None, timeout: float | None = None
    ) -> SearchResult:
        """The best ``k`` catalog items for each listing title, each flagged ``is_match``.

        Parameters
        ----------
        listings : sequence of str
            Listing titles.
        k : int, default=5
            Candidates per listing.
        threshold : float or None, default=None
            Least cosine of a match; ``None`` uses ``match_threshold``.
        ef : int or None, default=None
            Search effort, as in :meth:`search` (``None``: the index's own).
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
        k, ef, threshold = check_k(k), check_effort(ef), self._threshold(threshold)
        vectors = self._wait(self.submit_embed(texts, timeout, on_miss="wait"), timeout).vectors if texts else np.empty((0, self.dim), np.float32)
        return self.match_vectors(vectors, k, threshold, ef)

    def match_vectors(self, vectors: np.ndarray, k: int = 5, threshold: float | None = None, ef: int | None = None) -> SearchResult:
        """:meth:`match` for listing vectors of shape (n, dim), float32, unit length."""
        threshold = self._threshold(threshold)
        result = self.search_vectors(vectors, k, ef)
        for row in result.hits:
            for hit in row:
                hit.is_match = hit.score >= threshold
        return result

    def _threshold(self, threshold: float | None) -> float:
        threshold = self.match_threshold if threshold is None else float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        return threshold

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
        ClosedError
            If the service is closed (a ``RuntimeError``).
        """
        titles = check_texts(titles, "titles")
        ids = self.catalog.check_ids(ids)
        if len(titles) != len(ids):
            raise ValueError(f"got {len(ids)} ids and {len(titles)} titles; give one title per id")
        if vectors is None:
            vecs = self._encode_batch(titles) if ids else np.empty((0, self.dim), np.float32)
        else:
            vecs = l2_normalize(as_float_matrix(vectors, "vectors", self.dim), "vectors")
            if len(vecs) != len(ids):
                raise ValueError(f"got {len(vecs)} vectors for {len(ids)} ids")
        return self.catalog.add(ids, titles, vecs)

    def remove(self, ids: Sequence[Any]) -> WriteResult:
        """Remove items by id; durable once this returns (for a service opened from a folder).

        Parameters
        ----------
        ids : sequence of int or str
            Ids of items in the index.

        Returns
        -------
        WriteResult

        Raises
        ------
        UnknownIdError
            If an id is not in the index (a ``KeyError``; nothing is removed then).
        ClosedError
            If the service is closed.
        """
        return self.catalog.remove(ids)


def check_k(k: Any) -> int:
    """``k`` as an int in 1..MAX_K (a service answers at most 1000 hits a query), or a ValueError/TypeError naming it."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) and not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    return _check_k_range(k)


def check_effort(ef: Any) -> int | None:
    """``ef`` checked by :func:`~simsearch._validation.check_ef`, or ``None`` (the index's own ef)."""
    return None if ef is None else check_ef(ef)


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
