"""A million vectors, end to end: build, save, load with mmap, search, remove.

What a new user would do with the int8 index at scale, with the figures that
matter printed at each step:

1. build a ``simsearch.Index(384, metric="cosine", dtype="int8")`` over
   1,000,000 synthetic vectors (the mixture of ``_data.py``) with 2 threads:
   build time and resident-set growth;
2. save it: time and file size;
3. in a fresh process, ``Index.load(path, mmap=True)``: load time and the
   process's resident set right after loading and after searching;
4. search 1,000 queries on one thread: recall@10 against exact brute-force
   neighbours (numpy, in chunks) and QPS at a few ef;
5. remove 10,000 ids and confirm that none comes back, searching with the
   removed vectors themselves as queries.

Usage::

    nice python benchmarks/million.py                # about half an hour on 2 cores
    python benchmarks/million.py --n 100000          # a smaller rehearsal

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from typing import Any

import numpy as np

import _common
import _data

K = 10
N_REMOVE = 10_000
EFS = (32, 64, 128, 256)


def build_and_save(args: argparse.Namespace, base: np.ndarray, path: str) -> dict[str, Any]:
    import simsearch

    out: dict[str, Any] = {"n": len(base), "simsearch": simsearch.__file__}
    gc.collect()
    rss0 = _common.rss_bytes()
    index = simsearch.Index(
        base.shape[1], metric="cosine", dtype="int8", M=16, ef_construction=200,
        rescore=args.rescore, num_threads=args.threads,
    )
    out["isa"] = getattr(index, "isa", None)
    start = time.perf_counter()
    for lo in range(0, len(base), args.chunk):
        index.add(np.ascontiguousarray(base[lo : lo + args.chunk]), ids=np.arange(lo, min(lo + args.chunk, len(base)), dtype=np.uint64))
        done = min(lo + args.chunk, len(base))
        print(f"  added {done:,} ({time.perf_counter() - start:.0f} s)", flush=True)
    out["build_s"] = time.perf_counter() - start
    gc.collect()
    out["build_rss_growth_bytes"] = _common.rss_bytes() - rss0
    out["reported_bytes"] = int(index.memory_bytes)
    print(f"build: {out['build_s']:.1f} s with {args.threads} threads, kernel {out['isa']}; "
          f"RSS growth {out['build_rss_growth_bytes'] / 1e6:,.0f} MB "
          f"({out['build_rss_growth_bytes'] / len(base):.0f} B/vector)"
          + f", index reports {out['reported_bytes'] / 1e6:,.0f} MB",
          flush=True)

    start = time.perf_counter()
    index.save(path)
    out["save_s"] = time.perf_counter() - start
    folder = os.path.dirname(path)
    stem = os.path.basename(path)
    out["file_bytes"] = sum(
        os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith(stem)
    )
    print(f"save: {out['save_s']:.1f} s, {out['file_bytes'] / 1e6:,.0f} MB on disk", flush=True)
    return out


def load_search_remove(
    path: str, n: int, n_queries: int, gt_path: str, verify: bool = True
) -> dict[str, Any]:
    """Run in a fresh process: load with mmap, search, then (if ``verify``) remove and check.

    ``verify=False`` skips the checksum pass, which reads the whole file, to
    show what opening a trusted file costs.
    """
    import simsearch

    base, queries = _data.cached_synthetic_mixture(n, n_queries)  # memory-mapped
    true_scores = np.load(gt_path)
    out: dict[str, Any] = {}
    gc.collect()
    rss0 = _common.rss_bytes()
    start = time.perf_counter()
    index = simsearch.Index.load(path, mmap=True, verify=verify)
    out["load_s"] = time.perf_counter() - start
    out["rss_after_load_bytes"] = _common.rss_bytes() - rss0
    index.num_threads = 1
    found, sweep = [], []
    for ef in EFS:
        start = time.perf_counter()
        ids, _ = index.search(queries, k=K, ef=ef)
        sweep.append({"ef": ef, "qps_batch": len(queries) / (time.perf_counter() - start)})
        found.append(ids)
    # Measured before scoring, which pages in rows of the memory-mapped base.
    out["rss_after_search_bytes"] = _common.rss_bytes() - rss0
    for point, ids in zip(sweep, found):
        point["recall"] = _data.recall_at_k(ids.astype(np.int64), base, queries, true_scores)
    out["sweep"] = sweep
    if not verify:
        return out

    rng = np.random.default_rng(7)
    gone = np.sort(rng.choice(len(base), N_REMOVE, replace=False)).astype(np.uint64)
    start = time.perf_counter()
    index.remove(gone)
    out["remove_s"] = time.perf_counter() - start
    out["len_after_remove"] = len(index)
    # The removed vectors are their own nearest neighbours: the hardest test.
    probe = np.ascontiguousarray(base[gone.astype(np.int64)])
    returned = 0
    for lo in range(0, len(probe), 1000):
        ids, _ = index.search(probe[lo : lo + 1000], k=K, ef=64)
        returned += int(np.isin(ids, gone).sum())
    out["removed_returned"] = returned
    out["removed_contained"] = int(sum(int(i) in index for i in gone[:1000]))
    # Recall after removing, against exact neighbours among the rows that remain.
    ids, _ = index.search(queries, k=K, ef=64)
    kept = np.ones(len(base), dtype=bool)
    kept[gone.astype(np.int64)] = False
    _, scores_after = _data.exact_knn(np.asarray(base)[kept], queries, K, metric="ip", chunk=50_000)
    out["recall_after_remove_ef64"] = _data.recall_at_k(
        ids.astype(np.int64), base, queries, scores_after
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=100_000, help="vectors per add call")
    parser.add_argument("--rescore", action="store_true", help="keep float32 originals for rescoring")
    parser.add_argument("--keep", action="store_true", help="keep the saved index file")
    parser.add_argument("--child", nargs=2, metavar=("INDEX", "GT"), help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        path, gt_path = args.child
        print(json.dumps(load_search_remove(path, args.n, args.queries, gt_path, not args.no_verify)))
        return 0

    print(_common.host_line())
    start = time.perf_counter()
    base, queries = _data.cached_synthetic_mixture(args.n, args.queries)
    base = np.array(base)  # in memory before the baseline, so only the index's growth is counted
    print(f"data: {args.n:,} x {base.shape[1]} synthetic vectors ({time.perf_counter() - start:.0f} s)", flush=True)
    gt_path = str(_common.CACHE_DIR / f"million-gt-{args.n}-{args.queries}.npy")
    if not os.path.exists(gt_path):
        start = time.perf_counter()
        _, gt_scores = _data.exact_knn(base, queries, K, metric="ip", chunk=50_000)
        np.save(gt_path, gt_scores)
        print(f"exact neighbours by brute force: {time.perf_counter() - start:.0f} s", flush=True)

    path = str(_common.CACHE_DIR / f"million-{args.n}.simsearch")
    summary: dict[str, Any] = {"cpu": _common.cpu_flags(), "threads": args.threads, "rescore": args.rescore}
    summary.update(build_and_save(args, base, path))
    del base
    gc.collect()

    def child(*extra: str) -> dict[str, Any]:
        return _common.run_json_child(
            __file__, "--child", path, gt_path, "--n", str(args.n), "--queries", str(args.queries), *extra
        )

    fast = child("--no-verify")
    print(f"load (mmap=True, verify=False, fresh process): {fast['load_s']:.2f} s; RSS after load "
          f"{fast['rss_after_load_bytes'] / 1e6:,.0f} MB, after {args.queries:,} searches "
          f"{fast['rss_after_search_bytes'] / 1e6:,.0f} MB", flush=True)
    summary["no_verify"] = fast
    full = child()
    summary.update(full)
    print(f"load (mmap=True, verify=True, fresh process): {full['load_s']:.2f} s; RSS after load "
          f"{full['rss_after_load_bytes'] / 1e6:,.0f} MB, after searching "
          f"{full['rss_after_search_bytes'] / 1e6:,.0f} MB")
    for p in full["sweep"]:
        print(f"search ef {p['ef']:>4}: recall@10 {p['recall']:.4f}, {p['qps_batch']:,.0f} QPS "
              f"(one thread, batch of {args.queries:,})")
    print(f"remove {N_REMOVE:,} ids: {full['remove_s']:.2f} s; len {full['len_after_remove']:,}; "
          f"removed ids returned by {N_REMOVE:,} searches for their own vectors: {full['removed_returned']}; "
          f"'id in index' true for {full['removed_contained']} of 1,000 removed; "
          f"recall@10 after remove (ef 64, against the remaining rows): {full['recall_after_remove_ef64']:.4f}")
    if not args.keep:
        for f in os.listdir(_common.CACHE_DIR):
            if f.startswith(os.path.basename(path)):
                os.remove(_common.CACHE_DIR / f)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(json.dumps(summary))
    return 0 if full["removed_returned"] == 0 and full["removed_contained"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
