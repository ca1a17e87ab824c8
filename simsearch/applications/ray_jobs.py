"""Offline jobs on Ray: ``simsearch index build`` and ``simsearch dedup`` with ``--engine ray``.

The steps of the one-machine commands, each moved to where it scales:

1. **Read and encode.** Ray Data reads the Parquet (or CSV) file in blocks and
   encodes the titles in parallel workers, each holding one
   :class:`~simsearch.TextEncoder` (the model is loaded once per worker, not
   per batch). Row order is kept, so row ``i`` of the output is row ``i`` of
   the input and gets id ``i`` in the index.
2. **Build the shards.** The vectors go to a :class:`~simsearch.ray.RayIndex`
   (hash partition, one Ray actor per shard), in large batches: each shard
   saves itself after every batch it acknowledges.
3. **Self-join shard by shard** (dedup, :func:`ray_join`). The items of one
   shard at a time are searched against every shard; candidate pairs are
   scored exactly on the caller into the same
   :class:`~simsearch.applications.candidates.Candidates` as the in-process
   join, so ``find_duplicates(path, engine="ray")`` groups them as it groups
   its own.

The caller connects to Ray (``ray.init()`` starts a local one, or joins the
cluster named by ``RAY_ADDRESS``) unless it already is. The encoder must be
loadable on every worker: the bundled model, or a ``model`` folder every node
can read.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch._validation import check_positive_int
from simsearch._validation import check_k
from simsearch.applications._items import Items, encode_texts, progress_bar, progress_enabled
from simsearch.applications.candidates import (
    Candidates,
    Duplicates,
    LoadedItems,
    check_max_group_size,
    check_score,
    chosen_ef,
    default_threshold,
    knn_pairs,
    no_pairs,
    unique_pairs,
)
from simsearch.applications.lexical import LexicalModel, PairScoring, hybrid_vectors

#: Rows per ``add`` call while building: every call makes each shard save itself.
ADD_BATCH = 100_000


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data needs its own extras (pandas)
    except ImportError as err:
        raise ImportError(
            f"--engine ray needs Ray with Ray Data ({err}); install it with: pip install 'simsearch[ray]'"
        ) from err
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
    return ray


class _EncodeBatch:
    """Ray Data worker: one encoder, loaded once, applied to every batch it gets."""

    def __init__(self, model: str | None, precision: str | None, text_col: str) -> None:
        from simsearch.encoders import TextEncoder

        self.encoder = TextEncoder(model=model, precision=precision)
        self.text_col = text_col
        self.identity = json.dumps({"model": self.encoder.name, "fingerprint": self.encoder.fingerprint})

    def __call__(self, batch: pa.Table) -> pa.Table:
        titles = _tables.text_column(batch, self.text_col)
        vectors = encode_texts(titles, self.encoder, progress=False)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        n = batch.num_rows
        return batch.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])).append_column(
            # one small dictionary per batch tells the caller which encoder ran
            "encoder", pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([self.identity]))
        )


def encode_table(
    path: str | os.PathLike[str],
    *,
    id_col: str = "id",
    text_col: str = "title",
    model: str | None = None,
    precision: str | None = None,
    workers: int | None = None,
    batch_size: int = 256,
    progress: bool | None = None,
) -> tuple[pa.Array, list[str], np.ndarray, dict[str, str]]:
    """Read a Parquet or CSV file with Ray Data and encode its titles in parallel workers.

    Parameters
    ----------
    path : path-like
        ``.parquet`` (or a folder of Parquet files) or ``.csv``.
    id_col, text_col : str
        Columns holding the ids and the titles.
    model, precision
        As for :class:`~simsearch.TextEncoder` (``precision=None``: its
        default path on each worker's CPU; pin it, e.g. ``"int8"``, on a
        cluster whose nodes have different CPUs, so every vector comes from
        the same model).
    workers : int, optional
        Most encoding workers (each takes one CPU; Ray Data starts more as
        blocks wait). Default: the CPUs of the Ray cluster less one, which
        the read tasks need.
    batch_size : int, default 256
        Titles per batch handed to a worker.
    progress : bool or None
        Ray Data's progress bars; ``None`` shows them when stderr is a terminal.

    Returns
    -------
    ids : pyarrow.Array, shape (n,)
    titles : list of str, length n
    vectors : np.ndarray of float32, shape (n, dim)
        Unit rows, in input order.
    encoder : dict
        ``{"model": name, "fingerprint": ...}`` of the encoder the workers ran.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A missing column (:class:`~simsearch._tables.MissingColumnError`),
        null or repeated ids, or no rows.
    """
    ray = _ray()
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # row i out is row i in: ids are row numbers
    context.enable_progress_bars = progress_enabled(progress)
    suffix = source.suffix.lower()
    if suffix == ".csv":
        ds = ray.data.read_csv(str(source.absolute()))
    elif suffix in (".parquet", ".pq") or source.is_dir():
        ds = ray.data.read_parquet(str(source.absolute()))
    else:
        raise ValueError(f"{str(path)!r}: expected a .parquet or .csv file (or a folder of Parquet files)")
    _tables.require_columns(ds.schema().base_schema, [id_col, text_col], name=str(path))
    if workers is None:
        # one CPU stays free for Ray Data's read tasks: encoders holding every CPU would starve them
        workers = max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
    workers = check_positive_int(workers, "workers")
    encoded = ds.select_columns([id_col, text_col]).map_batches(
        _EncodeBatch,
        fn_constructor_kwargs={"model": model, "precision": precision, "text_col": text_col},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
        num_cpus=1,
    )
    parts = [b for b in encoded.iter_batches(batch_format="pyarrow", batch_size=None) if b.num_rows]
    if not parts:
        raise ValueError(f"{str(path)!r} is empty: it has no rows")
    table = pa.concat_tables(parts)
    vec = table.column("vector").combine_chunks()
    dim = vec.type.list_size
    vectors = np.ascontiguousarray(vec.values.to_numpy(zero_copy_only=False).reshape(-1, dim), dtype=np.float32)
    identity = json.loads(table.column("encoder").chunk(0).dictionary[0].as_py())
    ids = _tables.id_column(table, id_col, name=str(path)).combine_chunks()
    return ids, _tables.text_column(table, text_col, name=str(path)), vectors, identity


def build_sharded_index(
    vectors: np.ndarray,
    n_shards: int,
    index_params: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> Any:
    """A ``ShardedIndex(engine="ray")`` (inner product, hash partition) with row ``i`` under id ``i``.

    Parameters
    ----------
    vectors : np.ndarray of float32, shape (n, dim)
        Unit rows.
    n_shards : int
    index_params : dict, optional
        ``Index`` keyword arguments for the shards (``M``, ``ef_construction``...).
    progress : bool or None

    Returns
    -------
    ShardedIndex
        Close it when done (:meth:`~simsearch.ShardedIndex.close`).
    """
    _ray()
    from simsearch.sharding import ShardedIndex

    index = ShardedIndex(vectors.shape[1], n_shards, engine="ray", **{"metric": "ip", **(index_params or {})})
    try:
        bar = progress_bar(len(vectors), "indexing", progress)
        for start in range(0, len(vectors), ADD_BATCH):
            stop = min(start + ADD_BATCH, len(vectors))
            index.add(vectors[start:stop], ids=np.arange(start, stop, dtype=np.uint64))
            bar.update(stop - start)
        bar.close()
    except BaseException:
        index.close()
        raise
    return index


def ray_join(
    path: str,
    *,
    k: int,
    floor: float | None,
    id_col: str = "id",
    text_col: str = "title",
    lexical: bool = True,
    scoring: PairScoring,
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
    ef: int | None = None,
    n_shards: int = 4,
    workers: int | None = None,
    model: str | None = None,
    precision: str | None = None,
) -> Candidates:
    """The candidate join of a Parquet/CSV file: encoded by Ray Data, joined on a sharded Ray index.

    Parameters
    ----------
    path : str
        Parquet (file or folder) or CSV with ``id_col`` and ``text_col``.
    k, floor, id_col, text_col, lexical, scoring, index_params, batch_size, progress, ef
        As :func:`~simsearch.applications.candidates.self_join`.
    n_shards : int, default 4
    workers : int, optional
        Most encoding workers; default the CPUs of the Ray cluster less one.
    model, precision
        The encoder each worker loads (see :class:`~simsearch.TextEncoder`).

    Returns
    -------
    Candidates
        ``index`` is None: the shards are closed after the join.
    """
    k = check_k(k)
    ef = chosen_ef(ef, index_params)
    ids, titles, vectors, _ = encode_table(
        path, id_col=id_col, text_col=text_col, model=model, precision=precision, workers=workers, progress=progress
    )
    if lexical:
        # the lexical model needs every title (its vocabulary and IDF are global): fitted here, once
        lexical_model = LexicalModel(scoring).fit(titles)
        features = lexical_model.transform(titles)
        items = Items(vectors, features, hybrid_vectors(vectors, features.projection, scoring.vector_weight))
        loaded = LoadedItems(items, ids, titles, lexical_model)
    else:
        loaded = LoadedItems(Items.from_vectors(vectors), ids, titles)
    floor = default_threshold(loaded.lexical_text) if floor is None else floor
    calibration = loaded.default_calibration()
    n = len(loaded.items)
    if n < 2:
        return Candidates(loaded, scoring, floor, no_pairs(), calibration=calibration)
    params = {"ef_construction": 100, **(index_params or {})}
    index = build_sharded_index(loaded.items.search, n_shards, params, progress)
    parts = []
    try:
        for shard in range(n_shards):
            rows = np.sort(index.shard_ids(shard).astype(np.int64))
            parts.append(knn_pairs(index, loaded.items, rows, k, scoring, floor, batch_size, progress, ef, calibration))
    finally:
        index.close()
    # a pair found from both ends, in two shards' passes: kept once
    pairs = unique_pairs(n, *(np.concatenate([p[i] for p in parts]) for i in range(3)))
    return Candidates(loaded, scoring, floor, pairs, calibration=calibration)


def find_duplicates_on_ray(
    path: str | os.PathLike[str],
    threshold: float | None = None,
    k: int = 10,
    *,
    id_col: str = "id",
    text_col: str = "title",
    model: str | None = None,
    precision: str | None = None,
    lexical: bool = True,
    scoring: PairScoring | None = None,
    refine: bool = True,
    max_group_size: int | None = 100,
    include_singletons: bool = False,
    n_shards: int = 4,
    workers: int | None = None,
    index_params: dict[str, Any] | None = None,
    batch_size: int = 10_000,
    progress: bool | None = None,
) -> Duplicates:
    """Deprecated: use ``find_duplicates(path, engine="ray", ...)``.

    The same join (:func:`ray_join`) and grouping as that call.
    """
    warnings.warn(
        "find_duplicates_on_ray is deprecated; use find_duplicates(path, engine='ray', ...)",
        DeprecationWarning,
        stacklevel=2,
    )
    threshold = None if threshold is None else check_score(threshold)
    max_group_size = check_max_group_size(max_group_size)
    cands = ray_join(
        os.fspath(path), k=k, floor=threshold, id_col=id_col, text_col=text_col, lexical=lexical,
        scoring=scoring if scoring is not None else PairScoring(), index_params=index_params, batch_size=batch_size,
        progress=progress, n_shards=n_shards, workers=workers, model=model, precision=precision,
    )  # fmt: skip
    return cands.duplicates(cands.floor, refine, max_group_size, include_singletons)


__all__ = ["build_sharded_index", "encode_table", "find_duplicates_on_ray", "ray_join"]
