"""Fit and check the default calibration of ``CatalogMatcher``'s zero-shot score.

    python benchmarks/match_calibration.py [--write] [--only NAME,...]

For every data set of ``_matching.DATASETS`` and for its ``valid`` and
``test`` splits, the split becomes a listing -> catalog task
(:func:`_matching.split_records`: the split's distinct left records match
against a catalog of its distinct right records) and the default
``CatalogMatcher(k=5)`` matches it; the pairs it returns are labelled by the
set's ground truth: the matching pairs of its train and valid files (a fitted
split never sees test's labels; a held-out test split is labelled by all its
files), closed under transitivity (:func:`_matching.matcher_candidates`; a split's own pairs are a
sample of the set's candidate pairs, so the matching pair of two of its
records is often in another split). Both zero-shot
scores are collected: the lexical score (the default) and the embedding
cosine (``lexical=False``). Encodings are cached under ``benchmarks/.cache``.

The map (Platt scaling, ``PairCalibration``) and the default threshold (best
mean F1 over the fitting sets on the probability scale) are fit on **valid**
pairs only, of the sets whose terms allow shipping something derived from
them: the Magellan / DeepMatcher sets (:data:`FIT_GROUPS`, BSD-3-Clause as
redistributed, the pool of the shipped pair model). WDC (terms unconfirmed)
and Abt-Buy ("research and benchmarking use only") are evaluated, never fit
on. Each fitting group contributes at most :data:`FIT_CAP` pairs, so DBLP
does not decide the map alone.

Leave-one-dataset-out: for every group (a Magellan set with its dirty
variant, or a product set), the map and threshold are refit without it and
its **test** pairs are scored: ECE (goal <= 0.05), F1 at the default
threshold, F1 at 0.5, the oracle F1, and the reliability diagram (bins: mean
predicted, observed rate, count). ``--write`` writes the map fit on all of
:data:`FIT_GROUPS` to ``simsearch/data/match_calibration.json``. ``--fit-on
all`` also fits on the product sets' valid splits (WDC ``valid.txt.small``,
Abt-Buy ``valid.csv``), each its own group, to show what they would change;
that map is never written. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import _common
import _matching
import numpy as np

from simsearch.applications.calibration import expected_calibration_error
from simsearch.applications.dedup_calibration import PairCalibration

#: Fitting groups: a Magellan set and its dirty variant hold the same pairs, so they are held out together.
FIT_GROUPS = {
    "beer": ("beer",),
    "itunes_amazon": ("itunes_amazon", "itunes_amazon_dirty"),
    "fodors_zagats": ("fodors_zagats",),
    "dblp_acm": ("dblp_acm", "dblp_acm_dirty"),
    "dblp_scholar": ("dblp_scholar", "dblp_scholar_dirty"),
}
#: Evaluated only (terms: see the module docstring).
HELD_OUT = ("abt_buy", "wdc_computers", "wdc_cameras", "wdc_watches", "wdc_shoes")
#: Most valid pairs one fitting group contributes (a random sample beyond that).
FIT_CAP = 2000
MODES = {"lexical": True, "embedding": False}
#: Thresholds tried for the default (probability scale).
GRID = np.round(np.arange(0.05, 0.951, 0.01), 4)
OUT_FILE = _common.REPO_ROOT / "simsearch" / "data" / "match_calibration.json"
PROVENANCE = (
    "Fit by benchmarks/match_calibration.py on the validation splits only of the Magellan / DeepMatcher "
    "sets Beer, iTunes-Amazon (structured, dirty), Fodors-Zagats, DBLP-ACM (structured, dirty), "
    "DBLP-Scholar (structured, dirty) (Mudgal et al., SIGMOD 2018), as serialized by Ditto (megagonlabs/ditto); "
    "licence as redistributed: BSD-3-Clause (megagonlabs/rotom's reading of the DeepMatcher repository). "
    "The pairs are the ones CatalogMatcher(k=5) returns when each split's left records are matched against "
    "a catalog of its right records, labelled by the matching pairs of the set's train and valid files "
    "(closed under transitivity; never by its test labels). WDC and Abt-Buy were not used."
)


def collect(name: str, split: str, mode: str, encoder: Any) -> dict[str, np.ndarray]:
    """Raw scores and labels of one (set, split, score), cached in ``benchmarks/.cache/match_calibration``."""
    path = _common.CACHE_DIR / "match_calibration" / f"{name}.{split}.{mode}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    d = _matching.DATASETS[name]
    t0 = time.perf_counter()
    # A fitted split is labelled by the labels of the splits a user could fit on (train and valid), never by
    # test's; a held-out test split is labelled by everything the set has (it is only evaluated).
    files = _matching.pair_files(d.folder)
    truth = tuple(files if split == "test" else [f for f in files if f[0] != "test"])
    c = _matching.matcher_candidates(d.folder, split, d.suffix, encoder=encoder, lexical=MODES[mode], raw=True,
                                     truth=truth)
    out = {"raw": c.scores, "labels": c.labels, "rank": c.rank, "recall": np.float64(c.recall),
           "n_listings": np.int64(c.n_listings), "n_catalog": np.int64(c.n_catalog)}
    print(f"  {name} {split} {mode}: {c.n_listings} listings x catalog {c.n_catalog} -> {len(c.labels)} pairs "
          f"({int(c.labels.sum())} matches), recall of the split's matches {c.recall:.3f}; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def f1_at(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Pairwise F1 at each threshold, shape (len(thresholds),)."""
    pred = probs[None, :] >= thresholds[:, None]
    tp = (pred & (labels[None, :] == 1)).sum(axis=1)
    denom = pred.sum(axis=1) + labels.sum()
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def fit(data: dict[str, dict[str, Any]], groups: dict[str, tuple[str, ...]]) -> tuple[PairCalibration, float, float]:
    """The map and default threshold from the valid pairs of ``groups``; also their pooled ECE."""
    rng = np.random.default_rng(0)
    raw, labels = [], []
    for members in groups.values():
        r = np.concatenate([data[n]["valid"]["raw"] for n in members])
        y = np.concatenate([data[n]["valid"]["labels"] for n in members])
        if len(r) > FIT_CAP:
            keep = rng.choice(len(r), FIT_CAP, replace=False)
            r, y = r[keep], y[keep]
        raw.append(r)
        labels.append(y)
    cal = PairCalibration.fit(np.concatenate(raw), np.concatenate(labels))
    mean_f1 = np.mean([f1_at(cal.apply(data[n]["valid"]["raw"]), data[n]["valid"]["labels"], GRID)
                       for members in groups.values() for n in members], axis=0)
    # Highest threshold among the best (the cautious choice, as best_f1_threshold does).
    threshold = float(GRID[np.flatnonzero(mean_f1 >= mean_f1.max() - 1e-12)[-1]])
    ece = expected_calibration_error(cal.apply(np.concatenate(raw)), np.concatenate(labels))
    return cal, threshold, float(ece)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write the fitted map to {OUT_FILE.name}")
    ap.add_argument("--only", default="", help="comma-separated held-out sets to report (all are still collected for fitting)")
    ap.add_argument("--modes", default="lexical,embedding")
    ap.add_argument("--fit-on", choices=("shippable", "all"), default="shippable",
                    help="all: also fit on the product sets' valid splits (what their terms would allow; never written)")
    args = ap.parse_args()
    if args.write and args.fit_on != "shippable":
        raise SystemExit("--write ships only a map fit on the shippable sets")
    fit_groups = dict(FIT_GROUPS) if args.fit_on == "shippable" else {**FIT_GROUPS, **{n: (n,) for n in HELD_OUT}}
    held_out = HELD_OUT if args.fit_on == "shippable" else ()
    print(_common.host_line() + f"; python {platform.python_version()}")
    from simsearch import TextEncoder

    encoder = TextEncoder(cache=_matching.embedding_cache())
    modes = args.modes.split(",")
    fit_names = [n for g in fit_groups.values() for n in g]
    report = [n for n in (args.only.split(",") if args.only else [*fit_names, *held_out])]
    names = list(dict.fromkeys([*fit_names, *report]))
    t0 = time.perf_counter()
    data: dict[str, dict[str, dict[str, dict[str, Any]]]] = {m: {} for m in modes}
    for mode in modes:
        for name in names:
            splits = ("valid", "test") if name in fit_names else ("test",)
            data[mode][name] = {s: collect(name, s, mode, encoder) for s in splits}
    print(f"collected in {time.perf_counter() - t0:.0f} s")

    result: dict[str, Any] = {"k": _matching.MATCHER_K, "fit_cap": FIT_CAP, "fit_on": args.fit_on, "modes": {}}
    for mode in modes:
        cal, threshold, dev_ece = fit(data[mode], fit_groups)
        print(f"\n== {mode} score: shipped map p = sigmoid({cal.slope:.3f} * raw + {cal.intercept:.3f}), "
              f"default threshold {threshold:.2f}, pooled valid ECE {dev_ece:.4f} ==")
        shipped = {"slope": cal.slope, "intercept": cal.intercept, "threshold": threshold, "dev_ece": round(dev_ece, 4)}
        rows = []
        held_groups = [*fit_groups.items(), *((n, (n,)) for n in held_out)]
        for group, members in held_groups:
            members = tuple(n for n in members if n in report)
            if not members:
                continue
            lodo_cal, lodo_t, _ = fit(data[mode], {g: m for g, m in fit_groups.items() if g != group})
            for name in members:
                test = data[mode][name]["test"]
                probs = lodo_cal.apply(test["raw"])
                print(f"\n{mode} / held out {name} (map fit without {group}: slope {lodo_cal.slope:.3f}, "
                      f"intercept {lodo_cal.intercept:.3f}, threshold {lodo_t:.2f}); retrieval recall {float(test['recall']):.3f}")
                out = _matching.calibration_report(probs, test["labels"], lodo_t, f"  {name} test")
                out["f1_at_0.5"] = _matching.prf(probs, test["labels"], 0.5)["f1"]
                out["tfidf_anchor"] = _matching.DATASETS[name].tfidf_anchor
                out["retrieval_recall"] = round(float(test["recall"]), 4)
                rows.append((name, out))
        print(f"\n{mode}: leave-one-dataset-out, test splits (ECE goal <= 0.05)")
        print(f"  {'held-out set':<22}{'pairs':>7}{'matches':>8}{'ECE':>8}{'F1@t':>7}{'t':>6}{'F1@.5':>7}{'oracle':>8}")
        for name, o in rows:
            print(f"  {name:<22}{o['pairs']:>7}{o['matches']:>8}{o['ece']:>8.3f}{o['f1']:>7.3f}{o['threshold']:>6.2f}"
                  f"{o['f1_at_0.5']:>7.3f}{o['oracle_f1']:>8.3f}")
        met = [n for n, o in rows if o["ece"] <= 0.05]
        print(f"  ECE <= 0.05 on {len(met)} of {len(rows)} held-out sets")
        result["modes"][mode] = {"shipped": shipped, "lodo": {n: o for n, o in rows}}

    if args.write and set(modes) == set(MODES):
        body = {
            "format": "simsearch-match-calibration", "format_version": 1,
            **{m: result["modes"][m]["shipped"] for m in MODES},
            "k": _matching.MATCHER_K, "fitted_on": fit_names, "provenance": PROVENANCE,
            "script": "benchmarks/match_calibration.py --write",
            "lodo_ece": {m: {n: o["ece"] for n, o in result["modes"][m]["lodo"].items()} for m in MODES},
        }
        OUT_FILE.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {OUT_FILE}")
    result["cpu_flags"] = _common.cpu_flags()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
