"""Train the pair model shipped in ``simsearch/models/pair_model`` from the pool of public sets.

    python benchmarks/train_pair_model.py [--out DIR] [--exclude NAME ...] [--epochs 1]

The pool is :data:`_matching.POOL` (the Magellan / DeepMatcher sets), at most
:data:`_matching.POOL_TRAIN_CAP` train pairs and
:data:`_matching.POOL_VALID_CAP` validation pairs of each set; the validation
pairs fit the head, the calibrator and the threshold. ``--exclude`` leaves
sets out (leave-one-dataset-out). The fine-tuned fp32 torch model is kept in
``--torch-dir`` (default ``benchmarks/.cache/pair_model_torch``) for the
supervised runs and the sentence-transformers comparison. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common
import _matching

from simsearch.applications.pair_model import DEFAULT_PAIR_MODEL_DIR
from simsearch.applications.pair_training import train_pair_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_PAIR_MODEL_DIR)
    ap.add_argument("--torch-dir", type=Path, default=_matching.POOL_TORCH_DIR)
    ap.add_argument("--exclude", nargs="*", default=[])
    ap.add_argument("--epochs", type=float, default=_matching.RECIPE["epochs"])
    args = ap.parse_args()
    print(_common.host_line())
    print(_common.host_line())
    train = _matching.pool_pairs("train", tuple(args.exclude))
    valid = _matching.pool_pairs("valid", tuple(args.exclude))
    names = [n for n in _matching.POOL if n not in args.exclude]
    print(f"pool {names}: {len(train)} train pairs ({sum(p[2] for p in train)} matches), {len(valid)} valid pairs")
    t0 = time.perf_counter()
    recipe = {**_matching.RECIPE, "epochs": args.epochs}
    model = train_pair_model(
        train, valid, args.out, torch_dir=args.torch_dir, progress=True,
        info={"datasets": names, "terms": _matching.TERMS, "recipe": "benchmarks/train_pair_model.py"}, **recipe,
    )
    seconds = time.perf_counter() - t0
    size = (args.out / "model.onnx").stat().st_size
    print(f"{model!r}: {size / 1e6:.1f} MB graph, {seconds:.0f} s")
    print(json.dumps({"cpu_flags": _common.cpu_flags(), "out": str(args.out), "datasets": names, "seconds": round(seconds, 1), "onnx_bytes": size,
                      "threshold": model.threshold, "recipe": recipe}))


if __name__ == "__main__":
    main()
