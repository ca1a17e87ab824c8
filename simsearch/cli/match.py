"""``simsearch match``: match listings to the products of a catalog, an index folder or a saved matcher."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from simsearch.cli import _common
from simsearch.index.folder import open_folder


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``match`` to the ``simsearch`` parser."""
    p = subparsers.add_parser("match", help="match LISTINGS to the products of CATALOG")
    p.add_argument("catalog", help="Parquet/CSV catalog, or an index folder")
    p.add_argument("listings", help="Parquet/CSV listings")
    _common.add_columns(p, image=True)
    _common.add_listing_columns(p)
    p.add_argument("-k", type=int, default=5, help="products per listing (default 5)")
    p.add_argument("--threshold", type=float, default=None, help="least match probability (default: the calibrated default threshold)")
    p.add_argument("--pairs", help="labelled pairs (listing_id, product_id, label) to calibrate the threshold on")
    p.add_argument("--no-lexical", action="store_true", help="embedding cosine only")
    p.add_argument("--out", help="write results here instead of printing")
    _common.add_encoder_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``simsearch match``: fit a :class:`~simsearch.CatalogMatcher` on the catalog (or load one) and match."""
    from simsearch.applications import CatalogMatcher

    if (Path(args.catalog) / "matcher.json").is_file():  # a matcher saved by 'simsearch train-matcher'
        learned = CatalogMatcher.load(args.catalog, progress=_common.progress(args))
        table = learned.match(args.listings, **_common.listing_columns(args))
        _common.write_or_print(_common.flat_lists(table, args.out), args.out)
        return
    catalog, forced_id, model_path = _catalog_source(args.catalog)
    if model_path and args.model is None:
        args.model = model_path
    matcher = CatalogMatcher(
        _common.encoder(args),
        threshold=args.threshold,
        k=args.k,
        id_col=forced_id or args.id_col,
        text_col="title" if forced_id else args.text_col,
        image_col=args.image_col,
        lexical=not args.no_lexical,
        progress=_common.progress(args),
    )
    matcher.fit(catalog)
    if args.pairs:
        cal = matcher.calibrate(args.pairs, args.listings, **_common.listing_columns(args))
        print(f"calibrated threshold {cal.threshold:.3f}: F1 {cal.f1:.3f}, precision {cal.precision:.3f}, recall {cal.recall:.3f} on {cal.n_labelled} pairs", file=sys.stderr)
    table = matcher.match(args.listings, **_common.listing_columns(args))
    _common.write_or_print(table, args.out)


def _catalog_source(path: str) -> tuple[Any, str, str | None]:
    """A catalog file, or the items of an index folder (ids and titles) with the folder's model."""
    if Path(path).is_dir():
        _, items, meta = open_folder(path, open_sharded=_common.open_sharded)
        return items, "id", meta.get("model_path")
    return path, "", None
