"""The Ray engine: a :class:`~simsearch.ShardedIndex` whose shards are Ray actors.

``ShardedIndex(dim, n_shards, engine="ray", engine_options={...})`` starts
one Ray actor per shard (or per ``shards_per_actor`` shards); each
shard is one :class:`simsearch.Index` inside its actor. Routing, validation
and the exact top-k merge stay on the caller, as in the local engine: a search
makes one Ray call per actor (its shards then search side by side in threads;
a large batch goes into the object store once for all actors), waits for the
answers and merges them. Ray does the
scheduling, the transport and the restarts; simsearch runs no server of its own.

Durability and failures
-----------------------
Each shard keeps a copy of itself under ``workdir`` and rewrites it (a new
file, then an atomic switch of a small state file) after every ``add`` and
``remove`` it acknowledges; until its first write, the file it was loaded from
is its copy. Actors are created with ``max_restarts``: when one dies (its
process is killed, its node is lost), Ray starts it again and each of its
shards reloads its copy, so **every acknowledged write survives a restart**.
The price is one shard write per ``add`` call: add in large batches.

- Reads (``search``, ``contains``, ``get_vectors``, ``len``, ``save``) are
  retried by Ray once the actor is back, so they wait out a restart (bounded
  by ``search(..., timeout=...)``).
- Writes are not retried (one that ran just before the actor died must not
  run twice): a write in flight when its actor dies raises
  :class:`~simsearch.sharding.ShardUnavailableError`; the other shards' part of
  the call was applied, and ``contains(ids)`` says which rows to add again.
- A shard whose actor is gone for good (restarts exhausted, or removed with
  ``ray.kill(actor, no_restart=True)``) or that misses the timeout makes a
  search raise ``ShardUnavailableError``, unless ``allow_partial=True``: then
  the result comes from the other shards and ``shards_answered`` says which.

On a cluster, ``workdir`` and the directories given to ``save``/``load`` must
be storage every node can read and write.

Ray is an optional dependency: ``pip install 'simsearch[ray]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

try:
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
except ImportError as err:  # pragma: no cover - exercised only without ray
    raise ImportError(
        "simsearch's Ray engine needs the ray package; install it with: pip install 'simsearch[ray]'"
    ) from err

import numpy as np

from simsearch._storage import read_json, write_json
from simsearch._validation import check_positive_int
from simsearch.errors import ShardUnavailableError
from simsearch.sharding.engine import _FAILED, Call, Shard, open_shard, threads_per_shard
from simsearch.sharding.index import Partition, ShardedIndex

__all__ = ["RayEngine", "RayIndex"]

# ActorUnavailableError: an actor that is restarting (Ray >= 2.22)
_UNREACHABLE = (RayActorError, ActorUnavailableError, GetTimeoutError)

# arrays above this size are put in the object store once and shared by every shard's call
_PUT_BYTES = 64 * 1024


class _DurableShard(Shard):
    """A shard that writes itself to ``workfile`` after every write it acknowledges.

    Files: ``workfile + ".state"`` (JSON: generation, shard file name or null
    for an empty shard) points at ``workfile + ".<generation>"``. Each write
    saves a new generation (atomic, via :meth:`simsearch.Index.save`), then
    replaces the state file atomically, then deletes the old generation, so a
    process killed at any point leaves a state file naming a complete shard.
    Without a state file, the shard has had no write since it opened, and
    ``source`` (the saved shard it started from, or None: empty) is its state.
    """

    def __init__(self, workfile: str, dim: int, params: dict[str, Any], source: str | None, mmap: bool, num_threads: int) -> None:
        self.workfile = workfile
        self.statefile = workfile + ".state"
        self.generation = 0
        self.current: str | None = None
        if os.path.exists(self.statefile):
            state = read_json(self.statefile, "shard state file")
            self.generation = int(state["generation"])
            self.current = None if state["file"] is None else os.path.join(os.path.dirname(workfile), state["file"])
            source = self.current
        super().__init__(open_shard(source, dim, params, mmap, num_threads))

    def add(self, vectors: np.ndarray, ids: np.ndarray, attributes: dict[str, np.ndarray] | None = None) -> None:
        super().add(vectors, ids, attributes)
        self._persist()

    def remove(self, ids: np.ndarray) -> None:
        super().remove(ids)
        self._persist()

    def _persist(self) -> None:
        generation = self.generation + 1
        path = None
        if len(self.index):
            path = f"{self.workfile}.{generation}"
            self.index.save(path)
        # atomic (a unique temporary name, fsync, rename): a restart reads the old state or the new one
        write_json(self.statefile, {"generation": generation, "file": None if path is None else os.path.basename(path)})
        if self.current is not None and os.path.exists(self.current):
            os.remove(self.current)
        self.generation, self.current = generation, path


@ray.remote
class _ShardHost:
    """A Ray actor holding one or more shards.

    Ray calls ``__init__`` again with the same arguments when it restarts the
    actor; each shard then comes back from its own files in ``workdir``.
    Reads are retried by Ray across a restart (they are idempotent); writes
    are not, since one that ran before the actor died must not run twice.
    """

    def __init__(
        self, workdir: str, shards: Sequence[int], dim: int, params: dict[str, Any], sources: Sequence[str | None],
        mmap: bool, num_threads: int,
    ) -> None:  # fmt: skip
        self.shards = {
            s: _DurableShard(os.path.join(workdir, f"shard-{s:04d}.simsearch"), dim, params, src, mmap, num_threads)
            for s, src in zip(shards, sources)
        }
        # the shards of one call run side by side: the native index releases the GIL
        self._pool = ThreadPoolExecutor(max_workers=len(self.shards)) if len(self.shards) > 1 else None

    @ray.method(max_task_retries=-1)
    def read(self, calls: list[Call]) -> list[Any]:
        """Run ``(shard, method, args)`` calls; one result per call (see :meth:`_run`)."""
        return self._run(calls)

    @ray.method(max_task_retries=0)
    def write(self, calls: list[Call]) -> list[Any]:
        """As :meth:`read`, for the calls that change a shard."""
        return self._run(calls)

    def _run(self, calls: list[Call]) -> list[Any]:
        """Results in call order; a call that raised gives ``_Raised(error)``, for the caller to raise."""

        def one(call: Call) -> Any:
            shard, method, args = call
            try:
                # an argument shared by several actors arrives as an object ref (Ray resolves top-level ones only)
                values = [ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args]
                return getattr(self.shards[shard], method)(*values)
            except Exception as err:  # noqa: BLE001 - the caller's mistake, re-raised there with its own type
                return _Raised(err)

        if self._pool is None or len(calls) == 1:
            return [one(c) for c in calls]
        return list(self._pool.map(one, calls))

    def was_restarted(self) -> bool:
        """Whether Ray restarted this actor (its shards reloaded from their files)."""
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)

    def pid(self) -> int:
        return os.getpid()


_WRITES = frozenset({"add", "remove"})


class _Raised:
    """A shard call's exception, carried back as a result so the actor's other calls still answer."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class RayEngine:
    """Runs the shards' calls on Ray actors.

    Parameters
    ----------
    dim : int
    params : dict
        Index keyword arguments for new shards.
    sources : list of str or None, length n_shards
        Shard file each shard starts from (None: a new empty shard); every
        node that may host an actor must be able to read it.
    mmap : bool
    num_threads : int
        Threads for each shard's Index.
    workdir : path-like, optional
        Directory for the actors' shard files (a fresh subdirectory is made
        in it and removed by :meth:`close`). Default: a temporary directory
        on this machine, which suits a one-machine Ray; on a cluster pass
        storage every node can write.
    max_restarts : int, default 3
        How often Ray restarts a dead actor (-1: without limit).
    shards_per_actor : int, default 1
        Shards held by each actor (consecutive shard numbers).
    actor_options : dict, optional
        Extra ``ray.remote`` options for the actors (``num_cpus``, ``memory``,
        ``resources``, ``scheduling_strategy``, ...). Default ``num_cpus=0``
        (a shard is mostly memory; its search threads are set by
        ``num_threads``) and the ``"SPREAD"`` strategy, so a cluster's nodes
        share the shards.
    """

    def __init__(
        self,
        dim: int,
        params: dict[str, Any],
        sources: Sequence[str | None],
        *,
        mmap: bool = False,
        num_threads: int = 1,
        workdir: str | os.PathLike[str] | None = None,
        max_restarts: int = 3,
        shards_per_actor: int = 1,
        actor_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
            raise ValueError(f"max_restarts must be an integer >= -1, got {max_restarts!r}")
        self.shards_per_actor = check_positive_int(shards_per_actor, "shards_per_actor")
        self.n_shards = len(sources)
        base = os.fspath(workdir) if workdir is not None else None
        if base is not None:
            os.makedirs(base, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="simsearch-ray-", dir=base)
        os.chmod(self.workdir, 0o755)
        options = {"num_cpus": 0, "scheduling_strategy": "SPREAD", **(actor_options or {})}
        host = _ShardHost.options(max_restarts=max_restarts, **options)
        spa = self.shards_per_actor
        self.actors = [
            host.remote(self.workdir, list(range(a, min(a + spa, self.n_shards))), dim, params, sources[a : a + spa], mmap, num_threads)
            for a in range(0, self.n_shards, spa)
        ]
        # killed with the index, or when it is garbage collected, or at exit
        self._finalizer = weakref.finalize(self, _release, list(self.actors), self.workdir)
        try:
            # surfaces a shard that cannot be opened now, with its own error, not at the first search
            self.run([(s, "size", ()) for s in range(self.n_shards)])
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls, dim: int, params: dict[str, Any], sources: Sequence[str | None], *, mmap: bool, num_threads: int,
        **options: Any,
    ) -> RayEngine:  # fmt: skip
        """The engine factory registered as ``"ray"`` (see :class:`~simsearch.sharding.engine.EngineFactory`).

        ``num_threads`` is the whole index's; each shard gets its share.
        ``options`` are this class's keyword arguments (``workdir``,
        ``max_restarts``, ``shards_per_actor``, ``actor_options``).
        """
        return cls(dim, params, sources, mmap=mmap, num_threads=threads_per_shard(num_threads, len(sources)), **options)

    def actor_of(self, shard: int) -> Any:
        """The Ray actor handle holding ``shard``."""
        return self.actors[shard // self.shards_per_actor]

    def run(self, calls: Sequence[Call], allow_partial: bool = False, timeout: float | None = None) -> list[Any]:
        """Run the calls on the actors; see :meth:`Engine.run <simsearch.sharding.engine.Engine.run>`."""
        # one Ray call per actor (and kind), carrying all its shards' calls: the fan-out costs one
        # round trip per actor, not per shard
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, (s, method, _) in enumerate(calls):
            groups.setdefault((s // self.shards_per_actor, method in _WRITES), []).append(i)
        shared: dict[int, Any] = {}

        def arg(a: Any) -> Any:
            # a large array sent to several actors goes into the object store once
            if isinstance(a, np.ndarray) and a.nbytes > _PUT_BYTES and len(groups) > 1:
                if id(a) not in shared:
                    shared[id(a)] = ray.put(a)
                return shared[id(a)]
            return a

        refs = []
        for (a, write), rows in groups.items():
            kind = self.actors[a].write if write else self.actors[a].read
            refs.append(kind.remote([(calls[i][0], calls[i][1], tuple(map(arg, calls[i][2]))) for i in rows]))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            answers: list[Any] | None = ray.get(refs, timeout=timeout)  # the usual case: every actor answers
        except Exception:  # noqa: BLE001 - sorted out below, actor by actor
            answers = None
        out: list[Any] = [_FAILED] * len(calls)
        first_error: BaseException | None = None
        # every answer is awaited before raising, so no shard is still writing when the caller sees the error
        for g, (((_, write), rows), ref) in enumerate(zip(groups.items(), refs)):
            try:
                if answers is not None:
                    results = answers[g]
                else:
                    results = ray.get(ref, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except _UNREACHABLE as err:
                if not allow_partial and first_error is None:
                    first_error = _unavailable([calls[i][0] for i in rows], calls[rows[0]][1], write, timeout, err)
                continue
            for i, result in zip(rows, results):
                if isinstance(result, _Raised):
                    first_error = first_error or result.error
                else:
                    out[i] = result
        if first_error is not None:
            raise first_error
        return out

    def close(self) -> None:
        """Kill the actors and remove their working files."""
        self._finalizer()
        self.actors = []


def _unavailable(shards: list[int], method: str, write: bool, timeout: float | None, err: BaseException) -> ShardUnavailableError:
    names = f"shard {shards[0]}" if len(shards) == 1 else "shards " + ", ".join(map(str, shards))
    why = (
        f"did not answer within {timeout} s"
        if isinstance(err, GetTimeoutError)
        else f"{'is' if len(shards) == 1 else 'are'} unreachable: the Ray actor died or is restarting ({type(err).__name__})"
    )
    advice = (
        " Writes are not retried: check which ids arrived with contains() and add the rest again"
        if write
        else " Retry, or search with allow_partial=True to answer from the other shards"
    )
    error = ShardUnavailableError(f"{names} {why} during {method}().{advice}")
    error.__cause__ = err
    return error


def _release(actors: list[Any], workdir: str) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - Ray already shut down (interpreter exit): nothing left to stop
            pass
    shutil.rmtree(workdir, ignore_errors=True)


class RayIndex(ShardedIndex):
    """Deprecated: ``ShardedIndex(..., engine="ray", engine_options={...})`` is the same index.

    Kept so that code written against it keeps working: it builds and loads
    exactly what ``ShardedIndex`` with ``engine="ray"`` does, and emits a
    ``DeprecationWarning``. ``actors`` and ``actor_of`` are the engine's
    (``index.shard_engine.actors``, ``index.shard_engine.actor_of(s)``).

    Parameters
    ----------
    dim, n_shards, partition, seed, kmeans_train_size, **index_params
        As for :class:`~simsearch.ShardedIndex`.
    workdir, max_restarts, shards_per_actor, actor_options
        The engine options, as for :class:`RayEngine`.
    """

    def __init__(
        self,
        dim: int,
        n_shards: int,
        partition: Partition = "hash",
        *,
        workdir: str | os.PathLike[str] | None = None,
        max_restarts: int = 3,
        shards_per_actor: int = 1,
        actor_options: dict[str, Any] | None = None,
        seed: int = 0,
        kmeans_train_size: int = 100_000,
        **index_params: Any,
    ) -> None:
        _warn_deprecated("RayIndex(...)", 'ShardedIndex(..., engine="ray", engine_options={...})')
        options = _engine_options(workdir, max_restarts, shards_per_actor, actor_options)
        super().__init__(
            dim, n_shards, partition, engine="ray", seed=seed, kmeans_train_size=kmeans_train_size,
            engine_options=options, **index_params,
        )  # fmt: skip

    @classmethod
    def load(  # type: ignore[override]
        cls,
        path: str | os.PathLike[str],
        mmap: bool = False,
        *,
        verify: bool = True,
        num_threads: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        max_restarts: int = 3,
        shards_per_actor: int = 1,
        actor_options: dict[str, Any] | None = None,
    ) -> RayIndex:
        """Deprecated: ``ShardedIndex.load(path, engine="ray", engine_options={...})``."""
        _warn_deprecated("RayIndex.load(...)", 'ShardedIndex.load(..., engine="ray", engine_options={...})')
        options = _engine_options(workdir, max_restarts, shards_per_actor, actor_options)
        index = super().load(path, mmap, verify=verify, engine="ray", num_threads=num_threads, engine_options=options)
        return index  # type: ignore[return-value]

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles; actor ``a`` holds shards ``a * shards_per_actor`` onwards."""
        return list(self._engine.actors)  # type: ignore[attr-defined]

    def actor_of(self, shard: int) -> Any:
        """The Ray actor handle holding ``shard``."""
        return self._engine.actor_of(shard)  # type: ignore[attr-defined]


def _engine_options(
    workdir: str | os.PathLike[str] | None, max_restarts: int, shards_per_actor: int, actor_options: dict[str, Any] | None
) -> dict[str, Any]:
    """RayIndex's keyword arguments as ShardedIndex's ``engine_options``."""
    return {"workdir": workdir, "max_restarts": max_restarts, "shards_per_actor": shards_per_actor, "actor_options": actor_options}


def _warn_deprecated(old: str, new: str) -> None:
    # stacklevel 3: the caller of RayIndex(...) / RayIndex.load(...)
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
