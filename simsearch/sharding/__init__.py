"""Sharded indexes: one :class:`~simsearch.Index` split into shards, searched in parallel.

Modules, in the order they depend on each other (none imports a later one):

- :mod:`~simsearch.sharding.engine`: the engine protocol, the shard every
  engine runs, and the registry that maps ``engine="..."`` to an engine.
- :mod:`~simsearch.sharding.routing`: the hash and kmeans partitions and the
  exact top-k merge.
- :mod:`~simsearch.sharding.manifest`: the saved folder's format.
- :mod:`~simsearch.sharding.local`: the in-process engine (``engine="local"``).
- :mod:`~simsearch.sharding.index`: :class:`ShardedIndex`, the facade.
- :mod:`~simsearch.sharding.ray`: the Ray engine (``engine="ray"``), imported
  only when it is first used: Ray is an optional extra.

This package wires the engines into the registry, so the index names no
engine module.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from simsearch.errors import ShardUnavailableError
from simsearch.sharding.engine import Engine, register_engine
from simsearch.sharding.index import ShardedIndex, ShardedSearchResult
from simsearch.sharding.local import LocalEngine
from simsearch.sharding.manifest import FORMAT_VERSION, MANIFEST
from simsearch.sharding.routing import hash_shard

__all__ = ["ShardedIndex", "ShardedSearchResult", "ShardUnavailableError", "hash_shard", "FORMAT_VERSION", "MANIFEST"]


def _open_ray_engine(
    dim: int, params: dict[str, Any], sources: Sequence[str | None], *, mmap: bool, num_threads: int, **options: Any
) -> Engine:
    # imported on first use: importing Ray takes seconds, and it may not be installed
    from simsearch.sharding.ray import RayEngine

    return RayEngine.open(dim, params, sources, mmap=mmap, num_threads=num_threads, **options)


register_engine("local", LocalEngine.open)
register_engine("ray", _open_ray_engine)


def __getattr__(name: str) -> Any:
    if name == "SearchResult":
        warnings.warn(
            "simsearch.sharding.SearchResult is deprecated; use simsearch.sharding.ShardedSearchResult "
            "(simsearch.serving has a SearchResult of its own)",
            DeprecationWarning,
            stacklevel=2,
        )
        return ShardedSearchResult
    raise AttributeError(f"module 'simsearch.sharding' has no attribute {name!r}")
