"""Side-by-side ANN benchmark: simsearch int8 HNSW against hnswlib, faiss and usearch.

Every library builds an HNSW graph with M=16 and ef_construction=200 over the
same L2-normalized vectors, searched by cosine similarity (inner product on
unit vectors), and is measured the same way:

- build time with 1 and with 2 threads;
- index memory: resident-set growth of a fresh process from just before the
  build to just after it (the same method for every library), next to the
  size of the saved index file and the size the library itself reports;
- an ef sweep, one search thread: recall@10 against exact brute-force ground
  truth, queries per second with one query per call and with one call for a
  batch of 1,000 queries (medians of ``--repeats`` timings);
- then QPS at recall@10 = 0.90, 0.95 and 0.99, interpolated on the sweep, and
  simsearch's ratio to each library.

The libraries, each built in its own process so one's memory cannot hide another's:

============================  ======================================================
simsearch-int8                ``simsearch.Index(dtype="int8", rescore=False)``
simsearch-int8-rescore        ``simsearch.Index(dtype="int8", rescore=True)``
hnswlib-f32                   raw ``hnswlib.Index("ip")`` on float32
faiss-sq8                     raw ``faiss.IndexHNSWSQ`` with ``QT_8bit``, trained on the base
usearch-i8                    raw ``usearch.index.Index(dtype="i8", metric="cos")`` on
                              vectors we quantize ourselves (below)
============================  ======================================================

usearch's own float-to-int8 conversion truncates the components of unit vectors
to a few levels, so we scale each vector by ``127 / max|x|`` and round it (cosine
does not see a per-vector scale); queries are quantized the same way before the
timer starts. ``--with-backends`` adds simsearch's own hnswlib and faiss
backends (through ``simsearch.Index(backend=...)`` when the native index is
built, directly otherwise) to show the wrapper's overhead.

Data sets: ``titles``, all-MiniLM-L6-v2 embeddings of every product title in
``shared/data`` (about 42,000; 1,000 held out as queries), and ``synthetic``,
200,000 vectors from a fixed-seed mixture of 1,000 anisotropic Gaussians with
1,000 queries from the same mixture (see ``_data.py``).

Usage::

    nice python benchmarks/ann.py                       # both data sets, full sweep
    python benchmarks/ann.py --dataset synthetic --quick    # a few minutes

The last line printed is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

import numpy as np

import _common
import _data

M, EF_CONSTRUCTION, K = 16, 200, 10
TARGETS = (0.90, 0.95, 0.99)
FULL_EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 800)
QUICK_EFS = (10, 24, 48, 96, 192, 400)
LIBRARIES = ("simsearch-int8", "simsearch-int8-rescore", "hnswlib-f32", "faiss-sq8", "usearch-i8")
WRAPPERS = ("simsearch-hnswlib", "simsearch-faiss")
SIMSEARCH = ("simsearch-int8", "simsearch-int8-rescore")


# --------------------------------------------------------------------------- libraries
# Each adapter builds one library's index and answers the sweep's three
# questions: set ef, search one query, search a batch, all on one thread.
# Results are row numbers of the base (int64, -1 for a missing hit).


class HnswlibF32:
    def __init__(self, dim: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index.init_index(max_elements=len(base), M=M, ef_construction=EF_CONSTRUCTION)
        self.index.add_items(base, np.arange(len(base)), num_threads=threads)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(max(ef, K))

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.knn_query(q, k=K, num_threads=1)[0]

    def search_batch(self, q: np.ndarray) -> np.ndarray:
        return self.index.knn_query(q, k=K, num_threads=1)[0].astype(np.int64)

    def save(self, path: str) -> None:
        self.index.save_index(path)

    def load(self, path: str) -> None:
        self.index.load_index(path)

    def reported_bytes(self) -> int | None:
        return None  # hnswlib reports no in-memory size


class FaissSQ8:
    def __init__(self, dim: int) -> None:
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION

    def build(self, base: np.ndarray, threads: int) -> None:
        self.faiss.omp_set_num_threads(threads)
        self.index.train(base)
        self.index.add(base)
        self.faiss.omp_set_num_threads(1)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = max(ef, K)

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, K)[1]

    def search_batch(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, K)[1]

    def save(self, path: str) -> None:
        self.faiss.write_index(self.index, path)

    def load(self, path: str) -> None:
        self.index = self.faiss.read_index(path)
        self.faiss.omp_set_num_threads(1)

    def reported_bytes(self) -> int | None:
        return None


def quantize_i8(x: np.ndarray) -> np.ndarray:
    """Scale each row by 127 / max|row| and round: int8 (n, dim), the same cosines."""
    scale = np.float32(127.0) / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(1e-30))
    return np.clip(np.rint(x * scale), -127, 127).astype(np.int8)


class UsearchI8:
    def __init__(self, dim: int) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=dim, metric="cos", dtype="i8", connectivity=M, expansion_add=EF_CONSTRUCTION
        )

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return quantize_i8(x)

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index.add(np.arange(len(base), dtype=np.uint64), base, threads=threads)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = max(ef, K)

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q[0], K, threads=1).keys

    def search_batch(self, q: np.ndarray) -> np.ndarray:
        found = self.index.search(q, K, threads=1)
        rows = found.keys.astype(np.int64)
        rows[np.arange(K)[None, :] >= found.counts[:, None]] = -1  # usearch pads with key 0
        return rows

    def save(self, path: str) -> None:
        self.index.save(path)

    def load(self, path: str) -> None:
        self.index.load(path)

    def reported_bytes(self) -> int | None:
        return int(self.index.memory_usage)


class Simsearch:
    """``simsearch.Index``; ``backend`` and ``rescore`` pick the variant."""

    def __init__(self, dim: int, backend: str = "native", rescore: bool = False) -> None:
        import simsearch

        self.simsearch, self.dim = simsearch, dim
        self.kwargs: dict[str, Any] = dict(metric="cosine", M=M, ef_construction=EF_CONSTRUCTION)
        if backend == "native":
            self.kwargs.update(dtype="int8", rescore=rescore)
        else:
            self.kwargs.update(backend=backend, dtype="int8" if backend == "faiss" else "float32")
        # An empty index of the same kind, so the imports it triggers
        # (hnswlib, faiss) land before the memory baseline, not in the build.
        self.index: Any = simsearch.Index(dim, num_threads=1, **self.kwargs)
        self.ef = 64

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index = self.simsearch.Index(self.dim, num_threads=threads, **self.kwargs)
        self.index.add(base, ids=np.arange(len(base), dtype=np.uint64))
        self.index.num_threads = 1  # search on one thread

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, k=K, ef=self.ef)[0]

    def search_batch(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, k=K, ef=self.ef)[0].astype(np.int64)

    def save(self, path: str) -> None:
        self.index.save(path)

    def load(self, path: str) -> None:
        self.index = self.simsearch.Index.load(path, num_threads=1)

    def reported_bytes(self) -> int | None:
        return int(self.index.memory_bytes)

    def isa(self) -> str | None:
        return getattr(self.index, "isa", None)


class Backend:
    """simsearch's hnswlib/faiss backend object used directly (no native index needed)."""

    def __init__(self, dim: int, name: str) -> None:
        from simsearch.index import backends

        cls = backends.HnswlibBackend if name == "hnswlib" else backends.FaissBackend
        self.index = cls(dim, "cosine", M, EF_CONSTRUCTION)
        self.ef = 64

    def build(self, base: np.ndarray, threads: int) -> None:
        self.index.add(base, np.arange(len(base), dtype=np.uint64), threads)

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, K, self.ef, 1)[0]

    def search_batch(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, K, self.ef, 1)[0].astype(np.int64)

    def save(self, path: str) -> None:
        self.index.save(path)

    def load(self, path: str) -> None:
        self.index = type(self.index).load(path)

    def reported_bytes(self) -> int | None:
        return int(self.index.memory_bytes())


def native_available() -> str | None:
    """None when ``simsearch.Index`` builds a native int8 index here, else why not."""
    try:
        import simsearch

        simsearch.Index(8, metric="cosine", dtype="int8")
    except Exception as err:  # any failure means: measure without it, and say why
        return f"{type(err).__name__}: {err}"
    return None


def make(lib: str, dim: int) -> Any:
    if lib == "hnswlib-f32":
        return HnswlibF32(dim)
    if lib == "faiss-sq8":
        return FaissSQ8(dim)
    if lib == "usearch-i8":
        return UsearchI8(dim)
    if lib in SIMSEARCH:
        return Simsearch(dim, rescore=lib.endswith("rescore"))
    if lib in WRAPPERS:
        name = lib.split("-", 1)[1]
        return Simsearch(dim, backend=name) if native_available() is None else Backend(dim, name)
    raise ValueError(f"unknown library {lib!r}")


# --------------------------------------------------------------------------- one library


def index_path(prefix: str, lib: str) -> str:
    return f"{prefix}-index-{lib}"


def run_build(lib: str, prefix: str, build_threads: list[int]) -> dict:
    """Build and size one library in this (fresh) process; save the index for the sweep."""
    base = np.load(prefix + "-base.npy")
    dim = base.shape[1]
    out: dict[str, Any] = {"library": lib, "n": len(base), "build_s": {}}

    # The index that is sized, saved and searched is built first, with the
    # most threads, in a clean process, so freed memory cannot blur its growth.
    threads_order = sorted(build_threads, reverse=True)
    adapter = make(lib, dim)
    prepare = getattr(adapter, "prepare", None)
    b = prepare(base) if prepare else base
    gc.collect()
    rss0 = _common.rss_bytes()
    start = time.perf_counter()
    adapter.build(b, threads_order[0])
    out["build_s"][str(threads_order[0])] = time.perf_counter() - start
    gc.collect()
    out["rss_growth_bytes"] = _common.rss_bytes() - rss0
    out["reported_bytes"] = adapter.reported_bytes()
    if hasattr(adapter, "isa"):
        out["isa"] = adapter.isa()
    folder = index_path(prefix, lib)
    os.makedirs(folder, exist_ok=True)
    adapter.save(os.path.join(folder, "index"))
    # rescoring may keep the originals in a file beside the index
    out["file_bytes"] = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    del adapter
    gc.collect()

    for threads in threads_order[1:]:
        other = make(lib, dim)
        start = time.perf_counter()
        other.build(b, threads)
        out["build_s"][str(threads)] = time.perf_counter() - start
        del other
        gc.collect()
    return out


def run_sweep(libs: list[str], prefix: str, efs: list[int], repeats: int) -> dict:
    """Load every library's saved index into this process and sweep ef, interleaved.

    On a shared machine the load changes from minute to minute. Timing the
    libraries one after another would hand each a different share of the
    CPU; instead, for each ef, every repeat times every library in turn, so
    a burst of load lands on one repeat of each library, and the median
    drops it.
    """
    base = np.load(prefix + "-base.npy", mmap_mode="r")
    queries = np.load(prefix + "-queries.npy")
    true_scores = np.load(prefix + "-gt_scores.npy")
    adapters, qs = {}, {}
    for lib in libs:
        adapter = make(lib, base.shape[1])
        adapter.load(os.path.join(index_path(prefix, lib), "index"))
        prepare = getattr(adapter, "prepare", None)
        qs[lib] = prepare(queries) if prepare else queries
        adapters[lib] = adapter
    sweeps: dict[str, list[dict]] = {lib: [] for lib in libs}
    for ef in efs:
        single: dict[str, list[float]] = {lib: [] for lib in libs}
        batch: dict[str, list[float]] = {lib: [] for lib in libs}
        found: dict[str, np.ndarray] = {}
        for lib in libs:
            adapters[lib].set_ef(ef)
        for _ in range(repeats):
            for lib in libs:
                adapter, q = adapters[lib], qs[lib]
                start = time.perf_counter()
                found[lib] = adapter.search_batch(q)
                batch[lib].append(time.perf_counter() - start)
                rows = [q[i : i + 1] for i in range(len(q))]
                start = time.perf_counter()
                for row in rows:
                    adapter.search_one(row)
                single[lib].append(time.perf_counter() - start)
        for lib in libs:
            sweeps[lib].append(
                {
                    "ef": ef,
                    "recall": _data.recall_at_k(found[lib], base, queries, true_scores, metric="ip"),
                    "qps_single": len(queries) / statistics.median(single[lib]),
                    "qps_batch": len(queries) / statistics.median(batch[lib]),
                }
            )
    return sweeps


# --------------------------------------------------------------------------- reporting


def qps_at(sweep: list[dict], target: float, mode: str) -> tuple[float | None, bool]:
    """QPS at recall@10 = ``target``, interpolated where the sweep first reaches it.

    Walking ef upwards, the first point at or above the target and the point
    before it bracket the target; QPS is interpolated linearly in recall
    between them. Later points are ignored, so a lucky timing at a larger ef
    cannot raise the figure.

    Returns
    -------
    qps : float or None
        None if no point reaches the target.
    at_floor : bool
        True if the smallest ef already reached it (the figure is then a lower
        bound: a smaller ef, were the library to allow one, would be faster).
    """
    key = f"qps_{mode}"
    pts = sorted(sweep, key=lambda p: p["ef"])
    for i, p in enumerate(pts):
        if p["recall"] >= target:
            if i == 0:
                return p[key], True
            a = pts[i - 1]
            w = (target - a["recall"]) / (p["recall"] - a["recall"])
            return a[key] + w * (p[key] - a[key]), False
    return None, False


def fmt_qps(x: tuple[float | None, bool]) -> str:
    value, at_floor = x
    return "not reached" if value is None else f"{value:,.0f}" + ("*" if at_floor else "")


def report(dataset: str, results: list[dict], n_queries: int) -> dict:
    """Print one data set's tables; return its headline figures."""
    ok = [r for r in results if "error" not in r]
    print(f"\n=== {dataset}: {ok[0]['n'] if ok else '?'} vectors, {n_queries} queries, recall@{K} ===")
    for r in results:
        if "error" in r:
            print(f"{r['library']}: FAILED: {r['error']}")
    print("\nsweep (one search thread): ef, recall@10, QPS one query per call, QPS batch of 1,000")
    for r in ok:
        print(f"  {r['library']}")
        for p in r["sweep"]:
            print(
                f"    ef {p['ef']:>4}  recall {p['recall']:.4f}  "
                f"single {p['qps_single']:>9,.0f}  batch {p['qps_batch']:>9,.0f}"
            )

    print("\nbuild and memory")
    print(f"  {'library':<24} {'build 1 thr s':>13} {'build 2 thr s':>13} {'RSS growth MB':>14} "
          f"{'B/vector':>9} {'file MB':>8} {'reported MB':>12}")
    head: dict[str, Any] = {}
    for r in ok:
        n = r["n"]
        rep = r.get("reported_bytes")
        print(
            f"  {r['library']:<24} {r['build_s'].get('1', float('nan')):>13.1f} "
            f"{r['build_s'].get('2', float('nan')):>13.1f} {r['rss_growth_bytes'] / 1e6:>14.1f} "
            f"{r['rss_growth_bytes'] / n:>9.0f} {r['file_bytes'] / 1e6:>8.1f} "
            f"{'-' if rep is None else f'{rep / 1e6:.1f}':>12}"
        )
        head[r["library"]] = {
            "build_s": r["build_s"],
            "rss_bytes_per_vector": r["rss_growth_bytes"] / n,
            "file_bytes_per_vector": r["file_bytes"] / n,
            "qps_at_recall": {},
            "max_recall": max(p["recall"] for p in r["sweep"]),
        }
        if r.get("isa"):
            head[r["library"]]["isa"] = r["isa"]

    for mode, label in (("batch", "batch of 1,000 per call"), ("single", "one query per call")):
        print(f"\nQPS at recall@10 ({label}, one thread), max recall reached")
        print(f"  {'library':<24} " + " ".join(f"{t:>12}" for t in TARGETS) + f" {'max recall':>11}")
        for r in ok:
            vals = [qps_at(r["sweep"], t, mode) for t in TARGETS]
            head[r["library"]]["qps_at_recall"][mode] = {str(t): v[0] for t, v in zip(TARGETS, vals)}
            print(f"  {r['library']:<24} " + " ".join(f"{fmt_qps(v):>12}" for v in vals)
                  + f" {head[r['library']]['max_recall']:>11.4f}")
        for ours in (name for name in SIMSEARCH if name in head):
            print(f"  ratio {ours} / other:")
            for r in ok:
                if r["library"] in SIMSEARCH:
                    continue
                cells = []
                for t in TARGETS:
                    a = head[ours]["qps_at_recall"][mode][str(t)]
                    b = head[r["library"]]["qps_at_recall"][mode][str(t)]
                    cells.append("-" if a is None or b is None else f"{a / b:.2f}x")
                print(f"    vs {r['library']:<20} " + " ".join(f"{c:>12}" for c in cells))
    print("  * reached at the smallest ef measured (ef = k = 10): a lower bound")
    return head


# --------------------------------------------------------------------------- driver


def prepare_dataset(name: str, n: int | None, n_queries: int) -> str:
    """Write base, queries and exact ground truth for one data set; return the file prefix."""
    if name == "titles":
        vectors = _data.title_embeddings()
        base, queries = _data.split_queries(vectors, n_queries)
        if n is not None:
            base = base[:n]
    else:
        base, queries = _data.cached_synthetic_mixture(n or 200_000, n_queries)
    base = np.ascontiguousarray(base, dtype=np.float32)
    gt_ids, gt_scores = _data.exact_knn(base, queries, K, metric="ip")
    prefix = str(_common.CACHE_DIR / f"ann-{name}-{len(base)}-{len(queries)}")
    for part, arr in (("base", base), ("queries", queries), ("gt_ids", gt_ids), ("gt_scores", gt_scores)):
        np.save(f"{prefix}-{part}.npy", arr)
    return prefix


def run_child(args: argparse.Namespace, *extra: str) -> Any:
    """This script in a fresh process as a build or sweep worker; its JSON answer."""
    return _common.run_json_child(
        __file__, "--efs", ",".join(map(str, args.efs)), "--repeats", str(args.repeats),
        "--build-threads", ",".join(map(str, args.build_threads)), *extra,
    )  # fmt: skip


def run_dataset(prefix: str, libraries: list[str], args: argparse.Namespace) -> list[dict]:
    """Build each library in its own process, then sweep them all in one."""
    results = []
    for lib in libraries:
        start = time.perf_counter()
        try:
            results.append(run_child(args, "--build-worker", lib, "--prefix", prefix))
            print(f"  {lib}: built in {time.perf_counter() - start:.0f} s", flush=True)
        except RuntimeError as err:
            results.append({"library": lib, "error": str(err)})
    built = [r["library"] for r in results if "error" not in r]
    start = time.perf_counter()
    try:
        sweeps = run_child(args, "--sweep-worker", ",".join(built), "--prefix", prefix)
        print(f"  sweep: {time.perf_counter() - start:.0f} s", flush=True)
    except RuntimeError as err:
        sweeps = {}
        for r in results:
            r.setdefault("error", f"sweep failed: {err}")
    for r in results:
        if r["library"] in sweeps:
            r["sweep"] = sweeps[r["library"]]
        shutil.rmtree(index_path(prefix, r["library"]), ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("titles", "synthetic", "all"), default="all")
    parser.add_argument("--n", type=int, default=None, help="base vectors per data set (default: all titles, 200,000 synthetic)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="20,000 vectors, a short sweep, one timing each")
    parser.add_argument("--repeats", type=int, default=None, help="timings per point, median kept (default 3, quick 1)")
    parser.add_argument("--efs", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--build-threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--libraries", type=lambda s: s.split(","), default=list(LIBRARIES))
    parser.add_argument("--with-backends", action="store_true", help="also time simsearch's hnswlib/faiss backends")
    parser.add_argument("--build-worker", help=argparse.SUPPRESS)
    parser.add_argument("--sweep-worker", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.efs is None:
        args.efs = list(QUICK_EFS if args.quick else FULL_EFS)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.quick and args.n is None:
        args.n = 20_000

    if args.build_worker:
        print(json.dumps(run_build(args.build_worker, args.prefix, args.build_threads)))
        return 0
    if args.sweep_worker:
        print(json.dumps(run_sweep(args.sweep_worker.split(","), args.prefix, args.efs, args.repeats)))
        return 0

    print(_common.host_line())
    libraries = list(args.libraries) + (list(WRAPPERS) if args.with_backends else [])
    why_not = native_available()
    isa = None
    if why_not is None:
        import simsearch

        isa = getattr(simsearch.Index(8, metric="cosine", dtype="int8"), "isa", None)
        print(f"simsearch from {os.path.dirname(simsearch.__file__)}; kernel (index.isa): {isa}")
    else:
        print(f"simsearch native index unavailable ({why_not}): measuring the others only")
        libraries = [lib for lib in libraries if lib not in SIMSEARCH]
    print(f"M={M} ef_construction={EF_CONSTRUCTION} k={K} efs={args.efs} repeats={args.repeats} "
          f"build threads={args.build_threads}")

    datasets = ("titles", "synthetic") if args.dataset == "all" else (args.dataset,)
    summary: dict[str, Any] = {
        "cpu": _common.cpu_flags(), "isa": isa, "native": why_not is None, "datasets": {},
        "command": "python benchmarks/ann.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    for name in datasets:
        print(f"\npreparing {name} ...", flush=True)
        prefix = prepare_dataset(name, args.n, args.queries)
        results = run_dataset(prefix, libraries, args)
        summary["datasets"][name] = report(name, results, args.queries)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
