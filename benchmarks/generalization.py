"""Matching across data sets: TF-IDF anchor, our supervised and zero-shot F1, published F1, pairs/s.

    python benchmarks/generalization.py [--datasets NAME ...] [--quick] [--supervised NAME ...]

For every data set of ``../shared/data/er_benchmarks`` plus Abt-Buy
(``_matching.DATASETS``), through the same code as ``matching.py``
(``_matching.run_dataset``):

- **TF-IDF anchor**: character 3-5-gram TF-IDF cosine, threshold from valid,
  as PROVENANCE.md reports it (not recomputed here);
- **zero-shot**: the pair model shipped with simsearch. It was trained on the
  pool named in its README; a data set in that pool is not zero-shot for it
  and is marked "in pool" (its figure is printed, but it is not a zero-shot
  result). The product sets (WDC, Abt-Buy) are all outside the pool;
- **supervised**: the one recipe (``_matching.RECIPE``) fine-tuned on the
  set's train split (WDC: ``small``; at most ``_matching.TRAIN_CAP`` pairs),
  head, calibration and threshold on its valid split;
- **published**: the best published supervised F1 we cite, with the paper;
- **pairs/s**: the shipped int8 model's ``predict_proba`` on the test pairs;
  once per run, beside sentence-transformers' ``CrossEncoder`` fp32 on the
  same weights and pairs (256 test pairs of the first set).

Training costs CPU minutes per set, so supervised runs only on the sets
named by ``--supervised`` (default: the small ones), and ``--quick`` scores
at most 300 test pairs per set, zero-shot only. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import _common
import _matching

from simsearch.applications.pair_model import default_pair_model

SMALL = ("beer", "itunes_amazon", "fodors_zagats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="*", default=list(_matching.DATASETS), choices=list(_matching.DATASETS))
    ap.add_argument("--supervised", nargs="*", default=list(SMALL), help="sets to fine-tune on (costly)")
    ap.add_argument("--quick", action="store_true", help="zero-shot only, at most 300 test pairs per set")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    print(_common.host_line())
    model = default_pair_model()
    pool = set(model.info.get("datasets", []))
    print(f"shipped pair model: {model!r}")
    rows = []
    for name in args.datasets:
        d = _matching.DATASETS[name]
        if not (d.folder / "test.txt").is_file() and not (d.folder / "test.csv").is_file():
            print(f"{name}: no data at {d.folder}, skipped")
            continue
        row = {"dataset": name, "tfidf_anchor": d.tfidf_anchor,
               "published": d.published[0] if d.published else None,
               "published_source": d.published[1] if d.published else None, "in_pool": name in pool}
        if args.quick:
            test = _matching.read_split(d.folder, "test")
            test = random.Random(0).sample(test, min(300, len(test)))
            zs = _matching.evaluate(model, test, f"zero-shot {name} (quick, {len(test)} pairs)")
        else:
            zs = _matching.run_dataset(d.folder, suffix=d.suffix, zero_shot=True, name=name)
        row.update({"zero_shot_f1": zs["f1"], "zero_shot_ece": zs["ece"], "pairs_per_s": zs["pairs_per_s"]})
        if not args.quick and name in args.supervised:
            work = (args.work / name) if args.work else None
            sup = _matching.run_dataset(d.folder, suffix=d.suffix, zero_shot=False, work=work, name=name)
            row.update({"supervised_f1": sup["f1"], "supervised_ece": sup["ece"], "train_seconds": sup["train_seconds"]})
        rows.append(row)

    speed = None
    if rows and _matching.POOL_TORCH_DIR.is_dir():
        first = _matching.DATASETS[rows[0]["dataset"]]
        speed = _matching.speed_against_cross_encoder(model, _matching.POOL_TORCH_DIR, _matching.read_split(first.folder, "test")[:256])

    def cell(v: float | None) -> str:
        return "  -  " if v is None else f"{v:.3f}"

    print("\n| dataset | TF-IDF anchor | supervised F1 | zero-shot F1 | anchor + 0.15 met | published F1 | pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        zero = cell(r["zero_shot_f1"]) + (" (in pool)" if r["in_pool"] else "")
        met = "-" if r["in_pool"] or r["tfidf_anchor"] is None else ("yes" if r["zero_shot_f1"] >= r["tfidf_anchor"] + 0.15 else "no")
        print(f"| {r['dataset']} | {cell(r['tfidf_anchor'])} | {cell(r.get('supervised_f1'))} | {zero} | {met} | "
              f"{cell(r['published'])} ({r['published_source']}) | {r['pairs_per_s']:.0f} |")
    print(json.dumps({"rows": rows, "pool": sorted(pool), "quick": args.quick, "speed": speed, "cpu_flags": _common.cpu_flags()}))


if __name__ == "__main__":
    main()
