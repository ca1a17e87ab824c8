"""``simsearch finetune`` (the text model on labelled title pairs) and ``simsearch train-matcher``."""

from __future__ import annotations

import argparse
import json
import sys

from simsearch.cli import _common


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune`` and ``train-matcher`` to the ``simsearch`` parser."""
    p = subparsers.add_parser("finetune", help="fine-tune the text model on labelled pairs of titles")
    p.add_argument("pairs", help="Parquet/CSV with two title columns and a 0/1 label column")
    p.add_argument("--out", required=True, help="new folder for the fine-tuned model")
    p.add_argument("--valid", default=None, help="labelled pairs for early stopping (default: 15%% of PAIRS)")
    p.add_argument("--left-col", default="left")
    p.add_argument("--right-col", default="right")
    p.add_argument("--label-col", default="label")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=3e-5)
    p.add_argument("--max-length", type=int, default=48, help="tokens per title in training (default 48)")
    p.add_argument("--trainable-layers", type=int, default=None, help="train only the top N layers (faster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder to start from (default: bundled all-MiniLM-L6-v2)")
    p.set_defaults(func=run_finetune)

    p = subparsers.add_parser("train-matcher", help="learn a matcher from labelled (listing, product) pairs and save it")
    p.add_argument("pairs", help="Parquet/CSV: listing_id, product_id, label (1 match, 0 not)")
    p.add_argument("listings", help="Parquet/CSV listings (ids and titles)")
    p.add_argument("catalog", help="Parquet/CSV catalog (ids and titles)")
    p.add_argument("--out", required=True, help="new folder for the matcher")
    p.add_argument("--valid", default=None, help="labelled pairs for early stopping and the threshold")
    _common.add_columns(p)
    _common.add_listing_columns(p)
    p.add_argument("--price-col", default=None, help="price column of both tables")
    p.add_argument("--extra-col", action="append", help="another column of both tables to compare (repeatable)")
    p.add_argument("--no-finetune", action="store_true", help="keep the text model as it is")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--trainable-layers", type=int, default=3, help="fine-tune only the top N layers (default 3)")
    p.add_argument("-k", type=int, default=5, help="products per listing in later matches (default 5)")
    _common.add_encoder_args(p)
    p.set_defaults(func=run_train_matcher)


def run_finetune(args: argparse.Namespace) -> None:
    """``simsearch finetune``: :func:`~simsearch.encoders.finetune`, then the validation curve on stderr."""
    from simsearch.encoders import finetune
    from simsearch.encoders.finetune import INFO_FILE

    path = finetune(
        args.model, args.pairs, args.valid, out=args.out, epochs=args.epochs, learning_rate=args.learning_rate,
        max_length=args.max_length, trainable_layers=args.trainable_layers, left_col=args.left_col,
        right_col=args.right_col, label_col=args.label_col, seed=args.seed, progress=_common.progress(args),
    )  # fmt: skip
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    curve = ", ".join(f"{f:.3f}" for f in info["valid_f1_by_epoch"])
    print(f"validation F1 by epoch (0 = before): {curve}; kept epoch {info['best_epoch']}", file=sys.stderr)
    print(path)


def run_train_matcher(args: argparse.Namespace) -> None:
    """``simsearch train-matcher``: :meth:`~simsearch.CatalogMatcher.fit_pairs`, then save."""
    from simsearch.applications import CatalogMatcher

    matcher = CatalogMatcher(_common.encoder(args), k=args.k, id_col=args.id_col, text_col=args.text_col, progress=_common.progress(args))
    params = {"epochs": args.epochs, "trainable_layers": args.trainable_layers, "learning_rate": args.learning_rate}
    matcher.fit_pairs(
        args.pairs, args.listings, args.catalog, valid_pairs=args.valid, listing_id_col=args.listing_id_col,
        listing_text_col=args.listing_text_col, finetune=not args.no_finetune, finetune_params=params,
        price_col=args.price_col, extra_cols=args.extra_col or (),
    )  # fmt: skip
    matcher.save(args.out)
    cal = matcher.calibration_
    if cal is not None:
        print(f"threshold {cal.threshold:.3f}: F1 {cal.f1:.3f}, precision {cal.precision:.3f}, recall {cal.recall:.3f} on the {cal.n_labelled} validation pairs", file=sys.stderr)
    print(f"saved the matcher to {args.out}; use it with: simsearch match {args.out} LISTINGS", file=sys.stderr)
