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
   removed vectors themselves as queries;
6. ``simsearch.find_duplicates`` on the same mixture with near-duplicates
   planted in it (a float32 array in memory, k=10, the default threshold and
   index settings), in a fresh process: wall and CPU time, the process's peak
   resident set (``ru_maxrss``, the float input included), the pair and
   group counts, and what the join found against the truth: the planted
   pairs recovered, and on 1,000 rows drawn from the planted ones, their
   exact neighbours (brute force) at or above the threshold that came back,
   and the largest difference between a returned score and the exact cosine.

The mixture's points have their nearest neighbours at cosines of about 0.5 to
0.67, so without planted rows the default threshold (0.9) finds nothing: the
planted near-duplicates (5 % of the rows, each a copy of another row turned
by a random angle, cosines 0.85-0.99 to its source; a source may have two
copies) give the pairs and groups a speed-up must keep.

Usage::

    nice python benchmarks/million.py                # about 45 minutes on 2 cores
    python benchmarks/million.py --n 100000          # a smaller rehearsal
    nice python benchmarks/million.py --dedup-only   # step 6 alone, about 11 CPU-minutes

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
from typing import Any

import numpy as np

import _common
import _data

K = 10
N_REMOVE = 10_000
EFS = (32, 64, 128, 256)
#: Share of the rows replaced by a near-duplicate of another row (step 6).
PLANTED_SHARE = 0.05
#: Cosines of the planted copies to their sources, drawn uniformly.
PLANTED_COSINES = (0.85, 0.99)
#: Rows whose exact neighbours check the join (step 6).
N_SAMPLE = 1000


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


def plant_duplicates(x: np.ndarray, seed: int = 11, chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Replace a share of the rows of ``x``, in place, by near-duplicates of other rows.

    Row ``dup[i]`` becomes ``normalize(x[src[i]] + sigma_i u_i)`` with ``u_i`` a
    random unit vector, nearly orthogonal to the source in 384 dimensions, and
    ``sigma_i = sqrt(1 / c_i^2 - 1)`` for a target cosine ``c_i`` drawn from
    :data:`PLANTED_COSINES`. Sources are drawn with replacement among the rows
    that are not replaced, so a few sources get two copies (groups of three).

    Parameters
    ----------
    x : ndarray of shape (n, dim), float32, unit rows; changed in place
    seed : int
    chunk : int
        Rows drawn at a time (the noise stays small).

    Returns
    -------
    dup, src : ndarray of shape (m,), int64
        The replaced rows and the row each copies.
    """
    n = len(x)
    rng = np.random.default_rng(seed)
    m = int(n * PLANTED_SHARE)
    dup = np.sort(rng.choice(n, m, replace=False))
    others = np.setdiff1d(np.arange(n), dup)
    src = rng.choice(others, m, replace=True)
    cos = rng.uniform(*PLANTED_COSINES, m)
    sigma = np.sqrt(1.0 / cos**2 - 1.0).astype(np.float32)
    for lo in range(0, m, chunk):
        noise = rng.standard_normal((min(chunk, m - lo), x.shape[1]), dtype=np.float32)
        noise *= (sigma[lo : lo + chunk] / np.linalg.norm(noise, axis=1))[:, None]
        noise += x[src[lo : lo + chunk]]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x[dup[lo : lo + chunk]] = noise
    return dup.astype(np.int64), src.astype(np.int64)


def dedup_child(n: int, n_queries: int, threads: int, threshold: float | None) -> dict[str, Any]:
    """Run in a fresh process: plant duplicates, time ``find_duplicates``, check what it found."""
    import simsearch
    from simsearch.applications.candidates import DEFAULT_VECTOR_THRESHOLD

    base, _ = _data.cached_synthetic_mixture(n, n_queries)  # memory-mapped
    path = base.filename
    del base
    # Read into this process's memory (and its peak), not copied from the
    # mapping: a copy would be resident twice while it is made.
    x = np.load(path)
    dup, src = plant_duplicates(x)
    gc.collect()
    out: dict[str, Any] = {"n": n, "k": K, "threads": threads, "input_bytes": int(x.nbytes)}
    out["rss_before_bytes"] = _common.rss_bytes()
    out["peak_rss_before_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    pairs, groups = simsearch.find_duplicates(
        x, threshold=threshold, k=K, progress=False, index_params={"num_threads": threads}
    )
    out["time_s"] = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out["peak_rss_bytes"] = cpu1.ru_maxrss * 1024  # kilobytes on Linux
    out["pairs"] = pairs.num_rows
    out["groups"] = len(np.unique(groups.column("group_id").to_numpy())) if groups.num_rows else 0
    out["rows_in_groups"] = groups.num_rows
    out["largest_group"] = int(groups.column("group_size").to_numpy().max()) if groups.num_rows else 0

    # What came back, against the truth.
    t = DEFAULT_VECTOR_THRESHOLD if threshold is None else threshold
    a = pairs.column("id_a").to_numpy().astype(np.int64)
    b = pairs.column("id_b").to_numpy().astype(np.int64)
    found = np.minimum(a, b) * n + np.maximum(a, b)
    planted_cos = np.einsum("ij,ij->i", x[dup], x[src])
    planted = (np.minimum(dup, src) * n + np.maximum(dup, src))[planted_cos >= t]
    out["planted_pairs"] = len(planted)
    out["planted_recall"] = float(np.isin(planted, found).mean()) if len(planted) else None
    rng = np.random.default_rng(5)
    sample = rng.choice(np.union1d(dup, src), N_SAMPLE, replace=False)
    nn, nn_scores = _data.exact_knn(x, x[sample], K + 1, metric="ip", chunk=25_000)
    rows = np.repeat(sample, K + 1)
    nn, nn_scores = nn.reshape(-1), nn_scores.reshape(-1)
    true = (rows != nn) & (nn_scores >= t)
    true_keys = np.unique(np.minimum(rows, nn)[true] * n + np.maximum(rows, nn)[true])
    out["sample_true_pairs"] = len(true_keys)
    out["sample_recall"] = float(np.isin(true_keys, found).mean()) if len(true_keys) else None
    touching = np.isin(a, sample) | np.isin(b, sample)
    exact = np.einsum("ij,ij->i", x[a[touching]], x[b[touching]])
    score = pairs.column("score").to_numpy()[touching]
    out["sample_max_score_error"] = float(np.abs(score - exact).max()) if touching.any() else None
    out["load_average_end"] = os.getloadavg()[0]
    return out


def run_dedup(args: argparse.Namespace) -> dict[str, Any]:
    """Step 6 in a fresh process; prints its figures."""
    _data.cached_synthetic_mixture(args.n, args.queries)  # drawn and cached once, here
    extra = [] if args.threshold is None else ["--threshold", str(args.threshold)]
    res = _common.run_json_child(
        __file__, "--dedup-child", "--n", str(args.n), "--queries", str(args.queries),
        "--threads", str(args.threads), *extra,
    )  # fmt: skip
    recall = res["planted_recall"]
    sample = res["sample_recall"]
    print(f"find_duplicates, {res['n']:,} x 384 float32 (k={res['k']}, {res['threads']} threads, fresh process): "
          f"{res['time_s']:.1f} s ({res['cpu_s']:.0f} s CPU), peak RSS {res['peak_rss_bytes'] / 1e9:.2f} GB "
          f"(input {res['input_bytes'] / 1e9:.2f} GB, process before the call {res['rss_before_bytes'] / 1e9:.2f} GB, "
          f"peak before the call {res['peak_rss_before_bytes'] / 1e9:.2f} GB); "
          f"{res['pairs']:,} pairs, {res['groups']:,} groups ({res['rows_in_groups']:,} rows, largest {res['largest_group']}); "
          f"planted pairs at or above the threshold found: {recall if recall is None else f'{recall:.4f}'} "
          f"of {res['planted_pairs']:,}; exact pairs of {N_SAMPLE:,} sampled rows found: "
          f"{sample if sample is None else f'{sample:.4f}'} of {res['sample_true_pairs']:,}; "
          f"largest score error {res['sample_max_score_error']}; load average at end {res['load_average_end']:.2f}",
          flush=True)  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=100_000, help="vectors per add call")
    parser.add_argument("--rescore", action="store_true", help="keep float32 originals for rescoring")
    parser.add_argument("--keep", action="store_true", help="keep the saved index file")
    parser.add_argument("--dedup-only", action="store_true", help="run step 6 (find_duplicates) alone")
    parser.add_argument("--no-dedup", action="store_true", help="skip step 6 (find_duplicates)")
    parser.add_argument("--threshold", type=float, default=None, help="find_duplicates threshold (default: its own)")
    parser.add_argument("--child", nargs=2, metavar=("INDEX", "GT"), help=argparse.SUPPRESS)
    parser.add_argument("--dedup-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        path, gt_path = args.child
        print(json.dumps(load_search_remove(path, args.n, args.queries, gt_path, not args.no_verify)))
        return 0
    if args.dedup_child:
        print(json.dumps(dedup_child(args.n, args.queries, args.threads, args.threshold)))
        return 0

    print(_common.host_line())
    if args.dedup_only:
        summary = {"cpu": _common.cpu_flags(), "find_duplicates": run_dedup(args)}
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
        print(json.dumps(summary))
        return 0
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
    if not args.no_dedup:
        summary["find_duplicates"] = run_dedup(args)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print(json.dumps(summary))
    return 0 if full["removed_returned"] == 0 and full["removed_contained"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
