"""``simsearch review export|import|serve``: label pairs near a dedup state's threshold (in a CSV or in the browser), then recalibrate it."""

from __future__ import annotations

import argparse
import json
import sys

from simsearch.cli.dedup import load_state


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``review export``, ``review import`` and ``review serve`` to the ``simsearch`` parser."""
    p_review = subparsers.add_parser("review", help="label pairs near the dedup threshold and recalibrate it")
    review_sub = p_review.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    p = review_sub.add_parser("export", help="write pairs to label (CSV with an empty label column)")
    p.add_argument("out", help="CSV (or Parquet) to write")
    p.add_argument("--state", required=True, help="dedup state folder")
    p.add_argument("-n", type=int, default=200, help="pairs to label (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_export)
    p = review_sub.add_parser("import", help="recalibrate the threshold from a labelled CSV")
    p.add_argument("labels", help="the exported file with its label column filled (1 duplicates, 0 not)")
    p.add_argument("--state", required=True, help="dedup state folder")
    p.add_argument("--target-precision", type=float, default=None, help="lowest threshold with at least this precision (default: maximum F1)")
    p.set_defaults(func=run_import)
    register_serve(review_sub)


def run_export(args: argparse.Namespace) -> None:
    """``simsearch review export``: :meth:`~simsearch.Deduplicator.export_review`."""
    dedup = load_state(args, need_encoder=False)
    table = dedup.export_review(args.out, n=args.n, seed=args.seed)
    print(
        f"wrote {table.num_rows} pairs to {args.out} (threshold {dedup.threshold_:.3f}): fill the label column "
        f"with 1 (duplicates) or 0, then run: simsearch review import {args.out} --state {args.state}",
        file=sys.stderr,
    )


def run_import(args: argparse.Namespace) -> None:
    """``simsearch review import``: :meth:`~simsearch.Deduplicator.calibrate`, saved into the state."""
    dedup = load_state(args, need_encoder=False)
    result = dedup.calibrate(args.labels, target_precision=args.target_precision)
    dedup.save(args.state)
    print(result.summary(), file=sys.stderr)
    print(json.dumps(result.to_dict()))


def register_serve(review_sub: argparse._SubParsersAction) -> None:
    """Add ``review serve``: the labelling page of the review loop."""
    p = review_sub.add_parser("serve", help="label pairs in the browser (keys m / n / s), then recalibrate")
    p.add_argument("--state", required=True, help="dedup state folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8766)
    p.add_argument("--token", default=None, help="secret every request must carry (required beyond 127.0.0.1)")
    p.add_argument("-n", type=int, default=200, help="pairs to label in a new review (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default=None, help="labels file (default STATE/review/labels.json)")
    p.add_argument("--target-precision", type=float, default=None, help="recalibrate to the lowest threshold with at least this precision (default: maximum F1)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    """``simsearch review serve``: :func:`~simsearch.report.review_app.serve_review`."""
    from simsearch.report.review_app import serve_review

    serve_review(
        args.state, host=args.host, port=args.port, token=args.token, labels_path=args.labels, n=args.n, seed=args.seed,
        target_precision=args.target_precision,
        on_ready=lambda url: print(f"review page of {args.state}: {url} (Ctrl-C to stop)", file=sys.stderr, flush=True),
    )  # fmt: skip
