"""ShardedIndex against one Index, in-process and on Ray, in one run.

On the synthetic mixture of ``_data.py`` (unit 384-d vectors, 1,000 queries,
exact neighbours by brute force), with the same graph parameters everywhere:

1. the anchor: one ``simsearch.Index`` built with one thread, searched with
   ``--threads`` threads (and, for context, built with ``--threads`` threads);
2. ``ShardedIndex`` with the hash partition and 2, 4 and 8 shards, built and
   searched with ``--threads`` threads: build time, recall@10, QPS;
3. ``ShardedIndex`` with the kmeans partition (4 and 8 shards) searched with
   ``n_probe = n_shards / 4`` and ``n_shards / 2``;
4. the 4-shard hash index reopened on a local Ray (one actor per shard, then
   all four shards in one actor): per-query latency at batch 1 against the
   same shards in-process, and throughput at batch 1,000.

Goals (issue 4, and issue 15 item 3 for recall): hash recall@10 within 0.01
of one index at ef 64 and within 0.005 at ef 256 (the shards share one
quantizer, so their merged int8 scores compare; ``--recall-efs``); build
with 2 threads >= 1.6x faster than one index on one thread; kmeans at
n_probe = n_shards/4 >= 2x the QPS of hash at recall >= 0.95; Ray overhead at
batch 1 < 2 ms and batch-1,000 throughput >= 0.7x in-process.

Usage::

    python benchmarks/sharding.py                 # 20,000 vectors, about 3 minutes on 2 busy cores
    python benchmarks/sharding.py --n 1000000     # the issue's size (hours on 2 cores)
    python benchmarks/sharding.py --no-ray

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common
import _data

import simsearch
from simsearch.sharding import ShardedIndex


def qps(search: Any, queries: np.ndarray, repeats: int = 2) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` queries per second of one batch call, and its ids."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = search(queries)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best, ids


def latency_ms(search: Any, queries: np.ndarray) -> float:
    """Median milliseconds of single-query calls."""
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="indexed vectors (default 20,000)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, default=64, help="search ef, the same for every index (default 64)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8], help="hash shard counts")
    parser.add_argument("--kmeans-shards", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--recall-efs", type=int, nargs="+", default=[64, 256], help="efs of the recall goals")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = parser.parse_args()

    print(_common.host_line())
    base, queries = _data.cached_synthetic_mixture(args.n, args.queries)
    base = np.ascontiguousarray(base)
    true_ids, true_scores = _data.exact_knn(base, queries, args.k, metric="ip")
    params = {"metric": "ip", "M": args.M, "ef_construction": args.ef_construction, "ef": args.ef}
    k, t = args.k, args.threads
    out: dict[str, Any] = {
        "n": args.n, "dim": int(base.shape[1]), "queries": len(queries), "k": k, "ef": args.ef, "threads": t,
        "cpu": _common.cpu_flags(), "cpu_model": _common.cpu_model(),
    }  # fmt: skip

    # 1. the anchor
    start = time.perf_counter()
    one = simsearch.Index(base.shape[1], num_threads=1, **params)
    one.add(base)
    build_1t = time.perf_counter() - start
    one.num_threads = t
    q_one, found = qps(lambda q: one.search(q, k=k, ef=args.ef)[0], queries)
    r_one = _data.recall_at_k(found, base, queries, true_scores)
    start = time.perf_counter()
    one_t = simsearch.Index(base.shape[1], num_threads=t, **params)
    one_t.add(base)
    build_tt = time.perf_counter() - start
    del one_t
    r_one_at = {ef: _data.recall_at_k(one.search(queries, k=k, ef=ef)[0], base, queries, true_scores) for ef in args.recall_efs}
    out["one_index"] = {
        "build_s_1_thread": build_1t, f"build_s_{t}_threads": build_tt, "recall": r_one, "qps": q_one, "isa": one.isa,
        "recall_at_ef": r_one_at,
    }  # fmt: skip
    print(f"one Index: build {build_1t:.1f} s (1 thread), {build_tt:.1f} s ({t} threads); recall@{k} {r_one:.4f}; {q_one:.0f} QPS ({t} threads), kernel {one.isa}")
    print("one Index recall@" + f"{k}: " + ", ".join(f"ef {ef} {r:.4f}" for ef, r in r_one_at.items()))
    goals: dict[str, Any] = {}

    # 2. hash partition
    tmp = Path(tempfile.mkdtemp(prefix="simsearch-bench-"))
    out["hash"] = {}
    hash_qps: dict[int, float] = {}
    try:
        for n_shards in args.shards:
            start = time.perf_counter()
            sharded = ShardedIndex(base.shape[1], n_shards, num_threads=t, **params)
            sharded.add(base)
            build = time.perf_counter() - start
            q, found = qps(lambda x: sharded.search(x, k=k).ids, queries)
            r = _data.recall_at_k(found, base, queries, true_scores)
            hash_qps[n_shards] = q
            r_at = {ef: _data.recall_at_k(sharded.search(queries, k=k, ef=ef).ids, base, queries, true_scores) for ef in args.recall_efs}
            out["hash"][n_shards] = {
                "build_s": build, "build_speedup_vs_one_thread": build_1t / build, "recall": r,
                "recall_minus_one_index": r - r_one, "qps": q, "qps_vs_one_index": q / q_one, "recall_at_ef": r_at,
            }  # fmt: skip
            print(
                f"hash, {n_shards} shards: build {build:.1f} s ({build_1t / build:.2f}x one index on 1 thread); "
                f"recall@{k} {r:.4f} ({r - r_one:+.4f}); {q:.0f} QPS ({q / q_one:.2f}x one index)"
            )
            for ef, r_ef in r_at.items():
                # issue 15: within 0.005 of one index at ef 256, 0.01 at lower ef
                tol = 0.005 if ef >= 256 else 0.01
                met = r_ef >= r_one_at[ef] - tol
                goals[f"hash{n_shards}_recall_ef{ef}_within_{tol}"] = met
                print(f"  ef {ef}: recall@{k} {r_ef:.4f} vs one index {r_one_at[ef]:.4f} ({r_ef - r_one_at[ef]:+.4f}; goal -{tol}: {'met' if met else 'MISSED'})")
            if n_shards == 4 or (4 not in args.shards and n_shards == args.shards[0]):
                sharded.save(tmp / "hash")
            sharded.close()

        # 3. kmeans partition
        out["kmeans"] = {}
        for n_shards in args.kmeans_shards:
            start = time.perf_counter()
            sharded = ShardedIndex(base.shape[1], n_shards, partition="kmeans", num_threads=t, **params)
            sharded.add(base)
            build = time.perf_counter() - start
            out["kmeans"][n_shards] = {"build_s": build, "sizes": sharded.shard_sizes.tolist(), "probes": {}}
            for n_probe in sorted({max(1, n_shards // 4), max(1, n_shards // 2), n_shards}):
                q, found = qps(lambda x: sharded.search(x, k=k, n_probe=n_probe).ids, queries)
                r = _data.recall_at_k(found, base, queries, true_scores)
                ref = hash_qps.get(n_shards)
                out["kmeans"][n_shards]["probes"][n_probe] = {"recall": r, "qps": q, "qps_vs_hash": None if ref is None else q / ref}
                vs = "" if ref is None else f", {q / ref:.2f}x hash with {n_shards} shards"
                print(f"kmeans, {n_shards} shards, n_probe {n_probe}: recall@{k} {r:.4f}; {q:.0f} QPS{vs} (build {build:.1f} s)")
            sharded.close()

        # 4. the same shards on Ray
        if not args.no_ray:
            out["ray"] = ray_figures(tmp / "hash", queries, k, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["goals"] = goals
    print(json.dumps(out, default=float))


def ray_figures(path: Path, queries: np.ndarray, k: int, threads: int) -> dict[str, Any]:
    """The saved hash index on a local Ray, one actor per shard and all shards in one actor, against in-process."""
    import ray

    from simsearch import ShardedIndex

    # The workers import the simsearch this process imports.
    env = {"PYTHONPATH": _common.simsearch_path()}
    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    local = ShardedIndex.load(path, num_threads=threads)
    single = queries[:200]
    figures: dict[str, Any] = {"shards": local.n_shards}
    try:
        latency_ms(lambda q: local.search(q, k=k), single[:20])  # warm up
        lat_local = latency_ms(lambda q: local.search(q, k=k), single)
        q_local, ids_local = qps(lambda x: local.search(x, k=k).ids, queries)
        figures.update({"latency_ms_batch1_local": lat_local, "qps_batch1000_local": q_local})
        for per_actor in (1, local.n_shards):
            remote = ShardedIndex.load(path, num_threads=threads, engine="ray", engine_options={"shards_per_actor": per_actor})
            try:
                latency_ms(lambda q: remote.search(q, k=k), single[:20])
                lat_ray = latency_ms(lambda q: remote.search(q, k=k), single)
                q_ray, ids_ray = qps(lambda x: remote.search(x, k=k).ids, queries)
            finally:
                remote.close()
            same = bool(np.array_equal(ids_local, ids_ray))
            figures[f"{per_actor}_shards_per_actor"] = {
                "actors": -(-local.n_shards // per_actor), "latency_ms_batch1": lat_ray, "overhead_ms_batch1": lat_ray - lat_local,
                "qps_batch1000": q_ray, "throughput_ratio": q_ray / q_local, "same_results": same,
            }  # fmt: skip
            print(
                f"Ray, {local.n_shards} shards, {per_actor} per actor: batch 1 median {lat_ray:.2f} ms vs {lat_local:.2f} ms "
                f"in-process (overhead {lat_ray - lat_local:.2f} ms); batch {len(queries)}: {q_ray:.0f} vs {q_local:.0f} QPS "
                f"({q_ray / q_local:.2f}x); same results: {same}"
            )
        return figures
    finally:
        local.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
