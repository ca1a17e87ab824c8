"""The in-process engine: every shard in this process, searched from a thread pool.

The native search releases the GIL, so the shards of one call run on
separate cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from simsearch.sharding.engine import Call, Shard, open_shard, threads_per_shard

__all__ = ["LocalEngine"]


class LocalEngine:
    """Shards in this process; calls run on a thread pool (one worker per core, at most one per shard).

    Parameters
    ----------
    shards : list of Shard
        The shards, shard ``s`` at position ``s``.
    num_threads : int
        Workers of the pool (capped at the number of shards).
    """

    def __init__(self, shards: list[Shard], num_threads: int) -> None:
        self.shards = shards
        self.n_shards = len(shards)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(num_threads, self.n_shards)))

    @classmethod
    def open(
        cls, dim: int, params: dict[str, Any], sources: Sequence[str | None], *, mmap: bool, num_threads: int,
        **options: Any,
    ) -> LocalEngine:  # fmt: skip
        """The engine factory registered as ``"local"`` (see :class:`~simsearch.sharding.engine.EngineFactory`).

        Raises
        ------
        ValueError
            If any engine option is given: the local engine has none.
        """
        if options:
            raise ValueError(f"engine_options apply to engine='ray', got {sorted(options)}")
        per_shard = threads_per_shard(num_threads, len(sources))
        return cls([Shard(open_shard(src, dim, params, mmap, per_shard)) for src in sources], num_threads)

    def run(self, calls: Sequence[Call], allow_partial: bool = False, timeout: float | None = None) -> list[Any]:
        """Run the calls on the pool; see :meth:`Engine.run <simsearch.sharding.engine.Engine.run>`.

        Shards in this process are always reachable, so ``allow_partial`` and
        ``timeout`` change nothing here.
        """
        if len(calls) == 1:
            s, method, args = calls[0]
            return [getattr(self.shards[s], method)(*args)]
        futures = [self._pool.submit(getattr(self.shards[s], method), *args) for s, method, args in calls]
        # wait for every call before raising, so no shard is still writing when the caller sees the error
        errors = [f.exception() for f in futures]
        for err in errors:
            if err is not None:
                raise err
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the pool's threads."""
        self._pool.shutdown(wait=True)
