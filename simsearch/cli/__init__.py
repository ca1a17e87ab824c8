"""The ``simsearch`` command line: index, search, match, dedup, classify, eval, demo, serve.

Every command reads Parquet or CSV (by suffix) through pyarrow and writes
Parquet or CSV the same way. A user mistake (a missing file or column, an empty
table, a dimension mismatch) ends the command with exit status 2 and one line
on stderr, ``simsearch: error: ...``, never a traceback.

Each command lives in its own module with ``register(subparsers)``, which adds
its arguments, and ``run(args)`` (one per subcommand), which is argument
handling around one library call: :mod:`~simsearch.cli.index` (``index build``,
``search``), :mod:`~simsearch.cli.match`, :mod:`~simsearch.cli.train`
(``finetune``, ``train-matcher``), :mod:`~simsearch.cli.dedup`,
:mod:`~simsearch.cli.review`, :mod:`~simsearch.cli.classify`,
:mod:`~simsearch.cli.eval`, :mod:`~simsearch.cli.serve` and
:mod:`~simsearch.cli.demo`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from simsearch.cli import classify, dedup, demo, eval, index, match, report, review, serve, train
from simsearch.cli._common import CommandError
from simsearch.cli.demo import demo_sample_path
from simsearch.errors import SimsearchError

__all__ = ["CommandError", "build_parser", "demo_sample_path", "main"]

# In the order ``simsearch --help`` lists them.
_COMMANDS = (index, match, train, dedup, review, report, classify, eval, serve, demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simsearch`` command, from each command module's ``register``."""
    parser = argparse.ArgumentParser(prog="simsearch", description="Similarity search for product catalogs.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``simsearch`` command; returns the exit status.

    0 on success, 2 on a user mistake or any error the library raises on
    purpose (:class:`~simsearch.SimsearchError`; one line on stderr), 130 on
    Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("simsearch: interrupted", file=sys.stderr)
        return 130
    except (SimsearchError, FileNotFoundError, ValueError, TypeError, KeyError, OSError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"simsearch: error: {message}", file=sys.stderr)
        return 2
    return 0
