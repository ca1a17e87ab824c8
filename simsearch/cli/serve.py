"""``simsearch serve``: serve an index folder over HTTP."""

from __future__ import annotations

import argparse
import sys

from simsearch.cli._common import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``simsearch`` parser."""
    p = subparsers.add_parser("serve", help="serve an index folder over HTTP (needs: pip install 'simsearch[serve]')")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``simsearch serve``: :func:`simsearch.serving.app.serve` until stopped."""
    from simsearch.serving.app import ServerLimits, serve

    limits = ServerLimits(max_body_bytes=args.max_body_bytes, max_items=args.max_items, timeout_ms=args.timeout_ms or None)
    print(f"simsearch: serving {args.index} on http://{args.host}:{args.port} (ready when GET /readyz says 200)", file=sys.stderr)
    try:
        serve(
            args.index, model=args.model, host=args.host, port=args.port, token=args.token, limits=limits, cache=args.cache,
            max_batch_size=args.max_batch_size, model_batch_size=args.model_batch_size, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, on_miss=args.on_miss, snapshot_every=args.snapshot_every, threads=args.threads,
        )  # fmt: skip
    except RuntimeError as err:  # the model or index failed to load: exit 2 like any user mistake
        raise CommandError(str(err)) from err
