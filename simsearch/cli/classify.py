"""``simsearch classify``: label items by kNN over labelled titles."""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa

from simsearch import _tables
from simsearch.cli import _common
from simsearch.cli._common import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``classify`` to the ``simsearch`` parser."""
    p = subparsers.add_parser("classify", help="label ITEMS by kNN over labelled TRAIN titles")
    p.add_argument("train", help="Parquet or CSV with title and label columns")
    p.add_argument("items", help="Parquet or CSV with id and title columns")
    _common.add_columns(p)
    p.add_argument("--label-col", default="label")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--out", help="write predictions here instead of printing")
    _common.add_encoder_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``simsearch classify``: fit a :class:`~simsearch.KNNClassifier`; each item's best label and its probability."""
    from simsearch.applications import KNNClassifier

    train = _tables.read_table(args.train, [args.text_col, args.label_col], name=args.train)
    _tables.require_rows(train, name=args.train)
    items = _tables.read_table(args.items, [args.id_col, args.text_col], name=args.items)
    clf = KNNClassifier(k=args.k, encoder=_common.encoder(args))
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
    _common.write_or_print(table, args.out)
