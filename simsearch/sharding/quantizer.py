"""One int8 quantizer for all the shards of a native :class:`~simsearch.ShardedIndex`.

A native index learns per-dimension ranges from the vectors it holds, so
shards that learn their own give int8 scores on different scales, and the
merge of their answers then ranks some true neighbours below a shard's
false ones (4 hash shards found recall@10 0.956 where one index found
0.980). Training the ranges once, on the first ``add``, and installing them
in every shard before it holds a vector makes the shards' scores comparable,
so the merge is exact and the sharded index finds what one index finds
(``benchmarks/sharding.py`` measures it).
"""

from __future__ import annotations

import numpy as np

from simsearch.index.native import train_quantizer
from simsearch.sharding.engine import Engine

__all__ = ["share_quantizer", "adopt_quantizer", "MIN_SHARED_TRAIN"]

#: A first ``add`` of fewer rows (and fewer than ``train_size``) leaves each shard its own
#: quantizer: ranges frozen from a few rows would clip the vectors that come later.
MIN_SHARED_TRAIN = 1000


def share_quantizer(engine: Engine, x: np.ndarray, metric: str, *, seed: int, train_size: int) -> bool:
    """Train one quantizer on a seeded sample of ``x`` and install it, final, in every shard.

    Parameters
    ----------
    engine : Engine
        The shards, none of which has held a vector yet.
    x : np.ndarray of shape (n, dim), float32, n >= 1
        The first batch (validated); at most ``train_size`` rows, drawn
        with ``seed``, are used, as a single index uses its first
        ``train_size`` vectors.
    metric : {"cosine", "ip", "l2"}
    seed : int
    train_size : int

    Returns
    -------
    bool
        True: the shards now share one quantizer; False: ``x`` has fewer
        than ``min(train_size, MIN_SHARED_TRAIN)`` rows, and each shard
        trains its own as a single index does.
    """
    if x.shape[0] < min(train_size, MIN_SHARED_TRAIN):
        return False
    if x.shape[0] > train_size:
        rows = np.random.default_rng(seed).choice(x.shape[0], train_size, replace=False)
        x = x[np.sort(rows)]
    lo, step = train_quantizer(np.ascontiguousarray(x), metric)
    engine.run([(s, "set_quantizer", (lo, step)) for s in range(engine.n_shards)])
    return True


def adopt_quantizer(engine: Engine, fresh: list[int]) -> bool:
    """After a load: give the shards saved empty the quantizer that the others share.

    A shard file keeps its quantizer, but an empty shard is saved as no file
    and opens untrained; it takes the ranges of the first shard whose ranges
    are final. Folders written before shards shared one keep training per shard.

    Parameters
    ----------
    engine : Engine
        The loaded shards.
    fresh : list of int
        The shards opened empty, with no file.

    Returns
    -------
    bool
        False when every shard is fresh (the first ``add`` trains the
        shared quantizer), else True.
    """
    if len(fresh) == engine.n_shards:
        return False
    saved = [q for q in engine.run([(s, "quantizer", ()) for s in range(engine.n_shards)]) if q is not None]
    if saved and fresh:
        lo, step = saved[0]
        engine.run([(s, "set_quantizer", (lo, step)) for s in fresh])
    return True
