"""``simsearch.ShardedIndex``: one index split into shards, searched in parallel.

Each shard is a plain :class:`simsearch.Index`. The sharded index routes every
vector to one shard, fans a search out to the shards, and merges their answers
exactly: the result is the true top-k of the union of what the shards return,
so a sharded index is as accurate as its shards. Native shards share one int8
quantizer, trained on the first ``add``, so that their scores compare.

Two partitions:

- ``"hash"``: a stable 64-bit hash of the id (splitmix64, the same in every
  process and on every machine) picks the shard; every search visits every
  shard.
- ``"kmeans"``: faiss k-means, trained on the first ``add`` (or an explicit
  :meth:`ShardedIndex.train`), sends each vector to the shard of its nearest
  centroid; ``search(..., n_probe=p)`` visits only the ``p`` shards whose
  centroids are nearest to each query.

Two engines run the same shards (:mod:`simsearch.sharding.engine` says what an
engine does; the index finds one by name and never imports it):

- ``"local"``: shards live in this process and are searched from a thread
  pool (:mod:`simsearch.sharding.local`); the native search releases the GIL,
  so shards run on separate cores.
- ``"ray"``: one Ray actor per shard (:mod:`simsearch.sharding.ray`), the same API.

Files: ``save(dir)`` writes the folder that :mod:`simsearch.sharding.manifest`
describes (``manifest.json`` with per-shard file names, entry counts and
SHA-256 checksums, one index file per shard, ``centroids.npy`` for kmeans).
Nothing in it is pickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from simsearch._storage import atomic_dir, recover_dir, sign_file, verify_signature
from simsearch._storage import signing_key as signing_key_of
from simsearch._validation import NO_ID, as_float_matrix, as_ids, check_ef, check_k, check_positive_int
from simsearch.errors import CorruptFileError, IdsExhaustedError
from simsearch.index.core import Index, _check_attributes, _check_filter, _default_threads
from simsearch.sharding import manifest
from simsearch.sharding.engine import _FAILED, Engine, engine_names, open_engine
from simsearch.sharding.quantizer import adopt_quantizer, share_quantizer
from simsearch.sharding.routing import hash_shard, merge_top_k, nearest_centroid, probed_shards, train_centroids

__all__ = ["ShardedIndex", "ShardedSearchResult", "hash_shard"]

_PARTITIONS = ("hash", "kmeans")
# Index keyword arguments that describe the data and go into the manifest;
# num_threads is a property of the machine that opens the index, not of the data.
_SAVED_PARAMS = ("metric", "dtype", "M", "ef_construction", "rescore", "backend", "ef", "isa", "train_size")

Partition = Literal["hash", "kmeans"]


class ShardedSearchResult(tuple):
    """``(ids, scores)`` of a sharded search, plus which shards answered.

    Unpacks like :meth:`simsearch.Index.search`'s pair; ``shards_answered``
    (bool, shape (n_shards,)) is False only for shards that a search with
    ``allow_partial=True`` could not reach (or that no query probed).
    (Named apart from :class:`simsearch.serving.service.SearchResult`, the
    service's answer; ``simsearch.sharding.SearchResult`` is a deprecated alias.)
    """

    ids: np.ndarray
    scores: np.ndarray
    shards_answered: np.ndarray

    def __new__(cls, ids: np.ndarray, scores: np.ndarray, shards_answered: np.ndarray) -> ShardedSearchResult:
        self = super().__new__(cls, (ids, scores))
        self.ids = ids
        self.scores = scores
        self.shards_answered = shards_answered
        return self


# ---------------------------------------------------------------------- the index
class ShardedIndex:
    """An :class:`~simsearch.Index` split into ``n_shards`` shards, searched in parallel.

    Parameters
    ----------
    dim : int
        Vector dimension.
    n_shards : int
        Number of shards (at least 1).
    partition : {"hash", "kmeans"}, default "hash"
        ``"hash"`` routes by a stable hash of the id and searches every
        shard. ``"kmeans"`` routes each vector to the shard of its nearest
        k-means centroid (trained with faiss on the first ``add``, or by
        :meth:`train`) and lets ``search`` visit only the ``n_probe``
        nearest shards.
    engine : {"local", "ray"}, default "local"
        ``"local"`` keeps the shards in this process. ``"ray"`` runs one Ray
        actor per shard (needs ``pip install 'simsearch[ray]'``; see
        :class:`simsearch.sharding.ray.RayEngine` for its options, passed
        here as ``engine_options``). Any engine registered with
        :func:`simsearch.sharding.engine.register_engine` is accepted.
    seed : int, default 0
        Seed of the k-means and of the quantizer's training sample.
    kmeans_train_size : int, default 100000
        At most this many vectors (a seeded sample) train the centroids.
    engine_options : dict, optional
        Ray engine options (``workdir``, ``max_restarts``, ``shards_per_actor``,
        ``actor_options``; see :class:`simsearch.sharding.ray.RayEngine`).
    **index_params
        Passed to every shard's :class:`~simsearch.Index` (``metric``,
        ``dtype``, ``M``, ``ef_construction``, ``rescore``, ``backend``,
        ``ef``, ``isa``, ``train_size``, ``quantizer``, ``num_threads``).
        ``num_threads`` is the total for the whole index: shards run side by
        side, each with its share. Native shards share one quantizer, trained
        on at most ``train_size`` vectors (a seeded sample) of the first
        ``add``, or the ``quantizer`` given; later values outside its ranges
        are clipped, as in one index past ``train_size``.

    Attributes
    ----------
    centroids_ : np.ndarray of float32, shape (n_shards, dim) or None
        k-means centroids once trained (kmeans partition only).

    Examples
    --------
    >>> import numpy as np, simsearch
    >>> x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    >>> index = simsearch.ShardedIndex(16, n_shards=4)
    >>> ids = index.add(x)
    >>> found, scores = index.search(x[:2], k=3)
    >>> found.shape, [int(i) for i in found[:, 0]]
    ((2, 3), [0, 1])
    """

    def __init__(
        self,
        dim: int,
        n_shards: int,
        partition: Partition = "hash",
        engine: str = "local",
        *,
        seed: int = 0,
        kmeans_train_size: int = 100_000,
        engine_options: dict[str, Any] | None = None,
        **index_params: Any,
    ) -> None:
        self._setup(dim, n_shards, partition, engine, seed, kmeans_train_size, index_params)
        Index(self.dim, **self.index_params)  # validates the shard parameters once, here, with Index's own words
        self._engine = self._make_engine([None] * self.n_shards, mmap=False, engine_options=engine_options or {})

    def _setup(
        self,
        dim: int,
        n_shards: int,
        partition: str,
        engine: str,
        seed: int,
        kmeans_train_size: int,
        index_params: dict[str, Any],
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.n_shards = check_positive_int(n_shards, "n_shards")
        if partition not in _PARTITIONS:
            raise ValueError(f"partition must be one of {list(_PARTITIONS)}, got {partition!r}")
        if engine not in engine_names():
            raise ValueError(f"engine must be one of {engine_names()}, got {engine!r}")
        self.partition = partition
        self.engine = engine
        self.seed = int(seed)
        self.kmeans_train_size = check_positive_int(kmeans_train_size, "kmeans_train_size")
        params = dict(index_params)
        threads = params.pop("num_threads", None)
        self.num_threads = _default_threads() if threads is None else check_positive_int(threads, "num_threads")
        self.index_params = params
        self.metric: str = params.get("metric", "cosine")
        # Index picks hnswlib for dtype="float32"; filters and attributes are the native graph's
        self._native = params.get("backend", "native") == "native" and params.get("dtype") != "float32"
        self.ef = check_ef(params.get("ef", 64))
        self.centroids_: np.ndarray | None = None
        self._next_id = 0
        # native shards share one quantizer, trained on the first add (see simsearch.sharding.quantizer)
        self._quantizer_decided = not self._native or params.get("quantizer") is not None

    def _make_engine(self, sources: list[str | None], mmap: bool, engine_options: dict[str, Any]) -> Engine:
        return open_engine(
            self.engine, self.dim, self.index_params, sources, mmap=mmap, num_threads=self.num_threads,
            options=engine_options,
        )  # fmt: skip

    @property
    def shard_engine(self) -> Engine:
        """The engine object holding the shards (:class:`~simsearch.sharding.local.LocalEngine`,
        :class:`~simsearch.sharding.ray.RayEngine`, ...), for engine-specific controls such as
        the Ray engine's ``actors`` and ``actor_of``."""
        return self._engine

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return int(sum(self._all("size")))

    @property
    def shard_sizes(self) -> np.ndarray:
        """Entries per shard, int64, shape (n_shards,)."""
        return np.asarray(self._all("size"), dtype=np.int64)

    @property
    def memory_bytes(self) -> int:
        """Bytes of index memory over all shards."""
        return int(sum(self._all("memory_bytes")))

    def __contains__(self, id_: Any) -> bool:
        try:
            ids = as_ids(id_, "id")
        except (TypeError, ValueError):
            return False
        return ids.size == 1 and bool(self.contains(ids)[0])

    def contains(self, ids: Any) -> np.ndarray:
        """Membership of each id.

        Parameters
        ----------
        ids : array-like of int, shape (n,)

        Returns
        -------
        np.ndarray of bool, shape (n,)
        """
        return self._locate(as_ids(ids)) >= 0

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(dim={self.dim}, n_shards={self.n_shards}, partition={self.partition!r}, "
            f"engine={self.engine!r}, metric={self.metric!r}, len={len(self)})"
        )

    def close(self) -> None:
        """Stop the shard workers (threads, or Ray actors). The index is unusable afterwards."""
        self._engine.close()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def train(self, vectors: Any) -> ShardedIndex:
        """Learn the kmeans partition's centroids (faiss k-means) from ``vectors``.

        Called by the first :meth:`add` when not called before. At most
        ``kmeans_train_size`` vectors (a seeded sample) are used.

        Parameters
        ----------
        vectors : array-like of shape (n, dim), float, n >= n_shards

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Not a kmeans partition, already trained with entries present,
            fewer vectors than shards, or bad vectors.
        """
        if self.partition != "kmeans":
            raise ValueError("train() applies to partition='kmeans'; the hash partition needs no training")
        if self.centroids_ is not None and len(self) > 0:
            raise ValueError("the index already holds vectors routed by its centroids; build a new index to retrain")
        x = self._prepare(vectors, "vectors")
        if x.shape[0] < self.n_shards:
            raise ValueError(f"k-means needs at least n_shards={self.n_shards} training vectors, got {x.shape[0]}")
        self.centroids_ = train_centroids(x, self.n_shards, seed=self.seed, train_size=self.kmeans_train_size)
        return self

    def add(self, vectors: Any, ids: Any = None, attributes: Mapping[str, Any] | None = None) -> np.ndarray:
        """Add vectors; returns their ids.

        Parameters
        ----------
        vectors : array-like of shape (n, dim), float
            Any float width; converted to float32.
        ids : array-like of int, shape (n,), optional
            Unique uint64 ids not already in any shard. By default ids
            continue from the largest id ever added to this sharded index,
            so automatic ids never collide across shards.
        attributes : mapping of str to array-like of int, shape (n,), optional
            Integer attributes to filter on (see :meth:`Index.add`); each
            shard stores those of its rows. Native backend only.

        Returns
        -------
        np.ndarray of uint64, shape (n,)

        Raises
        ------
        ValueError
            Wrong dimension, NaN/inf, zero vectors under cosine, duplicate
            ids, ids already present, attributes of the wrong length or
            range. Nothing is added when a check fails.
        TypeError
            Non-float vectors, non-integer ids or attributes.
        ShardUnavailableError
            Ray engine: a shard's actor died during the call. The other
            shards' rows were added; ``contains(ids)`` tells which rows to add again.
        """
        x = self._prepare(vectors, "vectors")
        n = x.shape[0]
        if ids is None:
            if self._next_id + n >= int(NO_ID):
                raise IdsExhaustedError(f"automatic ids are exhausted (the next would be {self._next_id}, the reserved NO_ID is 2**64-1); pass ids explicitly")
            id_arr = np.arange(self._next_id, self._next_id + n, dtype=np.uint64)
        else:
            id_arr = as_ids(ids, "ids", n)
        if n == 0:
            return id_arr
        values, counts = np.unique(id_arr, return_counts=True)
        if values.size != n:
            raise ValueError(f"ids contains duplicate id {int(values[counts > 1][0])}")
        if ids is not None:
            present = self.contains(id_arr)
            if present.any():
                raise ValueError(f"id {int(id_arr[np.argmax(present)])} is already in the index")
        names, columns = _check_attributes(attributes, n)
        if names and not self._native:
            raise ValueError("attributes need the native backend")
        if not self._quantizer_decided:
            train_size = int(self.index_params.get("train_size", 20000))
            share_quantizer(self._engine, x, self.metric, seed=self.seed, train_size=train_size)
            self._quantizer_decided = True  # shared, or (a first add too small) each shard keeps its own
        if self.partition == "kmeans":
            if self.centroids_ is None:
                self.train(x)
            shard = nearest_centroid(x, self.centroids_)
        else:
            shard = hash_shard(id_arr, self.n_shards)
        calls = []
        for s in range(self.n_shards):
            rows = np.flatnonzero(shard == s)
            if rows.size:
                attrs = {name: col[rows] for name, col in zip(names, columns)} or None
                calls.append((s, "add", (np.ascontiguousarray(x[rows]), np.ascontiguousarray(id_arr[rows]), attrs)))
        # advanced first: should a shard fail mid-call, the next automatic ids
        # still start past every id this call may have written
        self._next_id = max(self._next_id, int(id_arr.max()) + 1)
        self._engine.run(calls)
        return id_arr

    def remove(self, ids: Any) -> None:
        """Remove ids from whichever shards hold them.

        Raises
        ------
        KeyError
            If any id is not in the index (nothing is removed then).
        ValueError
            If ids repeats an id.
        """
        id_arr = as_ids(ids)
        if id_arr.size == 0:
            return
        if np.unique(id_arr).size != id_arr.size:
            raise ValueError("ids contains duplicates")
        shard = self._located_or_raise(id_arr)
        calls = [(s, "remove", (id_arr[shard == s],)) for s in range(self.n_shards) if np.any(shard == s)]
        self._engine.run(calls)

    # ------------------------------------------------------------------ reads
    def search(
        self,
        queries: Any,
        k: int = 10,
        ef: int | None = None,
        n_probe: int | None = None,
        filter: Any = None,
        *,
        allow_partial: bool = False,
        timeout: float | None = None,
    ) -> ShardedSearchResult:
        """The k nearest neighbours of each query over all shards.

        Parameters
        ----------
        queries : array-like of shape (n, dim), float
            A 1-D array of length ``dim`` is one query.
        k : int, default 10
            Neighbours per query; rows are padded when fewer exist.
        ef : int, optional
            Each shard's candidate list size; defaults to the index's ``ef``.
        n_probe : int, optional
            kmeans partition: shards visited per query, the ones whose
            centroids are nearest (1 to n_shards; default n_shards, exact
            over the shards). The hash partition visits every shard and
            accepts only None or n_shards.
        filter : array-like of int, or mapping of str to int or list of int, optional
            Restrict results to allowed ids or attribute values, as
            :meth:`Index.search` (native backend). Under the hash partition
            an id filter is split by shard, and shards holding no allowed id
            are not searched.
        allow_partial : bool, default False
            Ray engine: when a shard cannot be reached, answer from the
            others instead of raising; ``shards_answered`` says which did.
        timeout : float, optional
            Ray engine: seconds to wait for the shards.

        Returns
        -------
        ShardedSearchResult
            Unpacks as ``ids, scores``: uint64 and float32, shape (n, k),
            best first (higher first for cosine/ip, squared distance lower
            first for l2), padded with id ``NO_ID`` (2**64 - 1) and score NaN. Also
            carries ``shards_answered`` (bool, shape (n_shards,)).

        Raises
        ------
        ValueError
            Wrong dimension, NaN/inf, k/ef/n_probe out of range.
        ShardUnavailableError
            A shard did not answer and ``allow_partial`` is False.
        """
        k = check_k(k)
        ef = self.ef if ef is None else check_ef(ef)
        n_probe = self._check_n_probe(n_probe)
        q = self._prepare(queries, "queries")
        allowed = None
        if filter is not None:
            if not self._native:
                raise ValueError("filter needs the native backend")
            allowed, _ = _check_filter(filter)  # checked here, in the caller's words, before any shard runs
        n = q.shape[0]
        ids = np.full((n, self.n_shards * k), NO_ID, dtype=np.uint64)
        scores = np.full((n, self.n_shards * k), np.nan, dtype=np.float32)
        answered = np.zeros(self.n_shards, dtype=bool)
        if n == 0 or self.centroids_ is None and self.partition == "kmeans":
            return ShardedSearchResult(ids[:, :k], scores[:, :k], answered)
        if n_probe == self.n_shards:
            rows_of = [np.arange(n)] * self.n_shards
        else:
            rows_of = probed_shards(q, self.centroids_, n_probe)
        filters: list[Any] = [filter] * self.n_shards
        if allowed is not None and self.partition == "hash":
            owner = hash_shard(allowed, self.n_shards)
            filters = [allowed[owner == s] for s in range(self.n_shards)]
            rows_of = [rows if filters[s].size else rows[:0] for s, rows in enumerate(rows_of)]
        calls = [
            (s, "search", (q if rows.size == n else q[rows], k, ef, filters[s]))
            for s, rows in enumerate(rows_of)
            if rows.size
        ]
        results = self._engine.run(calls, allow_partial=allow_partial, timeout=timeout)
        for (s, _, _), res in zip(calls, results):
            if res is _FAILED:
                continue
            answered[s] = True
            rows = rows_of[s]
            ids[rows, s * k : (s + 1) * k] = res[0]
            scores[rows, s * k : (s + 1) * k] = res[1]
        top_ids, top_scores = merge_top_k(ids, scores, k, self.metric)
        return ShardedSearchResult(top_ids, top_scores, answered)

    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors of ``ids`` (normalized under cosine; decoded from int8 on native shards).

        Returns
        -------
        np.ndarray of float32, shape (n, dim)

        Raises
        ------
        KeyError
            If any id is not in the index.
        """
        id_arr = as_ids(ids)
        shard = self._located_or_raise(id_arr)
        out = np.empty((id_arr.size, self.dim), dtype=np.float32)
        calls = [(s, "get_vectors", (id_arr[shard == s],)) for s in range(self.n_shards) if np.any(shard == s)]
        for (s, _, _), vecs in zip(calls, self._engine.run(calls)):
            out[shard == s] = vecs
        return out

    def shard_ids(self, shard: int) -> np.ndarray:
        """Live ids held by one shard, shape (shard_sizes[shard],), uint64 (native backend)."""
        if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or not 0 <= shard < self.n_shards:
            raise ValueError(f"shard must be an integer in [0, {self.n_shards}), got {shard!r}")
        return self._engine.run([(int(shard), "ids", ())])[0]

    def ids(self) -> np.ndarray:
        """All live ids, shape (len(self),), uint64, shard by shard (native backend)."""
        parts = self._all("ids")
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], *, signing_key: str | bytes | None = None) -> None:
        """Write the index to the directory ``path``.

        With a ``signing_key`` (default: ``$SIMSEARCH_SIGNING_KEY`` when set),
        ``manifest.json.sig`` holds an HMAC-SHA256 of the manifest, which
        holds the SHA-256 of every shard file: :meth:`load` with the key
        refuses a folder not written by a holder of the key.

        The shards and the manifest are written into a temporary directory
        beside ``path``, which then replaces ``path`` by rename, so a reader
        sees the old index or the new one, never half of one. An existing
        ``path`` is replaced only if it is a saved ShardedIndex (or empty).
        With the Ray engine, ``path`` must be on storage every actor can write.

        Raises
        ------
        FileExistsError
            ``path`` exists and is not a saved ShardedIndex.
        """
        dest = Path(path).absolute()
        manifest.check_destination(dest)
        with atomic_dir(dest) as tmp:
            calls = [(s, "save", (str(tmp / manifest.shard_file(s)),)) for s in range(self.n_shards)]
            entries = self._engine.run(calls)
            fields = {
                "dim": self.dim,
                "metric": self.metric,
                "partition": self.partition,
                "n_shards": self.n_shards,
                "next_id": self._next_id,
                "seed": self.seed,
                "kmeans_train_size": self.kmeans_train_size,
                "index_params": {k: v for k, v in self.index_params.items() if k in _SAVED_PARAMS},
            }
            manifest.write(tmp, fields, entries, self.centroids_)
            key = signing_key_of(signing_key)
            if key is not None:
                sign_file(tmp / manifest.MANIFEST, key)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        mmap: bool = False,
        *,
        verify: bool = True,
        engine: str = "local",
        num_threads: int | None = None,
        engine_options: dict[str, Any] | None = None,
        signing_key: str | bytes | None = None,
    ) -> ShardedIndex:
        """Open a directory written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The directory.
        mmap : bool, default False
            Map each shard's file instead of reading it (see :meth:`Index.load`).
        verify : bool, default True
            Check each file's SHA-256 against the manifest before opening it.
        engine : {"local", "ray"}, default "local"
            Where the shards run; any saved index opens with either engine.
        num_threads : int, optional
            Total threads (default: every core available).
        engine_options : dict, optional
            Ray engine options.
        signing_key : str or bytes, optional
            Refuse the folder unless its manifest carries a valid HMAC under
            this key (default: ``$SIMSEARCH_SIGNING_KEY`` when set); the shard
            files are then always checked against the manifest's SHA-256.

        Raises
        ------
        SignatureError
            A signing key is set and the manifest is unsigned or its
            signature does not match.
        CorruptFileError
            No or unreadable manifest, another format, missing fields, a shard
            file missing, corrupt or holding another count than the manifest
            says (the message names it), centroids missing or corrupt. A
            ``ValueError``, as before.
        FormatVersionError
            The folder was written by a newer simsearch.
        """
        key = signing_key_of(signing_key)
        if key is not None:
            recover_dir(path)
            verify_signature(Path(path) / manifest.MANIFEST, key)
            verify = True
        saved = manifest.read(path, verify=verify)
        fields = saved.manifest
        self = cls.__new__(cls)
        params = dict(fields["index_params"])
        if num_threads is not None:
            params["num_threads"] = num_threads
        self._setup(
            fields["dim"], fields["n_shards"], fields["partition"], engine, fields["seed"],
            fields["kmeans_train_size"], params,
        )  # fmt: skip
        self._next_id = int(fields["next_id"])
        self.centroids_ = saved.centroids
        try:
            self._engine = self._make_engine(saved.sources, mmap=mmap, engine_options=engine_options or {})
        except ValueError as err:
            raise CorruptFileError(f"cannot open a shard of {str(path)!r}: {err}") from err
        try:
            manifest.check_sizes(path, saved, self.shard_sizes)
        except CorruptFileError:
            self.close()
            raise
        if not self._quantizer_decided:
            self._quantizer_decided = adopt_quantizer(self._engine, [s for s, src in enumerate(saved.sources) if src is None])
        return self

    # ------------------------------------------------------------------ helpers
    def _all(self, method: str) -> list[Any]:
        return self._engine.run([(s, method, ()) for s in range(self.n_shards)])

    def _prepare(self, x: Any, name: str) -> np.ndarray:
        arr = as_float_matrix(x, name, self.dim)
        if self.metric == "cosine" and arr.shape[0]:
            norms = np.linalg.norm(arr, axis=1)
            if not np.all(norms > 0):
                raise ValueError(f"{name} row {int(np.argmin(norms > 0))} has zero norm; cosine is undefined for it")
            if self.partition == "kmeans":
                arr = arr / norms[:, None]  # route by direction, as the cosine shards compare
        return arr

    def _check_n_probe(self, n_probe: Any) -> int:
        if n_probe is None:
            return self.n_shards
        n_probe = check_positive_int(n_probe, "n_probe")
        if n_probe > self.n_shards:
            raise ValueError(f"n_probe must be between 1 and n_shards={self.n_shards}, got {n_probe}")
        if self.partition == "hash" and n_probe != self.n_shards:
            raise ValueError("n_probe applies to partition='kmeans'; the hash partition searches every shard")
        return n_probe

    def _locate(self, ids: np.ndarray) -> np.ndarray:
        """Shard holding each id, or -1; shape (n,), int64."""
        out = np.full(ids.size, -1, dtype=np.int64)
        if ids.size == 0:
            return out
        if self.partition == "hash":
            shard = hash_shard(ids, self.n_shards)
            calls = [(s, "contains", (ids[shard == s],)) for s in range(self.n_shards) if np.any(shard == s)]
            for (s, _, _), found in zip(calls, self._engine.run(calls)):
                rows = np.flatnonzero(shard == s)
                out[rows[np.asarray(found, dtype=bool)]] = s
        else:
            calls = [(s, "contains", (ids,)) for s in range(self.n_shards)]
            for (s, _, _), found in zip(calls, self._engine.run(calls)):
                out[np.asarray(found, dtype=bool)] = s
        return out

    def _located_or_raise(self, ids: np.ndarray) -> np.ndarray:
        shard = self._locate(ids)
        if np.any(shard < 0):
            missing = ids[shard < 0]
            raise KeyError(f"unknown id {int(missing[0])}" + (f" (and {missing.size - 1} more)" if missing.size > 1 else ""))
        return shard
