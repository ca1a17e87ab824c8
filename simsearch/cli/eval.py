"""``simsearch eval dedup|match|index``: quality against known answers, one JSON line on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from simsearch import _tables
from simsearch.cli import _common
from simsearch.cli._common import CommandError
from simsearch.index.folder import open_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval dedup``, ``eval match`` and ``eval index`` to the ``simsearch`` parser."""
    p_eval = subparsers.add_parser("eval", help="measure quality against known answers")
    eval_sub = p_eval.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    p = eval_sub.add_parser("dedup", help="mean F1 of dedup groups against a label column")
    p.add_argument("items")
    _common.add_columns(p)
    p.add_argument("--label-col", required=True, help="true group of each item")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="default: the best threshold for the labels")
    p.add_argument("--no-lexical", action="store_true")
    _common.add_encoder_args(p)
    p.set_defaults(func=run_dedup)
    p = eval_sub.add_parser("match", help="recall@k of matching against true (listing, product) pairs")
    p.add_argument("catalog")
    p.add_argument("listings")
    p.add_argument("truth", help="table of true pairs")
    _common.add_columns(p)
    p.add_argument("--listing-id-col")
    p.add_argument("--listing-text-col")
    p.add_argument("--truth-listing-col", default="listing_id")
    p.add_argument("--truth-product-col", default="product_id")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--no-lexical", action="store_true")
    _common.add_encoder_args(p)
    p.set_defaults(func=run_match)
    p = eval_sub.add_parser("index", help="recall lost to int8 codes vs to the graph")
    p.add_argument("index", help="index folder (simsearch index build) or index file")
    p.add_argument("--queries", help="queries: .npy vectors, or Parquet/CSV texts (default: --sample indexed items)")
    p.add_argument("--vectors", help=".npy float32 originals (default: kept by the index, or re-encoded titles of a folder)")
    p.add_argument("--ids", help=".npy ids of --vectors (default 0..n-1)")
    p.add_argument("--text-col", default="title")
    p.add_argument("--sample", type=int, default=1000, help="queries drawn from the items when --queries is not given")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ef", type=int, default=None)
    _common.add_encoder_args(p)
    p.set_defaults(func=run_index)


def run_dedup(args: argparse.Namespace) -> None:
    """``simsearch eval dedup``: mean group F1 and pairwise precision/recall, at a given or the best threshold."""
    from simsearch.applications import choose_threshold, find_duplicates, mean_group_f1, pairwise_precision_recall

    labels = _tables.read_table(args.items, [args.id_col, args.label_col], name=args.items)
    lexical = not args.no_lexical
    if args.threshold is None:
        choice = choose_threshold(
            args.items, None, label_col=args.label_col, k=args.k, id_col=args.id_col, text_col=args.text_col,
            encoder=_common.encoder(args), lexical=lexical, progress=_common.progress(args),
        )  # fmt: skip
        result = {"threshold": choice.threshold, "mean_f1": choice.mean_f1, "precision": choice.precision, "recall": choice.recall, "threshold_from": "labels"}
    else:
        _, groups = find_duplicates(
            args.items, threshold=args.threshold, k=args.k, id_col=args.id_col, text_col=args.text_col,
            encoder=_common.encoder(args), lexical=lexical, include_singletons=True, progress=_common.progress(args),
        )  # fmt: skip
        order = {v: i for i, v in enumerate(groups.column("id").to_pylist())}
        rows = [order[v] for v in labels.column(args.id_col).to_pylist()]
        predicted = np.asarray(groups.column("group_id").to_numpy())[rows]
        truth = labels.column(args.label_col).to_numpy(zero_copy_only=False)
        p, r = pairwise_precision_recall(truth, predicted)
        result = {"threshold": args.threshold, "mean_f1": mean_group_f1(truth, predicted), "precision": p, "recall": r, "threshold_from": "given"}
    print(json.dumps({"task": "dedup", "items": labels.num_rows, **_common.rounded(result)}))


def run_match(args: argparse.Namespace) -> None:
    """``simsearch eval match``: recall@1, @5 and @k of :class:`~simsearch.CatalogMatcher` against true pairs."""
    from simsearch.applications import CatalogMatcher
    from simsearch.applications.metrics import match_recall_at_k

    truth = _tables.read_table(args.truth, [args.truth_listing_col, args.truth_product_col], name=args.truth)
    matcher = CatalogMatcher(
        _common.encoder(args), k=args.k, id_col=args.id_col, text_col=args.text_col, lexical=not args.no_lexical,
        progress=_common.progress(args),
    )  # fmt: skip
    matcher.fit(args.catalog)
    found = matcher.match(args.listings, **_common.listing_columns(args))
    true_pairs = set(zip(truth.column(args.truth_listing_col).to_pylist(), truth.column(args.truth_product_col).to_pylist()))
    if not true_pairs:
        raise CommandError(f"{args.truth} is empty: it has no rows")
    found_rows = zip(found.column("listing_id").to_pylist(), found.column("product_id").to_pylist(), found.column("rank").to_pylist())
    recall = match_recall_at_k(true_pairs, found_rows, sorted({1, min(5, args.k), args.k}))
    print(json.dumps({"task": "match", "listings": len({a for a, _ in true_pairs}), **_common.rounded(recall)}))



def run_index(args: argparse.Namespace) -> None:
    """``simsearch eval index``: :func:`simsearch.evaluate` on a folder or index file (recall lost to codes vs graph)."""
    from simsearch.applications._items import encode_texts
    from simsearch.evaluation import evaluate
    from simsearch.index import Index

    items = meta = None
    if Path(args.index).is_dir():
        index, items, meta = open_folder(args.index, open_sharded=_common.open_sharded)
    else:
        index = Index.load(args.index)
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
        vectors = encode_texts(_tables.text_column(items, "title"), _common.encoder(args), _common.progress(args))
    if args.queries:
        if args.queries.endswith(".npy"):
            queries = np.load(args.queries, allow_pickle=False)
        else:
            qt = _tables.read_table(args.queries, [args.text_col], name=args.queries)
            queries = encode_texts(_tables.text_column(qt, args.text_col, name=args.queries), _common.encoder(args), _common.progress(args))
    else:
        rng = np.random.default_rng(0)
        if vectors is not None:
            queries = np.asarray(vectors)[rng.choice(len(vectors), size=min(args.sample, len(vectors)), replace=False)]
        else:
            all_ids = index.ids()
            queries = index.get_vectors(all_ids[rng.choice(len(all_ids), size=min(args.sample, len(all_ids)), replace=False)])
    report = evaluate(index, queries, k=args.k, vectors=vectors, ids=ids, ef=args.ef)
    print(report.summary(), file=sys.stderr)
    print(json.dumps({"task": "index", **_common.rounded(report.to_dict())}))
