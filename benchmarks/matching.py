"""Learned matching on a DeepMatcher- or Ditto-format data set (Abt-Buy by default).

    python benchmarks/matching.py [--data DIR] [--zero-shot] [--two-stage]

``DIR`` is a DeepMatcher folder (``tableA.csv``, ``tableB.csv`` and
``train.csv``, ``valid.csv``, ``test.csv`` of ``ltable_id, rtable_id,
label``, tables with whatever columns they have) or a Ditto folder of
``er_benchmarks`` (``train.txt``, ``valid.txt``, ``test.txt``; ``--size
small`` picks ``train.txt.small`` / ``valid.txt.small``).

Default (supervised): the cross-encoder pair model
(:func:`simsearch.applications.pair_training.train_pair_model`, one recipe
for every data set: 3 layers of all-MiniLM-L6-v2, 64 tokens, one epoch over
at most 1,600 train pairs) fine-tuned on train, its head, calibration and
threshold fit on valid, int8 ONNX, scored on test.

``--zero-shot``: the pair model shipped with simsearch, trained on other
data sets (its README says which), scores test; only ``tableA.csv``,
``tableB.csv`` and ``test.csv`` (or ``test.txt``) of ``DIR`` are read.

Both print F1 at the model's threshold, a reliability diagram (bins: mean
predicted, observed share, count), the expected calibration error and
pairs/s beside sentence-transformers' ``CrossEncoder`` fp32 on the same
pairs. Both also print the same for the default ``CatalogMatcher``'s
probabilities (no pair model, no labels: the lexical score through its
shipped map) on the test split as a listing -> catalog task: its distinct
left records matched against a catalog of its distinct right records, the
top 5 returned pairs labelled by the matching pairs of test (zero-shot) or of
every split file (supervised), closed under transitivity
(``_matching.matcher_candidates``). ``--two-stage`` also runs the older path (the MiniLM cosine anchor,
the fine-tuned bi-encoder and ``CatalogMatcher.fit_pairs``' pair scorer) on
DeepMatcher folders. The last line printed is one JSON object with ``f1``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import _common
import _data
import _matching
import numpy as np
import pyarrow as pa

from simsearch import CatalogMatcher, TextEncoder
from simsearch.applications import best_f1_threshold

DEFAULT_DATA = _common.DATA_DIR / "abt_buy" / "deepmatcher"

PUBLISHED = {
    "DeepMatcher (Hybrid)": (0.628, "Mudgal et al., Deep Learning for Entity Matching, SIGMOD 2018"),
    "Ditto": (0.893, "Li et al., Deep Entity Matching with Pre-Trained Language Models, PVLDB 14(1), 2021"),
}


def find_columns(a: pa.Table, b: pa.Table) -> tuple[str, str | None, list[str]]:
    """(title column, price column or None, extra columns) shared by both tables."""
    shared = [c for c in a.column_names if c in b.column_names and c != "id"]
    strings = [c for c in shared if pa.types.is_string(a.schema.field(c).type) and pa.types.is_string(b.schema.field(c).type)]
    title = _matching.title_column(a, b)
    numeric = [c for c in shared if c not in strings]
    price = next((c for c in numeric if "price" in c.lower()), None)
    extra = [c for c in shared if c not in (title, price)]
    return title, price, extra


def pair_table(t: pa.Table) -> pa.Table:
    """DeepMatcher's ``ltable_id, rtable_id, label`` under the matcher's column names."""
    return pa.table({"listing_id": t.column("ltable_id"), "product_id": t.column("rtable_id"), "label": t.column("label")})


def cosine_pairs(va: np.ndarray, vb: np.ndarray, pairs: pa.Table, row_a: dict, row_b: dict) -> np.ndarray:
    ia = np.array([row_a[v] for v in pairs.column("listing_id").to_pylist()])
    ib = np.array([row_b[v] for v in pairs.column("product_id").to_pylist()])
    return np.einsum("ij,ij->i", va[ia], vb[ib])


def retrieval(va: np.ndarray, vb: np.ndarray, pairs: pa.Table, row_a: dict, row_b: dict) -> dict[str, float]:
    """Recall@1/@5 over all of table B for the matching pairs (brute-force cosine)."""
    pos = pairs.filter(pa.compute.equal(pairs.column("label"), 1))
    ia = np.array([row_a[v] for v in pos.column("listing_id").to_pylist()])
    ib = np.array([row_b[v] for v in pos.column("product_id").to_pylist()])
    sims = va[ia] @ vb.T
    rank = (sims > sims[np.arange(len(ia)), ib][:, None]).sum(axis=1)
    return {"recall_at_1": round(float((rank < 1).mean()), 4), "recall_at_5": round(float((rank < 5).mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--zero-shot", action="store_true", help="score test with the shipped model; read nothing else")
    ap.add_argument("--size", default="", help="Ditto train/valid size suffix, e.g. small")
    ap.add_argument("--no-speed", action="store_true", help="skip the CrossEncoder speed comparison")
    ap.add_argument("--two-stage", action="store_true", help="also run the bi-encoder + pair scorer path")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--trainable-layers", type=int, default=3)
    ap.add_argument("--learning-rate", type=float, default=5e-5)
    ap.add_argument("--work", type=Path, default=None, help="where the fine-tuned models go (default: a temp dir)")
    args = ap.parse_args()
    print(_common.host_line() + f"; python {platform.python_version()}")
    suffix = f".{args.size}" if args.size else ""
    result = _matching.run_dataset(args.data, suffix=suffix, zero_shot=args.zero_shot, work=args.work,
                                   speed=not args.no_speed, name=f"{args.data.parent.name}/{args.data.name}")
    truth = None if args.zero_shot else tuple(_matching.pair_files(args.data))
    result["matcher"] = _matching.evaluate_matcher(args.data, "test", suffix, "  default CatalogMatcher", truth=truth)
    print(f"ECE: pair model {result['ece']:.3f} on the test pairs; default CatalogMatcher {result['matcher']['ece']:.3f} "
          f"on the pairs it returns (F1 {result['f1']:.3f} / {result['matcher']['f1']:.3f})")
    result.update({"data": str(args.data), "cpu_flags": _common.cpu_flags()})
    if args.two_stage and not args.zero_shot and _matching.is_deepmatcher(args.data):
        result["two_stage"] = two_stage(args)
    print(json.dumps(result))


def two_stage(args: argparse.Namespace) -> dict:
    """The MiniLM anchor, the fine-tuned bi-encoder cosine and ``fit_pairs``' pair scorer (DeepMatcher folders)."""
    tables = _data.deepmatcher_tables(args.data)
    a, b = tables["tableA"], tables["tableB"]
    train, valid, test = (pair_table(tables[s]) for s in ("train", "valid", "test"))
    title, price, extra = find_columns(a, b)
    a = a.rename_columns(["title" if c == title else c for c in a.column_names])
    b = b.rename_columns(["title" if c == title else c for c in b.column_names])
    row_a = {v: i for i, v in enumerate(a.column("id").to_pylist())}
    row_b = {v: i for i, v in enumerate(b.column("id").to_pylist())}
    texts_a = [t or "untitled" for t in a.column("title").to_pylist()]
    texts_b = [t or "untitled" for t in b.column("title").to_pylist()]
    y_test = test.column("label").to_numpy()
    print(f"data {args.data}: A {a.num_rows} rows, B {b.num_rows} rows; pairs train {train.num_rows}, "
          f"valid {valid.num_rows}, test {test.num_rows}; title column {title!r}, price {price!r}, extra {extra}")

    # (a) anchor: zero-shot MiniLM fp32 cosine, threshold on train + valid.
    t0 = time.perf_counter()
    base = TextEncoder(precision="fp32")
    va, vb = base.encode(texts_a, progress=False), base.encode(texts_b, progress=False)
    dev = pa.concat_tables([train, valid])
    cal = best_f1_threshold(cosine_pairs(va, vb, dev, row_a, row_b), dev.column("label").to_numpy())
    anchor = _matching.prf(cosine_pairs(va, vb, test, row_a, row_b), y_test, cal.threshold)
    anchor.update(retrieval(va, vb, test, row_a, row_b))
    anchor["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"anchor all-MiniLM-L6-v2 fp32 cosine: {anchor}")

    # (b, c) simsearch: fine-tune + pair scorer.
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="simsearch-matching-"))
    matcher = CatalogMatcher(TextEncoder(precision="int8"), k=5, progress=True, pair_model=None)
    t0 = time.perf_counter()
    matcher.fit_pairs(
        train, a, b, valid_pairs=valid, price_col=price, extra_cols=extra, finetune_dir=work / "encoder",
        finetune_params={"epochs": args.epochs, "trainable_layers": args.trainable_layers,
                         "learning_rate": args.learning_rate},
    )
    train_s = time.perf_counter() - t0
    info = json.loads((work / "encoder" / "simsearch_finetune.json").read_text())
    print(f"training (fine-tune + index + pair scorer): {train_s:.0f} s; validation F1 by epoch {info['valid_f1_by_epoch']}")

    enc = matcher.encoder_
    fa, fb = enc.encode(texts_a, progress=False), enc.encode(texts_b, progress=False)
    cal = best_f1_threshold(cosine_pairs(fa, fb, valid, row_a, row_b), valid.column("label").to_numpy())
    tuned = _matching.prf(cosine_pairs(fa, fb, test, row_a, row_b), y_test, cal.threshold)
    tuned.update(retrieval(fa, fb, test, row_a, row_b))
    print(f"fine-tuned encoder int8 cosine: {tuned}")

    t0 = time.perf_counter()
    probs = matcher.score_pairs(test, a)
    score_s = time.perf_counter() - t0
    two_stage = _matching.prf(probs, y_test, matcher.threshold_)
    two_stage["pairs_per_s"] = round(test.num_rows / score_s, 1)

    t0 = time.perf_counter()
    result = matcher.match(a)
    match_s = time.perf_counter() - t0
    top = result.filter(pa.compute.equal(result.column("rank"), 1))
    best = dict(zip(top.column("listing_id").to_pylist(), top.column("product_id").to_pylist()))
    pos = test.filter(pa.compute.equal(test.column("label"), 1))
    hits = [best.get(x) == y for x, y in zip(pos.column("listing_id").to_pylist(), pos.column("product_id").to_pylist())]
    two_stage["top1_accuracy"] = round(float(np.mean(hits)), 4)
    two_stage["match_listings_per_s"] = round(a.num_rows / match_s, 1)
    two_stage["match_seconds"] = round(match_s, 2)
    two_stage["train_seconds"] = round(train_s, 1)
    print(f"two-stage (fine-tuned retrieval + pair scorer): {two_stage}")
    example = result.slice(0, 1).to_pylist()[0]
    print(f"example row: {example}")

    print("\ntest pairs, F1 / precision / recall:")
    print(f"  anchor MiniLM cosine      {anchor['f1']:.3f} / {anchor['precision']:.3f} / {anchor['recall']:.3f}")
    print(f"  fine-tuned cosine         {tuned['f1']:.3f} / {tuned['precision']:.3f} / {tuned['recall']:.3f}")
    print(f"  two-stage                 {two_stage['f1']:.3f} / {two_stage['precision']:.3f} / {two_stage['recall']:.3f}")
    for name, (f1, source) in PUBLISHED.items():
        print(f"  published {name:<15} {f1:.3f} ({source})")
    print(f"retrieval recall@1/@5: anchor {anchor['recall_at_1']}/{anchor['recall_at_5']}, "
          f"fine-tuned {tuned['recall_at_1']}/{tuned['recall_at_5']}; two-stage top-1 accuracy {two_stage['top1_accuracy']}")
    return {
        "f1": two_stage["f1"], "anchor": anchor, "finetuned_cosine": tuned, "two_stage": two_stage,
        "valid_f1_by_epoch": info["valid_f1_by_epoch"], "published": {k: v[0] for k, v in PUBLISHED.items()},
    }


if __name__ == "__main__":
    main()
