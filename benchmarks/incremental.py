"""Incremental dedup on PriceRunner: ten updates against one full run, and the review loop.

    python benchmarks/incremental.py [--data ../shared/data] [--labels 200] [--seeds 5] [--review-only] [--no-review]

**Updates.** The 35,311 PriceRunner offers are shuffled (seed 0). A
:class:`simsearch.Deduplicator` is fit on the first 90% and updated with the
remaining 10% in ten equal batches; another is fit on all offers at once (the
full run). Both use the defaults (threshold: probability 0.15, ``k=10``) with
``max_group_size=100``. Reported:

- pairwise precision, recall and F1 of the incremental groups against the full
  run's groups (the full run taken as the reference; goal 0.95), how many of
  the stored pairs at or above the threshold the two share, and of both against the
  true products (``Cluster ID``);
- id stability: old items whose group id changed in an update, split into
  those reported as ``merged``, as ``split``, and not reported at all;
- the ten updates' time against the full run's time (wall and CPU).

Titles are encoded by the default ``TextEncoder`` (all-MiniLM-L6-v2, int8)
through an :class:`simsearch.EmbeddingCache` in ``benchmarks/.cache/``, so a
rerun encodes nothing; both runs read the same cache, and their times are the
dedup work itself (index, pair scores, grouping) plus the cache look-ups.

**Review loop.** On the full run's state, the candidate pairs are labelled
from ``Cluster ID`` (a stand-in for a person). ``--labels`` pairs chosen by
:meth:`Deduplicator.review_pairs` and as many drawn uniformly at random from
the candidate pairs each recalibrate the threshold (maximum F1), repeated over
``--seeds`` seeds; the groups at each recalibrated threshold are scored by
pairwise F1 against the true products. References: the threshold calibrated
on all candidate pairs labelled, and the best threshold of a grid
(probabilities 0.60 down to 0.05 by 0.05) judged by the groups' F1 itself.

``--no-review`` measures the updates only.

Prints the CPU, each figure beside the issue's goal, and one JSON object on
the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import _common
import _data

from simsearch import Deduplicator, EmbeddingCache, TextEncoder
from simsearch.applications import mean_group_f1, pairwise_precision_recall
from simsearch.index.core import available_isas

CACHE = _common.CACHE_DIR / "incremental-embeddings.sqlite"
FULL_STATE = _common.CACHE_DIR / "incremental-full-state"
MAX_GROUP_SIZE = 100


def table(ids: np.ndarray, titles: list[str], rows: np.ndarray) -> pa.Table:
    return pa.table({"id": pa.array(ids[rows]), "title": pa.array([titles[i] for i in rows])})


def labels_for(groups: pa.Table, ids: np.ndarray) -> np.ndarray:
    g = dict(zip(groups.column("item_id").to_pylist(), groups.column("group_id").to_pylist()))
    return np.array([g[i] for i in ids.tolist()])


def pair_set(dedup: Deduplicator) -> set[tuple[Any, Any]]:
    """The stored pairs at or above the threshold, as unordered id pairs."""
    t = dedup.pairs()
    return {(min(a, b), max(a, b)) for a, b in zip(t.column("id_a").to_pylist(), t.column("id_b").to_pylist())}


def f1_of(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def quality(truth: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    p, r = pairwise_precision_recall(truth, groups)
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1_of(p, r), 4), "mean_f1": round(mean_group_f1(truth, groups), 4)}


class Clock:
    """Wall and process CPU time of a block (the machine is shared: CPU time is steadier)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def updates(ids: np.ndarray, titles: list[str], clusters: np.ndarray, encoder: Any, log: Any) -> tuple[dict[str, Any], Deduplicator]:
    order = np.random.default_rng(0).permutation(len(ids))
    n_fit = int(round(0.9 * len(ids)))
    with Clock() as full_clock:
        full = Deduplicator(encoder=encoder, max_group_size=MAX_GROUP_SIZE, progress=False).fit(table(ids, titles, np.arange(len(ids))))
    log(f"full run on {len(ids)} offers: {full_clock.wall:.1f} s wall, {full_clock.cpu:.1f} s CPU")
    with Clock() as fit_clock:
        dedup = Deduplicator(encoder=encoder, max_group_size=MAX_GROUP_SIZE, progress=False).fit(table(ids, titles, order[:n_fit]))
    log(f"fit on {n_fit} offers (90%): {fit_clock.wall:.1f} s wall")
    wall, cpu = [], []
    events = {"joined": 0, "new_group": 0, "merged": 0, "split": 0, "removed": 0}
    changed_merge, changed_split, unreported = set(), set(), set()
    for i, batch in enumerate(np.array_split(order[n_fit:], 10)):
        before = dedup.groups_
        with Clock() as c:
            changes = dedup.update(table(ids, titles, batch))
        wall.append(c.wall)
        cpu.append(c.cpu)
        old = dict(zip(before.column("item_id").to_pylist(), before.column("group_id").to_pylist()))
        reported = {r["item_id"]: r for r in changes.to_pylist()}
        for r in reported.values():
            events[r["event"]] += 1
        for item, gid in zip(dedup.groups_.column("item_id").to_pylist(), dedup.groups_.column("group_id").to_pylist()):
            if item in old and old[item] != gid:
                row = reported.get(item)
                if row is None or (row["old_group"], row["new_group"]) != (old[item], gid):
                    unreported.add(item)
                elif row["event"] == "merged":
                    changed_merge.add(item)
                else:
                    changed_split.add(item)
        log(f"  update {i + 1}: {len(batch)} offers, {c.wall:.2f} s wall, events {dict((k, v) for k, v in events.items() if v)}")
    full_labels, inc_labels = labels_for(full.groups_, ids), labels_for(dedup.groups_, ids)
    p, r = pairwise_precision_recall(full_labels, inc_labels)
    full_pairs, inc_pairs = pair_set(full), pair_set(dedup)
    shared = len(full_pairs & inc_pairs)
    res = {
        "offers": int(len(ids)),
        "fit_offers": n_fit,
        "batches": 10,
        "vs_full_run": {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1_of(p, r), 4)},
        "pairs_at_threshold": {"full": len(full_pairs), "incremental": len(inc_pairs), "shared": shared},
        "full_vs_truth": quality(clusters, full_labels),
        "incremental_vs_truth": quality(clusters, inc_labels),
        "events": events,
        "old_items": n_fit,
        "old_changed_by_merge": len(changed_merge),
        "old_changed_by_split": len(changed_split),
        "old_changed_unreported": len(unreported),
        "share_old_changed_without_merge": round((len(changed_split) + len(unreported)) / n_fit, 5),
        "full_run_s": round(full_clock.wall, 2),
        "full_run_cpu_s": round(full_clock.cpu, 2),
        "fit_90_s": round(fit_clock.wall, 2),
        "updates_s": [round(w, 3) for w in wall],
        "updates_total_s": round(sum(wall), 2),
        "updates_total_cpu_s": round(sum(cpu), 2),
        "update_over_full": round(sum(wall) / full_clock.wall, 4),
        "update_over_full_cpu": round(sum(cpu) / full_clock.cpu, 4),
    }
    log(f"updates: {json.dumps(res)}")
    return res, full


def regroup_at(dedup: Deduplicator, threshold: float, template: Any) -> None:
    """Regroup the state at ``threshold`` as a recalibration to it would (for the grid reference)."""
    dedup.calibration_ = dataclasses.replace(template, threshold=float(threshold))
    dedup.update()


def review(dedup: Deduplicator, ids: np.ndarray, clusters: np.ndarray, n_labels: int, n_seeds: int, log: Any) -> dict[str, Any]:
    truth = dict(zip(ids.tolist(), clusters.tolist()))

    def label(t: pa.Table) -> pa.Table:
        y = [int(truth[a] == truth[b]) for a, b in zip(t.column("id_a").to_pylist(), t.column("id_b").to_pylist())]
        return t.set_column(t.column_names.index("label"), "label", pa.array(y, type=pa.int8()))

    def groups_f1() -> float:
        p, r = pairwise_precision_recall(clusters, labels_for(dedup.groups_, ids))
        return f1_of(p, r)

    scored = dedup.pairs(min_score=-10.0)
    candidates = scored.select(["id_a", "id_b"])
    candidates = candidates.append_column("label", pa.nulls(candidates.num_rows, pa.int8()))
    all_labelled = label(candidates)
    all_scores = scored.column("score").to_numpy().astype(np.float64)
    all_y = all_labelled.column("label").to_numpy().astype(bool)

    def pair_f1(t: float) -> float:
        """F1 of 'score >= t' over every candidate pair, all labelled: what the calibration aims at."""
        tp = float(np.sum(all_y & (all_scores >= t)))
        return 2 * tp / (float(np.sum(all_scores >= t)) + float(all_y.sum()))
    log(f"review: {candidates.num_rows} candidate pairs, {int(np.sum(all_labelled.column('label').to_numpy()))} true duplicates")
    out: dict[str, Any] = {"candidate_pairs": candidates.num_rows, "labels": n_labels, "seeds": n_seeds}
    start_f1 = groups_f1()
    out["default_threshold"] = {"threshold": dedup.threshold_, "f1": round(start_f1, 4), "pair_f1": round(pair_f1(dedup.threshold_), 4)}
    log(f"  default threshold {dedup.threshold_}: groups F1 {start_f1:.4f}, pair F1 {pair_f1(dedup.threshold_):.4f}")

    cal = dedup.calibrate(all_labelled)
    dedup.update()
    out["all_labels"] = {"threshold": round(cal.threshold, 4), "f1": round(groups_f1(), 4), "pair_f1": round(pair_f1(cal.threshold), 4)}
    log(f"  all {candidates.num_rows} pairs labelled: threshold {cal.threshold:.3f}, groups F1 {out['all_labels']['f1']}")
    grid = {}
    for t in np.round(np.arange(0.60, 0.049, -0.05), 3):
        with Clock() as c:
            regroup_at(dedup, t, cal)
        grid[float(t)] = round(groups_f1(), 4)
        log(f"  grid: threshold {t}: groups F1 {grid[float(t)]}, pair F1 {pair_f1(t):.4f} ({c.wall:.0f} s)")
    best_t = max(grid, key=grid.get)
    out["grid_best"] = {"threshold": best_t, "f1": grid[best_t], "grid": grid}

    for name in ("loop", "random"):
        runs = []
        for seed in range(n_seeds):
            if name == "loop":
                picked = dedup.review_pairs(n_labels, seed=seed).select(["id_a", "id_b", "stratum", "weight", "label"])
            else:
                rows = np.random.default_rng(seed).choice(candidates.num_rows, size=n_labels, replace=False)
                picked = candidates.take(pa.array(rows))
            labelled = label(picked)
            try:
                c = dedup.calibrate(labelled)
            except ValueError as err:  # e.g. no duplicate among the random pairs
                runs.append({"seed": seed, "error": str(err), "f1": 0.0})
                continue
            dedup.update()
            runs.append(
                {
                    "seed": seed,
                    "threshold": round(c.threshold, 4),
                    "f1": round(groups_f1(), 4),
                    "pair_f1": round(pair_f1(c.threshold), 4),
                    "positives": c.n_positive,
                    "precision_est": round(c.precision, 4),
                    "precision_interval": [round(v, 4) for v in c.precision_interval],
                    "recall_est": round(c.recall, 4),
                    "recall_interval": [round(v, 4) for v in c.recall_interval],
                }
            )
            log(f"  {name} seed {seed}: {runs[-1]}")
        f1s = [r["f1"] for r in runs]
        pf1s = [r.get("pair_f1", 0.0) for r in runs]
        out[name] = {"mean_f1": round(float(np.mean(f1s)), 4), "min_f1": round(float(np.min(f1s)), 4),
                     "mean_pair_f1": round(float(np.mean(pf1s)), 4), "runs": runs}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=_common.DATA_DIR)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--review-only", action="store_true", help="reuse the full run's state saved by an earlier run")
    parser.add_argument("--no-review", action="store_true", help="measure the updates only")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(_common.host_line())
    log(f"kernels available: {available_isas()}")
    ids, titles, clusters, _ = _data.pricerunner_offers(args.data)
    encoder = TextEncoder(cache=EmbeddingCache(CACHE))
    with Clock() as enc_clock:
        encoder.encode([t if t.strip() else "untitled" for t in titles], progress=False)
    log(f"{len(ids)} PriceRunner offers; embeddings ready in {enc_clock.wall:.1f} s (cache {CACHE.name})")

    if args.review_only:
        inc = json.loads((FULL_STATE / "updates.json").read_text())
        full = Deduplicator.load(FULL_STATE, encoder=encoder, progress=False)
        log(f"updates: {json.dumps(inc)} (from {FULL_STATE.name})")
    else:
        inc, full = updates(ids, titles, clusters, encoder, log)
        full.save(FULL_STATE)
        (FULL_STATE / "updates.json").write_text(json.dumps(inc))
    rev = None if args.no_review else review(full, ids, clusters, args.labels, args.seeds, log)

    goals = [
        ("incremental vs full run, pairwise F1", inc["vs_full_run"]["f1"], ">= 0.95", inc["vs_full_run"]["f1"] >= 0.95),
        ("old items changed id without a reported merge/split", inc["old_changed_unreported"], "0", inc["old_changed_unreported"] == 0),
        ("share of old items whose id changed without a merge", inc["share_old_changed_without_merge"], "(reported)", None),
        ("ten updates / full run, wall time", inc["update_over_full"], "<= 0.25", inc["update_over_full"] <= 0.25),
        ("ten updates / full run, CPU time", inc["update_over_full_cpu"], "<= 0.25", inc["update_over_full_cpu"] <= 0.25),
        ("full run vs true products, mean per-offer F1", inc["full_vs_truth"]["mean_f1"], "(reference)", None),
        ("incremental vs true products, mean per-offer F1", inc["incremental_vs_truth"]["mean_f1"], "(reference)", None),
    ]
    goals += [] if rev is None else [
        (f"review, pair F1: {args.labels} loop labels (mean of {args.seeds})", rev["loop"]["mean_pair_f1"],
         f">= {rev['all_labels']['pair_f1'] - 0.02:.4f} (all labels {rev['all_labels']['pair_f1']} - 0.02)",
         rev["loop"]["mean_pair_f1"] >= rev["all_labels"]["pair_f1"] - 0.02),
        (f"review, pair F1: {args.labels} random labels (mean of {args.seeds})", rev["random"]["mean_pair_f1"],
         f"< loop {rev['loop']['mean_pair_f1']}", rev["random"]["mean_pair_f1"] < rev["loop"]["mean_pair_f1"]),
        (f"review, groups F1: {args.labels} loop labels (mean of {args.seeds})", rev["loop"]["mean_f1"],
         f">= {rev['all_labels']['f1'] - 0.02:.4f} (all labels {rev['all_labels']['f1']} - 0.02)",
         rev["loop"]["mean_f1"] >= rev["all_labels"]["f1"] - 0.02),
        (f"review, groups F1: {args.labels} random labels (mean of {args.seeds})", rev["random"]["mean_f1"],
         f"< loop {rev['loop']['mean_f1']}", rev["random"]["mean_f1"] < rev["loop"]["mean_f1"]),
        ("review, groups F1 at the default threshold 0.15 (reference)", rev["default_threshold"]["f1"], "(reference)", None),
        ("review, groups F1 at the best grid threshold (reference)", rev["grid_best"]["f1"], f"(threshold {rev['grid_best']['threshold']})", None),
    ]
    log("")
    log(f"{'figure':58s} {'measured':>10s}  goal")
    for name, value, goal, ok in goals:
        mark = "" if ok is None else ("  met" if ok else "  NOT MET")
        log(f"{name:58s} {value!s:>10s}  {goal}{mark}")
    result = {
        "benchmark": "incremental",
        "cpu": _common.cpu_flags(),
        "isas": available_isas(),
        "updates": inc,
        "review": rev,
        "goals_met": {name: ok for name, _, _, ok in goals if ok is not None},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
