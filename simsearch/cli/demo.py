"""``simsearch demo``: deduplicate and match the PriceRunner sample shipped in the package."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from simsearch import _tables
from simsearch.cli import _common


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``simsearch`` parser."""
    p = subparsers.add_parser("demo", help="deduplicate and match the bundled PriceRunner sample")
    p.add_argument("--show", type=int, default=5, help="groups and matches to print (default 5)")
    _common.add_encoder_args(p)
    p.set_defaults(func=run)


def demo_sample_path() -> Path:
    """Path of the PriceRunner sample shipped in the package (see its README)."""
    return Path(__file__).resolve().parents[1] / "data" / "pricerunner_sample.csv"


def run(args: argparse.Namespace) -> None:
    """``simsearch demo``: :func:`~simsearch.find_duplicates` and :class:`~simsearch.CatalogMatcher` on the sample, printed."""
    from simsearch.applications import CatalogMatcher, find_duplicates, mean_group_f1

    start = time.perf_counter()
    path = demo_sample_path()
    offers = _tables.read_table(path)
    print(f"PriceRunner sample: {offers.num_rows} offers of {len(set(offers.column('cluster_id').to_pylist()))} products ({path.name}, provenance in {path.parent / 'README.md'})")
    encoder = _common.encoder(args)

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
