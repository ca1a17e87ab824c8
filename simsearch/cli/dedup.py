"""``simsearch dedup``: duplicate pairs and groups of a table of titles, at once or into an incremental state."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from simsearch import _tables
from simsearch.cli import _common
from simsearch.cli._common import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dedup`` to the ``simsearch`` parser."""
    p = subparsers.add_parser("dedup", help="find duplicate items in a table of titles")
    p.add_argument("items", help="Parquet or CSV with id and title columns")
    _common.add_columns(p)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="least pair score: a probability for titles (default 0.15), a cosine for vectors (default 0.9)")
    p.add_argument("--label-col", help="column of known groups: choose the threshold from it")
    p.add_argument("--max-group-size", type=int, default=100)
    p.add_argument("--no-lexical", action="store_true", help="embedding cosine only")
    p.add_argument("--groups", help="write the groups table here")
    p.add_argument("--out", help="write the pairs table here instead of printing (with --state: the change table)")
    p.add_argument("--state", help="incremental dedup state folder: created from ITEMS, or updated with ITEMS as new items")
    p.add_argument("--removed", help="with --state: table of ids (column --id-col) to remove")
    _common.add_encoder_args(p)
    _common.add_engine_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``simsearch dedup``: :func:`~simsearch.find_duplicates` (or its Ray job, or the incremental state)."""
    from simsearch.applications import choose_threshold, find_duplicates

    if args.state and args.engine == "ray":
        raise CommandError("--engine ray does not apply to --state (the incremental dedup runs in this process)")
    if args.state:
        _run_state(args)
        return
    if args.removed:
        raise CommandError("--removed needs --state DIR (the state the items are removed from)")
    lexical = not args.no_lexical
    ray = args.engine == "ray"
    # On Ray the workers build their own encoders from --model/--precision.
    common: dict[str, Any] = dict(
        k=args.k, id_col=args.id_col, text_col=args.text_col, encoder=None if ray else _common.encoder(args),
        lexical=lexical, max_group_size=args.max_group_size, progress=_common.progress(args), engine=args.engine,
    )  # fmt: skip
    if ray:
        common.update(n_shards=args.shards, workers=args.workers, model=args.model, precision=args.precision)
    if args.label_col:
        # one candidate join: the threshold is chosen on it and the groups come from it
        choice = choose_threshold(args.items, None, label_col=args.label_col, **common)
        print(
            f"threshold {choice.threshold:.3f} chosen from {args.label_col!r}: mean F1 {choice.mean_f1:.3f}, "
            f"pairwise precision {choice.precision:.3f}, recall {choice.recall:.3f}",
            file=sys.stderr,
        )
        pairs, groups = choice.duplicates
    else:
        pairs, groups = find_duplicates(args.items, threshold=args.threshold, **common)
    n_groups = len(set(groups.column("group_id").to_pylist()))
    print(f"{pairs.num_rows} duplicate pairs, {n_groups} groups holding {groups.num_rows} items", file=sys.stderr)
    if args.groups:
        _common.write_table(groups, args.groups)
    _common.write_or_print(pairs, args.out)


def load_state(args: argparse.Namespace, need_encoder: bool) -> Any:
    """The :class:`~simsearch.Deduplicator` saved in ``--state`` (with the encoder when it will encode)."""
    from simsearch.applications import Deduplicator

    if not Path(args.state).is_dir():
        raise FileNotFoundError(f"no dedup state at {args.state!r} (make one with: simsearch dedup ITEMS --state DIR)")
    encoder = _common.encoder(args) if need_encoder else None
    return Deduplicator.load(args.state, encoder=encoder, progress=_common.progress(args))


def _run_state(args: argparse.Namespace) -> None:
    """Create the state from ITEMS, or update it with ITEMS (new) and --removed; write the change table."""
    from simsearch.applications import Deduplicator

    if args.label_col:
        raise CommandError("--label-col does not combine with --state; calibrate with: simsearch review export/import")
    start = time.perf_counter()
    if (Path(args.state) / "CURRENT").exists():
        dedup = load_state(args, need_encoder=True)
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
            threshold=args.threshold, k=args.k, encoder=_common.encoder(args), max_group_size=args.max_group_size,
            id_col=args.id_col, text_col=args.text_col, lexical=not args.no_lexical, progress=_common.progress(args),
        ).fit(args.items)  # fmt: skip
        groups = dedup.groups_
        changes = pa.table(
            {
                "id": groups.column("id"),
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
