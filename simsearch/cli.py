"""The ``simsearch`` command line: index, search, match, dedup, classify, eval, demo, serve.

Every command reads Parquet or CSV (by suffix) through pyarrow and writes
Parquet or CSV the same way. A user mistake (a missing file or column, an empty
table, a dimension mismatch) ends the command with exit status 2 and one line
on stderr, ``simsearch: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simsearch import _tables

#: Layout version of the folder written by ``simsearch index build``.
INDEX_DIR_FORMAT = 1
_INDEX_FILE = "index.ssi"
_ITEMS_FILE = "items.parquet"
_META_FILE = "meta.json"
_SHARDED_DIR = "sharded"


class CommandError(Exception):
    """A user mistake reported as one line, exit status 2."""


# -- shared pieces ------------------------------------------------------------


def _encoder(args: argparse.Namespace) -> Any:
    from simsearch.encoders import TextEncoder

    return TextEncoder(model=args.model, precision=args.precision)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def _write_or_print(table: pa.Table, out: str | None, rows: int = 20) -> None:
    if out:
        _tables.write_table(table, out)
        print(f"wrote {table.num_rows} rows to {out}", file=sys.stderr)
        return
    _print_table(table, rows)


def _print_table(table: pa.Table, rows: int = 20) -> None:
    head = table.slice(0, rows).to_pylist()
    names = table.column_names
    cells = [[_cell(r[n]) for n in names] for r in head]
    widths = [min(60, max([len(n)] + [len(c[i]) for c in cells])) for i, n in enumerate(names)]
    print("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    for c in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(c, widths)))
    if table.num_rows > rows:
        print(f"... {table.num_rows - rows} more rows (use --out FILE to keep them all)")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="local model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--precision", default="int8", choices=["int8", "fp32"], help="encoder precision (default int8)")


def _add_columns(p: argparse.ArgumentParser, image: bool = False) -> None:
    p.add_argument("--id-col", default="id", help="id column (default: id)")
    p.add_argument("--text-col", default="title", help="title column (default: title)")
    if image:
        p.add_argument("--image-col", default=None, help="image column: vectors, or paths with an image encoder")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine", default="local", choices=["local", "ray"],
        help="local: this process; ray: encode with Ray Data workers, index shards as Ray actors (pip install 'simsearch[ray]')",
    )  # fmt: skip
    p.add_argument("--shards", type=int, default=4, help="--engine ray: index shards (default 4)")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: most encoding workers (default: the Ray cluster's CPUs less one)")


# -- index build / search -----------------------------------------------------


def cmd_index_build(args: argparse.Namespace) -> None:
    from simsearch.applications._items import build_index, encode_texts

    if args.engine == "ray":
        _index_build_on_ray(args)
        return
    table = _tables.read_table(args.items, [args.id_col, args.text_col, *args.attr_col], name=args.items)
    _tables.require_rows(table, name=args.items)
    ids = _tables.id_column(table, args.id_col, name=args.items)
    texts = _tables.text_column(table, args.text_col, name=args.items)
    attributes, attribute_values = _attribute_columns(table, args.attr_col, args.items)
    encoder = _encoder(args)
    start = time.perf_counter()
    vectors = encode_texts(texts, encoder, _progress(args))
    index = build_index(
        vectors, {"M": args.M, "ef_construction": args.ef_construction}, _progress(args), attributes=attributes or None
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index.save(out / _INDEX_FILE)
    _tables.write_table(pa.table({"id": ids, "title": pa.array(texts)}), out / _ITEMS_FILE)
    meta = {
        "format": INDEX_DIR_FORMAT,
        "model": encoder.name,
        "model_path": args.model,
        "precision": args.precision,
        "fingerprint": encoder.fingerprint,
        "dim": int(vectors.shape[1]),
        "count": int(len(vectors)),
        "metric": "ip",
        "attributes": attribute_values,
    }
    (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"indexed {len(vectors)} items ({vectors.shape[1]}-d) into {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)


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


def _index_build_on_ray(args: argparse.Namespace) -> None:
    """``index build --engine ray``: the folder holds a ShardedIndex directory instead of one index file."""
    from simsearch.applications.ray_jobs import build_sharded_index, encode_table

    start = time.perf_counter()
    ids, texts, vectors, encoder = encode_table(
        args.items, id_col=args.id_col, text_col=args.text_col, model=args.model, precision=args.precision,
        workers=args.workers, progress=_progress(args),
    )  # fmt: skip
    index = build_sharded_index(vectors, args.shards, {"M": args.M, "ef_construction": args.ef_construction}, _progress(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        index.save(out / _SHARDED_DIR)
    finally:
        index.close()
    _tables.write_table(pa.table({"id": ids, "title": pa.array(texts)}), out / _ITEMS_FILE)
    meta = {
        "format": INDEX_DIR_FORMAT,
        "model": encoder["model"],
        "model_path": args.model,
        "precision": args.precision,
        "fingerprint": encoder["fingerprint"],
        "dim": int(vectors.shape[1]),
        "count": int(len(vectors)),
        "metric": "ip",
        "index": _SHARDED_DIR,
        "shards": args.shards,
    }
    (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"indexed {len(vectors)} items ({vectors.shape[1]}-d) into {args.shards} shards in {out} on Ray in {time.perf_counter() - start:.1f} s", file=sys.stderr)


def _open_index_dir(path: str) -> tuple[Any, pa.Table, dict[str, Any]]:
    from simsearch.index import Index

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such index folder: {path!r} (make one with: simsearch index build ITEMS --out DIR)")
    meta_file = folder / _META_FILE
    if not meta_file.exists():
        raise CommandError(f"{path!r} is not a simsearch index folder: it has no {_META_FILE}")
    meta = json.loads(meta_file.read_text())
    if meta.get("format", 0) > INDEX_DIR_FORMAT:
        raise CommandError(f"{path!r} was written by a newer simsearch (format {meta['format']}); upgrade simsearch")
    if meta.get("index") == _SHARDED_DIR:  # built with --engine ray; searched here, in this process
        from simsearch.sharding import ShardedIndex

        index = ShardedIndex.load(folder / _SHARDED_DIR)
    else:
        index = Index.load(folder / _INDEX_FILE)
    items = _tables.read_table(folder / _ITEMS_FILE)
    return index, items, meta


def cmd_search(args: argparse.Namespace) -> None:
    from simsearch.applications._items import encode_texts

    index, items, meta = _open_index_dir(args.index)
    if args.queries:
        qt = _tables.read_table(args.queries, [args.text_col], name=args.queries)
        queries = _tables.text_column(qt, args.text_col, name=args.queries)
    else:
        queries = list(args.query)
    if not queries:
        raise CommandError("give query texts, or --queries FILE")
    if args.model is None and meta.get("model_path"):
        args.model = meta["model_path"]
    encoder = _encoder(args)
    vectors = encode_texts(queries, encoder, _progress(args))
    if vectors.shape[1] != index.dim:
        raise CommandError(f"queries have dimension {vectors.shape[1]}, the index has {index.dim}: encode with the index's model ({meta.get('model')})")
    k = min(args.k, len(index))
    flt = _filter_from_args(args.filter, meta, args.index)
    if flt is not None and any(not v for v in flt.values()):
        flt = {name: [-2] for name in flt}  # a value no item has: padded rows, no results
    found, scores = index.search(vectors, k=k, filter=flt)
    rows = found.astype(np.int64).reshape(-1)
    valid = found.reshape(-1) != np.uint64(2**64 - 1)
    q = np.repeat(np.arange(len(queries)), k)[valid]
    rows = rows[valid]
    table = pa.table(
        {
            "query": pa.array([queries[i] for i in q]),
            "rank": pa.array((np.tile(np.arange(1, k + 1), len(queries))[valid]).astype(np.int32)),
            "id": items.column("id").take(pa.array(rows)),
            "title": items.column("title").take(pa.array(rows)),
            "score": pa.array(scores.reshape(-1)[valid], type=pa.float32()),
        }
    )
    _write_or_print(table, args.out, rows=max(20, k))


# -- match / dedup / classify -------------------------------------------------


def _catalog_source(path: str) -> tuple[Any, str, str | None]:
    """A catalog file, or the items of an index folder (ids and titles)."""
    if Path(path).is_dir():
        _, items, meta = _open_index_dir(path)
        return items, "id", meta.get("model_path")
    return path, "", None


def cmd_match(args: argparse.Namespace) -> None:
    from simsearch.applications import CatalogMatcher

    if (Path(args.catalog) / "matcher.json").is_file():  # a matcher saved by 'simsearch train-matcher'
        learned = CatalogMatcher.load(args.catalog, progress=_progress(args))
        table = learned.match(args.listings, id_col=args.listing_id_col or args.id_col, text_col=args.listing_text_col or args.text_col)
        _write_or_print(_flat_lists(table, args.out), args.out)
        return
    catalog, forced_id, model_path = _catalog_source(args.catalog)
    if model_path and args.model is None:
        args.model = model_path
    matcher = CatalogMatcher(
        _encoder(args),
        threshold=args.threshold,
        k=args.k,
        id_col=forced_id or args.id_col,
        text_col="title" if forced_id else args.text_col,
        image_col=args.image_col,
        lexical=not args.no_lexical,
        progress=_progress(args),
    )
    matcher.fit(catalog)
    if args.pairs:
        cal = matcher.calibrate(args.pairs, args.listings, id_col=args.listing_id_col or args.id_col, text_col=args.listing_text_col or args.text_col)
        print(f"calibrated threshold {cal.threshold:.3f}: F1 {cal.f1:.3f}, precision {cal.precision:.3f}, recall {cal.recall:.3f} on {cal.n_pairs} pairs", file=sys.stderr)
    table = matcher.match(args.listings, id_col=args.listing_id_col or args.id_col, text_col=args.listing_text_col or args.text_col)
    _write_or_print(table, args.out)


def _flat_lists(table: pa.Table, out: str | None) -> pa.Table:
    """List columns (``top_features``) joined with "; " unless written to Parquet, which keeps lists."""
    if out and Path(out).suffix.lower() in (".parquet", ".pq", ".parq"):
        return table
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            joined = ["; ".join(v or []) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(joined, type=pa.string()))
    return table


def cmd_finetune(args: argparse.Namespace) -> None:
    from simsearch.encoders import finetune
    from simsearch.encoders.finetune import INFO_FILE

    path = finetune(
        args.model, args.pairs, args.valid, out=args.out, epochs=args.epochs, learning_rate=args.learning_rate,
        max_length=args.max_length, trainable_layers=args.trainable_layers, left_col=args.left_col,
        right_col=args.right_col, label_col=args.label_col, seed=args.seed, progress=_progress(args),
    )
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    curve = ", ".join(f"{f:.3f}" for f in info["valid_f1_by_epoch"])
    print(f"validation F1 by epoch (0 = before): {curve}; kept epoch {info['best_epoch']}", file=sys.stderr)
    print(path)


def cmd_train_matcher(args: argparse.Namespace) -> None:
    from simsearch.applications import CatalogMatcher

    matcher = CatalogMatcher(_encoder(args), k=args.k, id_col=args.id_col, text_col=args.text_col, progress=_progress(args))
    params = {"epochs": args.epochs, "trainable_layers": args.trainable_layers, "learning_rate": args.learning_rate}
    matcher.fit_pairs(
        args.pairs, args.listings, args.catalog, valid_pairs=args.valid, listing_id_col=args.listing_id_col,
        listing_text_col=args.listing_text_col, finetune=not args.no_finetune, finetune_params=params,
        price_col=args.price_col, extra_cols=args.extra_col or (),
    )
    matcher.save(args.out)
    cal = matcher.calibration_
    if cal is not None:
        print(f"threshold {cal.threshold:.3f}: F1 {cal.f1:.3f}, precision {cal.precision:.3f}, recall {cal.recall:.3f} on the {cal.n_pairs} validation pairs", file=sys.stderr)
    print(f"saved the matcher to {args.out}; use it with: simsearch match {args.out} LISTINGS", file=sys.stderr)


def cmd_dedup(args: argparse.Namespace) -> None:
    from simsearch.applications import choose_threshold, find_duplicates

    if args.state and args.engine == "ray":
        raise CommandError("--engine ray does not apply to --state (the incremental dedup runs in this process)")
    if args.state:
        cmd_dedup_state(args)
        return
    if args.removed:
        raise CommandError("--removed needs --state DIR (the state the items are removed from)")
    lexical = not args.no_lexical
    threshold = args.threshold
    if args.label_col:
        choice = choose_threshold(
            args.items, None, label_col=args.label_col, k=args.k, id_col=args.id_col, text_col=args.text_col,
            encoder=_encoder(args), lexical=lexical, progress=_progress(args),
        )
        print(
            f"threshold {choice.threshold:.3f} chosen from {args.label_col!r}: mean F1 {choice.mean_f1:.3f}, "
            f"pairwise precision {choice.precision:.3f}, recall {choice.recall:.3f}",
            file=sys.stderr,
        )
        threshold = choice.threshold
    if args.engine == "ray":
        from simsearch.applications.ray_jobs import find_duplicates_on_ray

        pairs, groups = find_duplicates_on_ray(
            args.items, threshold=threshold, k=args.k, id_col=args.id_col, text_col=args.text_col, model=args.model,
            precision=args.precision, lexical=lexical, max_group_size=args.max_group_size, n_shards=args.shards,
            workers=args.workers, progress=_progress(args),
        )  # fmt: skip
    else:
        pairs, groups = find_duplicates(
            args.items, threshold=threshold, k=args.k, id_col=args.id_col, text_col=args.text_col,
            encoder=_encoder(args), lexical=lexical, max_group_size=args.max_group_size, progress=_progress(args),
        )
    n_groups = len(set(groups.column("group_id").to_pylist()))
    print(f"{pairs.num_rows} duplicate pairs, {n_groups} groups holding {groups.num_rows} items", file=sys.stderr)
    if args.groups:
        _tables.write_table(groups, args.groups)
        print(f"wrote {groups.num_rows} rows to {args.groups}", file=sys.stderr)
    _write_or_print(pairs, args.out)


def cmd_classify(args: argparse.Namespace) -> None:
    from simsearch.applications import KNNClassifier

    train = _tables.read_table(args.train, [args.text_col, args.label_col], name=args.train)
    _tables.require_rows(train, name=args.train)
    items = _tables.read_table(args.items, [args.id_col, args.text_col], name=args.items)
    clf = KNNClassifier(k=args.k, encoder=_encoder(args))
    clf.fit(_tables.text_column(train, args.text_col), train.column(args.label_col).to_numpy(zero_copy_only=False))
    if items.num_rows == 0:
        raise CommandError(f"{args.items} is empty: it has no rows")
    proba = clf.predict_proba(_tables.text_column(items, args.text_col))
    best = proba.argmax(axis=1)
    table = pa.table(
        {
            "id": items.column(args.id_col),
            "label": pa.array(clf.classes_[best]),
            "probability": pa.array(proba[np.arange(len(best)), best], type=pa.float32()),
        }
    )
    _write_or_print(table, args.out)


# -- eval ---------------------------------------------------------------------


def cmd_eval_dedup(args: argparse.Namespace) -> None:
    from simsearch.applications import choose_threshold, find_duplicates, mean_group_f1, pairwise_precision_recall

    labels = _tables.read_table(args.items, [args.id_col, args.label_col], name=args.items)
    lexical = not args.no_lexical
    if args.threshold is None:
        choice = choose_threshold(
            args.items, None, label_col=args.label_col, k=args.k, id_col=args.id_col, text_col=args.text_col,
            encoder=_encoder(args), lexical=lexical, progress=_progress(args),
        )
        result = {"threshold": choice.threshold, "mean_f1": choice.mean_f1, "precision": choice.precision, "recall": choice.recall, "threshold_from": "labels"}
    else:
        _, groups = find_duplicates(
            args.items, threshold=args.threshold, k=args.k, id_col=args.id_col, text_col=args.text_col,
            encoder=_encoder(args), lexical=lexical, include_singletons=True, progress=_progress(args),
        )
        order = {v: i for i, v in enumerate(groups.column("id").to_pylist())}
        rows = [order[v] for v in labels.column(args.id_col).to_pylist()]
        predicted = np.asarray(groups.column("group_id").to_numpy())[rows]
        truth = labels.column(args.label_col).to_numpy(zero_copy_only=False)
        p, r = pairwise_precision_recall(truth, predicted)
        result = {"threshold": args.threshold, "mean_f1": mean_group_f1(truth, predicted), "precision": p, "recall": r, "threshold_from": "given"}
    print(json.dumps({"task": "dedup", "items": labels.num_rows, **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}}))


def cmd_eval_match(args: argparse.Namespace) -> None:
    from simsearch.applications import CatalogMatcher

    truth = _tables.read_table(args.truth, [args.truth_listing_col, args.truth_product_col], name=args.truth)
    matcher = CatalogMatcher(_encoder(args), k=args.k, id_col=args.id_col, text_col=args.text_col, lexical=not args.no_lexical, progress=_progress(args))
    matcher.fit(args.catalog)
    found = matcher.match(args.listings, id_col=args.listing_id_col or args.id_col, text_col=args.listing_text_col or args.text_col)
    true_pairs = set(zip(truth.column(args.truth_listing_col).to_pylist(), truth.column(args.truth_product_col).to_pylist()))
    listings = {a for a, _ in true_pairs}
    best: dict[Any, int] = {}
    for lid, pid, rank in zip(found.column("listing_id").to_pylist(), found.column("product_id").to_pylist(), found.column("rank").to_pylist()):
        if (lid, pid) in true_pairs:
            best[lid] = min(rank, best.get(lid, rank))
    if not listings:
        raise CommandError(f"{args.truth} is empty: it has no rows")
    recall = {f"recall@{r}": round(sum(1 for lid in listings if best.get(lid, 10**9) <= r) / len(listings), 4) for r in sorted({1, min(5, args.k), args.k})}
    print(json.dumps({"task": "match", "listings": len(listings), **recall}))


# -- incremental dedup state, review loop, quantization report ---------------


def _state_exists(path: str) -> bool:
    return (Path(path) / "CURRENT").exists()


def _load_state(args: argparse.Namespace, need_encoder: bool) -> Any:
    from simsearch.applications import Deduplicator

    if not Path(args.state).is_dir():
        raise FileNotFoundError(f"no dedup state at {args.state!r} (make one with: simsearch dedup ITEMS --state DIR)")
    encoder = _encoder(args) if need_encoder else None
    return Deduplicator.load(args.state, encoder=encoder, progress=_progress(args))


def cmd_dedup_state(args: argparse.Namespace) -> None:
    """Create the state from ITEMS, or update it with ITEMS (new) and --removed; write the change table."""
    from simsearch.applications import Deduplicator

    if args.label_col:
        raise CommandError("--label-col does not combine with --state; calibrate with: simsearch review export/import")
    start = time.perf_counter()
    if _state_exists(args.state):
        dedup = _load_state(args, need_encoder=True)
        removed = None
        if args.removed:
            table = _tables.read_table(args.removed, [args.id_col], name=args.removed)
            removed = table.column(args.id_col).combine_chunks()
        changes = dedup.update(args.items, removed_ids=removed)
        verb = "updated"
    else:
        if args.removed:
            raise CommandError(f"there is no state at {args.state!r} yet to remove items from")
        dedup = Deduplicator(
            threshold=args.threshold, k=args.k, encoder=_encoder(args), max_group_size=args.max_group_size,
            id_col=args.id_col, text_col=args.text_col, lexical=not args.no_lexical, progress=_progress(args),
        ).fit(args.items)
        groups = dedup.groups_
        changes = pa.table(
            {
                "item_id": groups.column("item_id"),
                "old_group": pa.nulls(groups.num_rows, pa.int64()),
                "new_group": groups.column("group_id"),
                "event": pa.array(["new_group"] * groups.num_rows),
            }
        )
        verb = "created"
    dedup.save(args.state)
    out = args.out or str(Path(args.state) / "changes" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.parquet")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    _tables.write_table(changes, out)
    counts = {e: 0 for e in ("joined", "new_group", "merged", "split", "removed")}
    for e in changes.column("event").to_pylist():
        counts[e] += 1
    n_groups = len(set(dedup.groups_.column("group_id").to_pylist()))
    print(
        f"{verb} {args.state}: {dedup.n_items_} items in {n_groups} groups (threshold {dedup.threshold_:.3f}); "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f"; changes in {out} ({time.perf_counter() - start:.1f} s)",
        file=sys.stderr,
    )


def cmd_review_export(args: argparse.Namespace) -> None:
    dedup = _load_state(args, need_encoder=False)
    table = dedup.export_review(args.out, n=args.n, seed=args.seed)
    print(
        f"wrote {table.num_rows} pairs to {args.out} (threshold {dedup.threshold_:.3f}): fill the label column "
        f"with 1 (duplicates) or 0, then run: simsearch review import {args.out} --state {args.state}",
        file=sys.stderr,
    )


def cmd_review_import(args: argparse.Namespace) -> None:
    dedup = _load_state(args, need_encoder=False)
    result = dedup.calibrate(args.labels, target_precision=args.target_precision)
    dedup.save(args.state)
    print(result.summary(), file=sys.stderr)
    print(json.dumps(result.to_dict()))


def cmd_eval_index(args: argparse.Namespace) -> None:
    from simsearch.applications._items import encode_texts
    from simsearch.evaluation import evaluate
    from simsearch.index import Index

    path = Path(args.index)
    items = meta = None
    if path.is_dir():
        index, items, meta = _open_index_dir(args.index)
    else:
        index = Index.load(path)
    vectors = ids = None
    if args.vectors:
        vectors = np.load(args.vectors, allow_pickle=False)
        ids = np.load(args.ids, allow_pickle=False) if args.ids else None
    elif not index.rescore:
        if items is None:
            raise CommandError("the index keeps no float32 originals: pass --vectors FILE.npy (row i: id i, or --ids)")
        if args.model is None and meta and meta.get("model_path"):
            args.model = meta["model_path"]
        print(f"encoding {items.num_rows} titles for the float32 originals", file=sys.stderr)
        vectors = encode_texts(_tables.text_column(items, "title"), _encoder(args), _progress(args))
    if args.queries:
        if args.queries.endswith(".npy"):
            queries = np.load(args.queries, allow_pickle=False)
        else:
            qt = _tables.read_table(args.queries, [args.text_col], name=args.queries)
            queries = encode_texts(_tables.text_column(qt, args.text_col, name=args.queries), _encoder(args), _progress(args))
    else:
        rng = np.random.default_rng(0)
        if vectors is not None:
            queries = np.asarray(vectors)[rng.choice(len(vectors), size=min(args.sample, len(vectors)), replace=False)]
        else:
            all_ids = index.ids()
            queries = index.get_vectors(all_ids[rng.choice(len(all_ids), size=min(args.sample, len(all_ids)), replace=False)])
    report = evaluate(index, queries, k=args.k, vectors=vectors, ids=ids, ef=args.ef)
    print(report.summary(), file=sys.stderr)
    print(json.dumps({"task": "index", **{k: round(v, 4) if isinstance(v, float) else v for k, v in report.to_dict().items()}}))


# -- demo ---------------------------------------------------------------------


def demo_sample_path() -> Path:
    """Path of the PriceRunner sample shipped in the package (see its README)."""
    return Path(__file__).resolve().parent / "data" / "pricerunner_sample.csv"


def cmd_demo(args: argparse.Namespace) -> None:
    from simsearch.applications import CatalogMatcher, find_duplicates, mean_group_f1

    start = time.perf_counter()
    path = demo_sample_path()
    offers = _tables.read_table(path)
    print(f"PriceRunner sample: {offers.num_rows} offers of {len(set(offers.column('cluster_id').to_pylist()))} products ({path.name}, provenance in {path.parent / 'README.md'})")
    encoder = _encoder(args)

    print("\n== Duplicate offers (find_duplicates) ==")
    pairs, groups = find_duplicates(offers, k=10, encoder=encoder, include_singletons=True, progress=False)
    titles = dict(zip(offers.column("id").to_pylist(), offers.column("title").to_pylist()))
    truth = dict(zip(offers.column("id").to_pylist(), offers.column("cluster_id").to_pylist()))
    grouped = groups.filter(pc.greater(groups.column("group_size"), 1))
    shown = 0
    for gid in sorted(set(grouped.column("group_id").to_pylist()))[: args.show]:
        g = grouped.filter(pc.equal(grouped.column("group_id"), gid)).to_pylist()
        canon = g[0]["canonical_id"]
        print(f"group {gid} ({len(g)} offers), canonical: {titles[canon]!r}")
        for row in g:
            if row["id"] != canon:
                score = _pair_score(pairs, canon, row["id"])
                print(f"    {score}  {titles[row['id']]!r}")
        shown += 1
    ids = groups.column("id").to_pylist()
    f1 = mean_group_f1([truth[i] for i in ids], groups.column("group_id").to_pylist())
    print(f"{pairs.num_rows} pairs above the threshold, {len(set(grouped.column('group_id').to_pylist()))} groups; mean F1 against the true products: {f1:.3f}")

    print("\n== Matching offers to the product catalog (CatalogMatcher) ==")
    labels = {}
    for cid, label in zip(offers.column("cluster_id").to_pylist(), offers.column("cluster_label").to_pylist()):
        labels[cid] = label
    catalog = pa.table({"id": list(labels), "title": list(labels.values())})
    matcher = CatalogMatcher(encoder, k=1, progress=False).fit(catalog)
    best = matcher.match(offers)
    for row in best.slice(0, args.show).to_pylist():
        mark = "match" if row["is_match"] else "no match"
        print(f"    {row['score']:.3f} {mark:8s} {titles[row['listing_id']]!r} -> {labels[row['product_id']]!r}")
    right = sum(truth[r["listing_id"]] == r["product_id"] for r in best.to_pylist())
    print(f"top-1 product is the true one for {right} of {best.num_rows} offers ({right / best.num_rows:.1%}); catalog of {catalog.num_rows} products")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


def _pair_score(pairs: pa.Table, a: Any, b: Any) -> str:
    for x, y, s in zip(pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist(), pairs.column("score").to_pylist()):
        if {x, y} == {a, b}:
            return f"{s:.3f}"
    return "  -  "  # joined through the group, not by a direct pair


# -- serve --------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> None:
    from simsearch.serving.app import ServerLimits, serve

    limits = ServerLimits(max_body_bytes=args.max_body_bytes, max_items=args.max_items, timeout_ms=args.timeout_ms or None)
    print(f"simsearch: serving {args.index} on http://{args.host}:{args.port} (ready when GET /readyz says 200)", file=sys.stderr)
    try:
        serve(
            args.index, model=args.model, host=args.host, port=args.port, token=args.token, limits=limits, cache=args.cache,
            max_batch_size=args.max_batch_size, model_batch_size=args.model_batch_size, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, on_miss=args.on_miss, snapshot_every=args.snapshot_every, threads=args.threads,
        )
    except RuntimeError as err:  # the model or index failed to load: exit 2 like any user mistake
        raise CommandError(str(err)) from err


# -- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simsearch`` command."""
    parser = argparse.ArgumentParser(prog="simsearch", description="Similarity search for product catalogs.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_index = sub.add_parser("index", help="build an index folder from a table of titles")
    index_sub = p_index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    p = index_sub.add_parser("build", help="encode ITEMS and write an index folder")
    p.add_argument("items", help="Parquet or CSV with id and title columns")
    p.add_argument("--out", required=True, help="index folder to write")
    _add_columns(p)
    _add_encoder_args(p)
    p.add_argument("--M", type=int, default=16, help="HNSW graph degree (default 16)")
    p.add_argument("--ef-construction", type=int, default=200, help="HNSW build candidate list (default 200)")
    p.add_argument("--attr-col", action="append", default=[], metavar="COL",
                   help="store this column (integers or strings) for 'search --filter COL=VALUE'; repeatable")  # fmt: skip
    _add_engine_args(p)
    p.set_defaults(func=cmd_index_build)

    p = sub.add_parser("search", help="search an index folder with query texts")
    p.add_argument("index", help="folder written by 'simsearch index build'")
    p.add_argument("query", nargs="*", help="query texts")
    p.add_argument("--queries", help="Parquet or CSV of queries (column --text-col)")
    p.add_argument("--text-col", default="title")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", help="write results here (.parquet or .csv) instead of printing")
    p.add_argument("--filter", action="append", default=[], metavar="NAME=VALUE",
                   help="only items whose attribute NAME is VALUE; repeat: values of one name OR, names AND")  # fmt: skip
    _add_encoder_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("match", help="match LISTINGS to the products of CATALOG")
    p.add_argument("catalog", help="Parquet/CSV catalog, or an index folder")
    p.add_argument("listings", help="Parquet/CSV listings")
    _add_columns(p, image=True)
    p.add_argument("--listing-id-col", help="id column of the listings (default: --id-col)")
    p.add_argument("--listing-text-col", help="title column of the listings (default: --text-col)")
    p.add_argument("-k", type=int, default=5, help="products per listing (default 5)")
    p.add_argument("--threshold", type=float, default=None, help="least score of a match (default 0.5)")
    p.add_argument("--pairs", help="labelled pairs (listing_id, product_id, label) to calibrate the threshold on")
    p.add_argument("--no-lexical", action="store_true", help="embedding cosine only")
    p.add_argument("--out", help="write results here instead of printing")
    _add_encoder_args(p)
    p.set_defaults(func=cmd_match)

    p = sub.add_parser("finetune", help="fine-tune the text model on labelled pairs of titles")
    p.add_argument("pairs", help="Parquet/CSV with two title columns and a 0/1 label column")
    p.add_argument("--out", required=True, help="new folder for the fine-tuned model")
    p.add_argument("--valid", default=None, help="labelled pairs for early stopping (default: 15%% of PAIRS)")
    p.add_argument("--left-col", default="left")
    p.add_argument("--right-col", default="right")
    p.add_argument("--label-col", default="label")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=3e-5)
    p.add_argument("--max-length", type=int, default=48, help="tokens per title in training (default 48)")
    p.add_argument("--trainable-layers", type=int, default=None, help="train only the top N layers (faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder to start from (default: bundled all-MiniLM-L6-v2)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train-matcher", help="learn a matcher from labelled (listing, product) pairs and save it")
    p.add_argument("pairs", help="Parquet/CSV: listing_id, product_id, label (1 match, 0 not)")
    p.add_argument("listings", help="Parquet/CSV listings (ids and titles)")
    p.add_argument("catalog", help="Parquet/CSV catalog (ids and titles)")
    p.add_argument("--out", required=True, help="new folder for the matcher")
    p.add_argument("--valid", default=None, help="labelled pairs for early stopping and the threshold")
    _add_columns(p)
    p.add_argument("--listing-id-col", help="id column of the listings (default: --id-col)")
    p.add_argument("--listing-text-col", help="title column of the listings (default: --text-col)")
    p.add_argument("--price-col", default=None, help="price column of both tables")
    p.add_argument("--extra-col", action="append", help="another column of both tables to compare (repeatable)")
    p.add_argument("--no-finetune", action="store_true", help="keep the text model as it is")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--trainable-layers", type=int, default=3, help="fine-tune only the top N layers (default 3)")
    p.add_argument("-k", type=int, default=5, help="products per listing in later matches (default 5)")
    _add_encoder_args(p)
    p.set_defaults(func=cmd_train_matcher)

    p = sub.add_parser("dedup", help="find duplicate items in a table of titles")
    p.add_argument("items", help="Parquet or CSV with id and title columns")
    _add_columns(p)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="least pair score (default 0.5)")
    p.add_argument("--label-col", help="column of known groups: choose the threshold from it")
    p.add_argument("--max-group-size", type=int, default=100)
    p.add_argument("--no-lexical", action="store_true", help="embedding cosine only")
    p.add_argument("--groups", help="write the groups table here")
    p.add_argument("--out", help="write the pairs table here instead of printing (with --state: the change table)")
    p.add_argument("--state", help="incremental dedup state folder: created from ITEMS, or updated with ITEMS as new items")
    p.add_argument("--removed", help="with --state: table of ids (column --id-col) to remove")
    _add_encoder_args(p)
    _add_engine_args(p)
    p.set_defaults(func=cmd_dedup)

    p_review = sub.add_parser("review", help="label pairs near the dedup threshold and recalibrate it")
    review_sub = p_review.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    p = review_sub.add_parser("export", help="write pairs to label (CSV with an empty label column)")
    p.add_argument("out", help="CSV (or Parquet) to write")
    p.add_argument("--state", required=True, help="dedup state folder")
    p.add_argument("-n", type=int, default=200, help="pairs to label (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_review_export)
    p = review_sub.add_parser("import", help="recalibrate the threshold from a labelled CSV")
    p.add_argument("labels", help="the exported file with its label column filled (1 duplicates, 0 not)")
    p.add_argument("--state", required=True, help="dedup state folder")
    p.add_argument("--target-precision", type=float, default=None, help="lowest threshold with at least this precision (default: maximum F1)")
    p.set_defaults(func=cmd_review_import)

    p = sub.add_parser("classify", help="label ITEMS by kNN over labelled TRAIN titles")
    p.add_argument("train", help="Parquet or CSV with title and label columns")
    p.add_argument("items", help="Parquet or CSV with id and title columns")
    _add_columns(p)
    p.add_argument("--label-col", default="label")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", help="write predictions here instead of printing")
    _add_encoder_args(p)
    p.set_defaults(func=cmd_classify)

    p_eval = sub.add_parser("eval", help="measure quality against known answers")
    eval_sub = p_eval.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    p = eval_sub.add_parser("dedup", help="mean F1 of dedup groups against a label column")
    p.add_argument("items")
    _add_columns(p)
    p.add_argument("--label-col", required=True, help="true group of each item")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="default: the best threshold for the labels")
    p.add_argument("--no-lexical", action="store_true")
    _add_encoder_args(p)
    p.set_defaults(func=cmd_eval_dedup)
    p = eval_sub.add_parser("match", help="recall@k of matching against true (listing, product) pairs")
    p.add_argument("catalog")
    p.add_argument("listings")
    p.add_argument("truth", help="table of true pairs")
    _add_columns(p)
    p.add_argument("--listing-id-col")
    p.add_argument("--listing-text-col")
    p.add_argument("--truth-listing-col", default="listing_id")
    p.add_argument("--truth-product-col", default="product_id")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--no-lexical", action="store_true")
    _add_encoder_args(p)
    p.set_defaults(func=cmd_eval_match)
    p = eval_sub.add_parser("index", help="recall lost to int8 codes vs to the graph")
    p.add_argument("index", help="index folder (simsearch index build) or index file")
    p.add_argument("--queries", help="queries: .npy vectors, or Parquet/CSV texts (default: --sample indexed items)")
    p.add_argument("--vectors", help=".npy float32 originals (default: kept by the index, or re-encoded titles of a folder)")
    p.add_argument("--ids", help=".npy ids of --vectors (default 0..n-1)")
    p.add_argument("--text-col", default="title")
    p.add_argument("--sample", type=int, default=1000, help="queries drawn from the items when --queries is not given")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ef", type=int, default=None)
    _add_encoder_args(p)
    p.set_defaults(func=cmd_eval_index)

    p = sub.add_parser("serve", help="serve an index folder over HTTP (needs: pip install 'simsearch[serve]')")
    p.add_argument("--index", required=True, help="folder written by 'simsearch index build'")
    p.add_argument("--model", default=None, help="model folder (default: the one the index was built with)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--token", default=None, help="bearer token required on every request (default: $SIMSEARCH_TOKEN; none if unset)")
    p.add_argument("--max-batch-size", type=int, default=32, help="most texts per encoder call (default 32; 1 turns batching off)")
    p.add_argument("--model-batch-size", type=int, default=8, help="texts per model run, sorted by length to limit padding (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a batch waits for company (default 5; adaptive)")
    p.add_argument("--max-queue", type=int, default=512, help="texts waiting before 429 (default 512)")
    p.add_argument("--timeout-ms", type=float, default=2000.0, help="deadline of a request that sets none (default 2000; 0: none)")
    p.add_argument("--max-items", type=int, default=256, help="most texts/vectors/items per request, 413 beyond (default 256)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body, 413 beyond (default 1 MiB)")
    p.add_argument("--cache", default=None, help="embedding cache: SQLite file or ':memory:' (default: none)")
    p.add_argument("--on-miss", default="wait", choices=["wait", "async"], help="/v1/embed cache misses: compute (wait) or flag and compute later (async)")
    p.add_argument("--snapshot-every", type=int, default=1000, help="logged writes between snapshots of the folder (default 1000)")
    p.add_argument("--threads", type=int, default=None, help="threads of one encoder call (default: one per physical core)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="deduplicate and match the bundled PriceRunner sample")
    p.add_argument("--show", type=int, default=5, help="groups and matches to print (default 5)")
    _add_encoder_args(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``simsearch`` command; returns the exit status.

    0 on success, 2 on a user mistake (one line on stderr), 130 on Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("simsearch: interrupted", file=sys.stderr)
        return 130
    except (CommandError, FileNotFoundError, ValueError, TypeError, KeyError, OSError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"simsearch: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
