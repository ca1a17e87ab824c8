"""``simsearch index build`` (encode a table of titles into an index folder) and ``simsearch search``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch._validation import NO_ID
from simsearch.cli import _common
from simsearch.cli._common import CommandError
from simsearch.index.folder import open_folder, write_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index build`` and ``search`` to the ``simsearch`` parser."""
    p_index = subparsers.add_parser("index", help="build an index folder from a table of titles")
    index_sub = p_index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    p = index_sub.add_parser("build", help="encode ITEMS and write an index folder")
    p.add_argument("items", help="Parquet or CSV with id and title columns")
    p.add_argument("--out", required=True, help="index folder to write")
    _common.add_columns(p)
    _common.add_encoder_args(p)
    p.add_argument("--M", type=int, default=16, help="HNSW graph degree (default 16)")
    p.add_argument("--ef-construction", type=int, default=200, help="HNSW build candidate list (default 200)")
    p.add_argument("--ef", type=_common.positive_int, default=None,
                   help="search effort that later searches of the folder use (default: the index's, 64)")  # fmt: skip
    p.add_argument("--attr-col", action="append", default=[], metavar="COL",
                   help="store this column (integers or strings) for 'search --filter COL=VALUE'; repeatable")  # fmt: skip
    _common.add_engine_args(p)
    p.set_defaults(func=run_build)

    p = subparsers.add_parser("search", help="search an index folder with query texts")
    p.add_argument("index", help="folder written by 'simsearch index build'")
    p.add_argument("query", nargs="*", help="query texts")
    p.add_argument("--queries", help="Parquet or CSV of queries (column --text-col)")
    p.add_argument("--text-col", default="title")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ef", type=_common.positive_int, default=None,
                   help="search effort: larger is slower and more accurate (default: the folder's)")  # fmt: skip
    p.add_argument("--out", help="write results here (.parquet or .csv) instead of printing")
    p.add_argument("--filter", action="append", default=[], metavar="NAME=VALUE",
                   help="only items whose attribute NAME is VALUE; repeat: values of one name OR, names AND")  # fmt: skip
    _common.add_encoder_args(p)
    p.set_defaults(func=run_search)


def run_build(args: argparse.Namespace) -> None:
    """``simsearch index build``: encode the titles, build the index, write the folder."""
    from simsearch.applications._items import build_index, encode_texts

    if args.engine == "ray":
        _build_on_ray(args)
        return
    table = _tables.read_table(args.items, [args.id_col, args.text_col, *args.attr_col], name=args.items)
    _tables.require_rows(table, name=args.items)
    ids = _tables.id_column(table, args.id_col, name=args.items)
    texts = _tables.text_column(table, args.text_col, name=args.items)
    attributes, attribute_values = _attribute_columns(table, args.attr_col, args.items)
    encoder = _common.encoder(args)
    start = time.perf_counter()
    vectors = encode_texts(texts, encoder, _common.progress(args))
    index = build_index(vectors, _index_params(args), _common.progress(args), attributes=attributes or None)
    meta = {**_model_meta(args, encoder.name, encoder.fingerprint), "attributes": attribute_values}
    write_folder(args.out, index, pa.table({"id": ids, "title": pa.array(texts)}), meta)
    print(f"indexed {len(vectors)} items ({vectors.shape[1]}-d) into {args.out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _build_on_ray(args: argparse.Namespace) -> None:
    """``index build --engine ray``: the folder holds a ShardedIndex directory instead of one index file."""
    from simsearch.applications.ray_jobs import build_sharded_index, encode_table

    start = time.perf_counter()
    ids, texts, vectors, encoder = encode_table(
        args.items, id_col=args.id_col, text_col=args.text_col, model=args.model, precision=args.precision,
        workers=args.workers, progress=_common.progress(args),
    )  # fmt: skip
    index = build_sharded_index(vectors, args.shards, _index_params(args), _common.progress(args))
    meta = {**_model_meta(args, encoder["model"], encoder["fingerprint"]), "shards": args.shards}
    try:
        write_folder(args.out, index, pa.table({"id": ids, "title": pa.array(texts)}), meta)
    finally:
        index.close()
    print(f"indexed {len(vectors)} items ({vectors.shape[1]}-d) into {args.shards} shards in {args.out} on Ray in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _index_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"M": args.M, "ef_construction": args.ef_construction}
    if args.ef is not None:
        params["ef"] = args.ef
    return params


def _model_meta(args: argparse.Namespace, name: str, fingerprint: str) -> dict[str, Any]:
    """The folder's record of the model that encoded it, which ``search`` and ``serve`` encode queries with."""
    return {"model": name, "model_path": args.model, "precision": args.precision, "fingerprint": fingerprint}


def _attribute_columns(
    table: pa.Table, names: Sequence[str], source: str
) -> tuple[dict[str, np.ndarray], dict[str, list[Any]]]:
    """Attribute columns for filtered search: each as int32 codes, with the values they stand for.

    Code ``j`` of attribute ``name`` stands for ``values[name][j]`` (values sorted); an empty
    cell gets -1, which no filter names.
    """
    codes: dict[str, np.ndarray] = {}
    values: dict[str, list[Any]] = {}
    for name in names:
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise CommandError(f"{source}: attribute column {name!r} has type {col.type}; use integers or strings")
        cells = col.to_pylist()
        distinct = sorted({c for c in cells if c is not None})
        lookup = {v: j for j, v in enumerate(distinct)}
        codes[name] = np.array([-1 if c is None else lookup[c] for c in cells], dtype=np.int32)
        values[name] = distinct
    return codes, values


def _filter_from_args(specs: Sequence[str], meta: dict[str, Any], path: str) -> dict[str, list[int]] | None:
    """``--filter NAME=VALUE`` options (repeated: same name ORs, names AND) as an index filter."""
    if not specs:
        return None
    known: dict[str, list[Any]] = meta.get("attributes") or {}
    out: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise CommandError(f"--filter takes NAME=VALUE, got {spec!r}")
        if name not in known:
            have = ", ".join(sorted(known)) or "none (build with --attr-col NAME)"
            raise CommandError(f"{path!r} has no attribute {name!r}; attributes: {have}")
        vals = known[name]
        match = [j for j, v in enumerate(vals) if str(v) == value]
        out.setdefault(name, []).extend(match)
    return out


def run_search(args: argparse.Namespace) -> None:
    """``simsearch search``: encode the queries with the folder's model and print or write the hits."""
    from simsearch.applications._items import encode_texts

    index, items, meta = open_folder(args.index, open_sharded=_common.open_sharded)
    if args.queries:
        qt = _tables.read_table(args.queries, [args.text_col], name=args.queries)
        queries = _tables.text_column(qt, args.text_col, name=args.queries)
    else:
        queries = list(args.query)
    if not queries:
        raise CommandError("give query texts, or --queries FILE")
    if args.model is None and meta.get("model_path"):
        args.model = meta["model_path"]
    vectors = encode_texts(queries, _common.encoder(args), _common.progress(args))
    if vectors.shape[1] != index.dim:
        raise CommandError(f"queries have dimension {vectors.shape[1]}, the index has {index.dim}: encode with the index's model ({meta.get('model')})")
    if args.ef is not None:
        index.ef = args.ef
    k = min(args.k, len(index))
    flt = _filter_from_args(args.filter, meta, args.index)
    if flt is not None and any(not v for v in flt.values()):
        flt = {name: [-2] for name in flt}  # a value no item has: padded rows, no results
    found, scores = index.search(vectors, k=k, filter=flt)
    valid = found.reshape(-1) != NO_ID
    rows = found.astype(np.int64).reshape(-1)[valid]
    q = np.repeat(np.arange(len(queries)), k)[valid]
    table = pa.table(
        {
            "query": pa.array([queries[i] for i in q]),
            "rank": pa.array((np.tile(np.arange(1, k + 1), len(queries))[valid]).astype(np.int32)),
            "id": items.column("id").take(pa.array(rows)),
            "title": items.column("title").take(pa.array(rows)),
            "score": pa.array(scores.reshape(-1)[valid], type=pa.float32()),
        }
    )
    _common.write_or_print(table, args.out, rows=max(20, k))
