"""``simsearch report dedup|match``: one self-contained HTML file to look at the pairs, groups or matches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simsearch.cli._common import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``report dedup`` and ``report match`` to the ``simsearch`` parser."""
    p_report = subparsers.add_parser("report", help="write an HTML report of dedup groups or matches (opens offline)")
    sub = p_report.add_subparsers(dest="report_command", metavar="KIND", required=True)
    p = sub.add_parser(
        "dedup", help="report of a dedup state (--state) or of dedup tables (--pairs, --groups, --items)"
    )
    p.add_argument("--state", help="dedup state folder (simsearch dedup ITEMS --state DIR)")
    p.add_argument("--pairs", help="pairs table written by simsearch dedup --out")
    p.add_argument("--groups", help="groups table written by simsearch dedup --groups")
    p.add_argument("--items", help="the items table the dedup read (ids and titles)")
    p.add_argument("--id-col", default="id")
    p.add_argument("--text-col", default="title")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="with --pairs: the threshold to mark (default the lowest pair score); a state marks its own",
    )
    p.add_argument(
        "--labels",
        help="labelled pairs (id_a, id_b, label) for the calibration curve (default with --state: the review page's labels)",
    )
    p.add_argument("--out", required=True, help="HTML file to write")
    p.set_defaults(func=run_dedup)
    p = sub.add_parser("match", help="report of simsearch match output: each listing with its candidates")
    p.add_argument("matches", help="table written by simsearch match")
    p.add_argument("--listings", required=True, help="the listings table that was matched")
    p.add_argument("--catalog", required=True, help="the catalog table")
    p.add_argument("--id-col", default="id")
    p.add_argument("--text-col", default="title")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--out", required=True, help="HTML file to write")
    p.set_defaults(func=run_match)


def _done(path: str) -> None:
    size = Path(path).stat().st_size
    print(f"wrote {path} ({size / 1e6:.1f} MB): open it in any browser, offline", file=sys.stderr)


def run_dedup(args: argparse.Namespace) -> None:
    """``simsearch report dedup``: :func:`~simsearch.report.state_report` or :func:`~simsearch.report.dedup_report`."""
    from simsearch import _tables
    from simsearch.report import dedup_report, state_report

    if args.state:
        if args.pairs or args.groups or args.items:
            raise CommandError("--state does not combine with --pairs/--groups/--items")
        state_report(args.state, args.out, labels=args.labels)
    else:
        if not (args.pairs and args.groups):
            raise CommandError("give --state DIR, or --pairs and --groups (and --items for the titles)")
        dedup_report(
            _tables.read_table(args.pairs, name=args.pairs), _tables.read_table(args.groups, name=args.groups),
            args.items, args.out, id_col=args.id_col, text_col=args.text_col, threshold=args.threshold, labels=args.labels,
        )  # fmt: skip
    _done(args.out)


def run_match(args: argparse.Namespace) -> None:
    """``simsearch report match``: :func:`~simsearch.report.match_report`."""
    from simsearch.report import match_report

    match_report(
        args.matches,
        args.listings,
        args.catalog,
        args.out,
        id_col=args.id_col,
        text_col=args.text_col,
        threshold=args.threshold,
    )
    _done(args.out)
