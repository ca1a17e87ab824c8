"""What a sharding engine is: the protocol, the shard it runs, and the registry of engines.

:class:`~simsearch.ShardedIndex` routes, validates and merges; an *engine*
holds the shards and runs calls on them. Both engines (in-process threads in
:mod:`simsearch.sharding.local`, Ray actors in :mod:`simsearch.sharding.ray`)
run the same :class:`Shard` and answer the same :class:`Engine` protocol, and
the index finds them by name through :func:`open_engine`. The index never
imports an engine module: the package ``simsearch.sharding`` registers them
(the Ray one lazily, since Ray is an optional extra).

A call is ``(shard, method, args)``: ``method`` is one of :class:`Shard`'s
methods, ``args`` its positional arguments, already validated by the index.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from simsearch._storage import sha256_file
from simsearch.index.core import Index

__all__ = [
    "Call", "Engine", "EngineFactory", "Shard", "open_shard", "threads_per_shard", "register_engine", "engine_names",
    "open_engine",
]  # fmt: skip

#: One call on one shard: ``(shard number, Shard method name, positional arguments)``.
Call = tuple[int, str, tuple[Any, ...]]

#: What :meth:`Engine.run` returns for a call that did not answer under ``allow_partial=True``.
_FAILED = object()


class Engine(Protocol):
    """What :class:`~simsearch.ShardedIndex` needs from the thing that holds its shards.

    An engine is opened by the factory registered under its name (see
    :func:`register_engine`), with one source per shard: a saved shard file
    to load, or None for a new empty shard. Saving goes through :meth:`run`
    too (each shard's ``save`` writes its own file), so an engine whose
    shards live in other processes writes them where they are.
    """

    n_shards: int

    def run(self, calls: Sequence[Call], allow_partial: bool = False, timeout: float | None = None) -> list[Any]:
        """Run the calls (side by side where the engine can); one result per call, in order.

        Every call is awaited before an error is raised, so no shard is still
        writing when the caller sees it. A shard's own exception is raised
        with its type and words. With ``allow_partial=True`` a shard that
        cannot be reached (or misses ``timeout`` seconds) gives ``_FAILED``
        instead of raising :class:`~simsearch.ShardUnavailableError`.
        """
        ...

    def close(self) -> None:
        """Release the shards (threads, processes, working files). The engine is unusable afterwards."""
        ...


class EngineFactory(Protocol):
    """Opens an engine: ``factory(dim, params, sources, mmap=..., num_threads=..., **options)``.

    Parameters
    ----------
    dim : int
        Vector dimension.
    params : dict
        :class:`~simsearch.Index` keyword arguments for new shards (no ``num_threads``).
    sources : list of str or None, length n_shards
        The shard file each shard starts from; None for a new empty shard.
    mmap : bool
        Map shard files instead of reading them.
    num_threads : int
        Threads for the whole index; see :func:`threads_per_shard`.
    **options
        The engine's own options (``ShardedIndex(..., engine_options=...)``).
    """

    def __call__(
        self, dim: int, params: dict[str, Any], sources: Sequence[str | None], *, mmap: bool, num_threads: int, **options: Any
    ) -> Engine: ...


# ---------------------------------------------------------------------- the shard
class Shard:
    """One shard: an :class:`~simsearch.Index` plus the operations the engines call.

    The local engine calls these methods from its thread pool; the Ray engine
    runs a subclass inside an actor. Inputs arrive validated.
    """

    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, vectors: np.ndarray, ids: np.ndarray, attributes: dict[str, np.ndarray] | None = None) -> None:
        self.index.add(vectors, ids, attributes)

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove(ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.index.contains(ids)

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.index.get_vectors(ids)

    def ids(self) -> np.ndarray:
        return self.index.ids()

    def search(self, queries: np.ndarray, k: int, ef: int, filter: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k, ef, filter)

    def size(self) -> int:
        return len(self.index)

    def quantizer(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The shard's quantizer ranges ``(lo, step)`` if they are final, else None (still training, or not native)."""
        return self.index.quantizer if self.index.quantizer_final else None

    def set_quantizer(self, lo: np.ndarray, step: np.ndarray) -> None:
        self.index.set_quantizer(lo, step)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes

    def save(self, path: str) -> dict[str, Any]:
        """Write the shard to ``path``; returns its manifest entry ``{"file", "sha256", "count"}``.

        An empty shard writes no file (``"file": None``): it is rebuilt empty
        from the index parameters at load.
        """
        n = len(self.index)
        if n == 0:
            return {"file": None, "sha256": None, "count": 0}
        self.index.save(path)
        return {"file": os.path.basename(path), "sha256": sha256_file(path), "count": n}


def open_shard(source: str | None, dim: int, params: dict[str, Any], mmap: bool, num_threads: int) -> Index:
    """A shard's :class:`~simsearch.Index`: loaded from ``source``, or new and empty when it is None."""
    if source is None:
        return Index(dim, num_threads=num_threads, **params)
    return Index.load(source, mmap=mmap, dim=dim, metric=params.get("metric", "cosine"), num_threads=num_threads)


def threads_per_shard(num_threads: int, n_shards: int) -> int:
    """Each shard's share of the index's threads (at least one): the shards run side by side."""
    return max(1, num_threads // n_shards)


# ---------------------------------------------------------------------- registry
_FACTORIES: dict[str, EngineFactory] = {}


def register_engine(name: str, factory: EngineFactory | Callable[..., Engine]) -> None:
    """Make ``ShardedIndex(..., engine=name)`` open its shards with ``factory`` (see :class:`EngineFactory`)."""
    _FACTORIES[name] = factory  # type: ignore[assignment]


def engine_names() -> list[str]:
    """The registered engine names, in registration order."""
    return list(_FACTORIES)


def open_engine(
    name: str, dim: int, params: dict[str, Any], sources: Sequence[str | None], *, mmap: bool, num_threads: int,
    options: dict[str, Any],
) -> Engine:  # fmt: skip
    """Open the engine registered as ``name``; see :class:`EngineFactory` for the arguments.

    Raises
    ------
    ValueError
        If no engine is registered under ``name``.
    ImportError
        If the engine needs an optional package that is not installed.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"engine must be one of {engine_names()}, got {name!r}")
    return factory(dim, params, sources, mmap=mmap, num_threads=num_threads, **options)
