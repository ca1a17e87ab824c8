"""What every ``simsearch`` command shares: the user-mistake error, encoder and column options, output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from simsearch import _tables
from simsearch._validation import check_ef
from simsearch.errors import SimsearchError


class CommandError(SimsearchError):
    """A user mistake reported as one line, exit status 2."""


# -- options ------------------------------------------------------------------


def positive_int(text: str) -> int:
    """``type=`` of options that take a positive integer (a search effort)."""
    try:
        return check_ef(int(text), "value")
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--precision``: the text encoder."""
    p.add_argument("--model", default=None, help="local model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--precision", default="int8", choices=["int8", "fp32"], help="encoder precision (default int8)")


def add_columns(p: argparse.ArgumentParser, image: bool = False) -> None:
    """``--id-col`` and ``--text-col`` (and ``--image-col``) of the input table."""
    p.add_argument("--id-col", default="id", help="id column (default: id)")
    p.add_argument("--text-col", default="title", help="title column (default: title)")
    if image:
        p.add_argument("--image-col", default=None, help="image column: vectors, or paths with an image encoder")


def add_listing_columns(p: argparse.ArgumentParser) -> None:
    """``--listing-id-col`` and ``--listing-text-col`` of a listings table (default: the catalog's)."""
    p.add_argument("--listing-id-col", help="id column of the listings (default: --id-col)")
    p.add_argument("--listing-text-col", help="title column of the listings (default: --text-col)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--engine`` (local or Ray) with its ``--shards`` and ``--workers``."""
    p.add_argument(
        "--engine", default="local", choices=["local", "ray"],
        help="local: this process; ray: encode with Ray Data workers, index shards as Ray actors (pip install 'simsearch[ray]')",
    )  # fmt: skip
    p.add_argument("--shards", type=int, default=4, help="--engine ray: index shards (default 4)")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: most encoding workers (default: the Ray cluster's CPUs less one)")


def listing_columns(args: argparse.Namespace) -> dict[str, str]:
    """The listings' ``id_col`` and ``text_col`` keyword arguments."""
    return {"id_col": args.listing_id_col or args.id_col, "text_col": args.listing_text_col or args.text_col}


# -- library objects from options ---------------------------------------------


def encoder(args: argparse.Namespace) -> Any:
    """The :class:`~simsearch.TextEncoder` that ``--model`` and ``--precision`` name."""
    from simsearch.encoders import TextEncoder

    return TextEncoder(model=args.model, precision=args.precision)


def progress(args: argparse.Namespace) -> bool | None:
    """``progress=`` for the library: off with ``-q``, else a bar when stderr is a terminal."""
    return False if args.quiet else None


# -- output -------------------------------------------------------------------


def write_or_print(table: pa.Table, out: str | None, rows: int = 20) -> None:
    """Write ``table`` to ``out`` (Parquet or CSV by suffix), or print its first ``rows`` rows."""
    if out:
        write_table(table, out)
        return
    print_table(table, rows)


def write_table(table: pa.Table, out: str) -> None:
    """Write ``table`` to ``out`` and say so on stderr."""
    _tables.write_table(table, out)
    print(f"wrote {table.num_rows} rows to {out}", file=sys.stderr)


def print_table(table: pa.Table, rows: int = 20) -> None:
    """Print the first ``rows`` rows as aligned columns (cells cut at 60 characters)."""
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


def flat_lists(table: pa.Table, out: str | None) -> pa.Table:
    """List columns (``top_features``) joined with "; " unless written to Parquet, which keeps lists."""
    if out and Path(out).suffix.lower() in (".parquet", ".pq", ".parq"):
        return table
    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            joined = ["; ".join(v or []) for v in table.column(i).to_pylist()]
            table = table.set_column(i, field.name, pa.array(joined, type=pa.string()))
    return table


def rounded(report: dict[str, Any]) -> dict[str, Any]:
    """A JSON report with floats rounded to 4 decimals."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}


def open_sharded(folder: Path) -> Any:
    """Open the saved sharded index of an index folder built with ``--engine ray`` (in this process)."""
    from simsearch.sharding import ShardedIndex

    return ShardedIndex.load(folder)
