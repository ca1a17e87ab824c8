"""Load test of ``simsearch serve``: /v1/search with adaptive batching vs batching off.

Two real servers run on 127.0.0.1 over the same index folder, side by side:

- **adaptive**: the defaults (``--max-batch-size 32 --max-wait-ms 5``);
- **anchor**: batching off (``--max-batch-size 1``): one encoder call per request.

Both keep an in-memory embedding cache (``--cache :memory:``), so the cold
cells pay for the misses as a real cache-fronted service does. This process is
the load generator: closed-loop asyncio clients on raw keep-alive HTTP/1.1
connections (no client library in the way), each cell bounded in time and in
requests. Every text query is a real product title from ``../shared/data``,
drawn without repeats for the cold cells; the warm cell repeats titles the
server has already seen.

The index holds ``--items`` vectors (default 100,000): the 42,041 title
embeddings of ``benchmarks/_data.py`` (all-MiniLM-L6-v2) and, past those,
vectors of the synthetic mixture, so a search walks a 100k-item graph. With
``--titles N`` only the first N titles go in, embedded by the served
encoder itself (quicker to build than embedding every title). It is built
once and kept under ``benchmarks/.cache/``. Queries are drawn from all titles.

Prints a table (throughput, p50/p99 latency, status counts, server CPU
time per answered search, per cell), the adaptive/anchor ratios of
throughput and of CPU per search at each concurrency, the CPU and its flags,
the two serving goals of issue 15 (text -> encode -> search p99 at
concurrency 1 with adaptive batching, goal <= 10 ms; adaptive / batching-off
throughput at concurrency 32, goal >= 3x) with the load average, and one
JSON object on its last line. On a shared machine the wall-clock figures
move with everyone else's load; CPU per search moves much less.

Usage::

    python benchmarks/serve_load.py                      # about 2-3 minutes
    python benchmarks/serve_load.py --seconds 10 --concurrency 1 8 32 128
    python benchmarks/serve_load.py --items 20000 --titles 2000 --concurrency 1 32 --seconds 6   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common
import _data


#: Goals of issue 15, item 6.
GOAL_C1_P99_MS = 10.0
GOAL_C32_RATIO = 3.0


def build_folder(n_items: int, n_titles: int | None = None) -> tuple[Path, int]:
    """The served index folder (built once, then reused); returns it and the number of real titles in it."""
    titles = _data.load_titles()
    n_real = min(n_items, len(titles), n_titles or len(titles))
    folder = _common.CACHE_DIR / (f"service-index-{n_items}" if n_titles is None else f"service-index-{n_items}-{n_real}")
    if (folder / "meta.json").exists():
        return folder, n_real
    from simsearch.encoders import TextEncoder
    from simsearch.index import Index
    from simsearch.serving import store

    encoder = TextEncoder()
    base = _data.title_embeddings()[:n_real] if n_titles is None else encoder.encode([t if t.strip() else "untitled" for t in titles[:n_real]], progress=False)
    if n_items > n_real:
        extra, _ = _data.cached_synthetic_mixture(100_000 if n_items - n_real <= 100_000 else n_items - n_real, 1000)
        base = np.vstack([base, np.asarray(extra[: n_items - n_real], dtype=np.float32)])
    names = titles[:n_real] + [f"synthetic item {i}" for i in range(n_items - n_real)]
    print(f"building a {n_items}-item index ({n_real} titles + {n_items - n_real} synthetic) ...", file=sys.stderr)
    start = time.perf_counter()
    index = Index(base.shape[1], metric="ip")
    index.add(base, ids=np.arange(n_items, dtype=np.uint64))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {
        "format": store.INDEX_DIR_FORMAT, "model": encoder.name, "model_path": None, "precision": encoder.precision,
        "fingerprint": encoder.fingerprint, "dim": int(base.shape[1]), "count": n_items, "metric": "ip",
    }  # fmt: skip
    store.write_snapshot(tmp, index, list(range(n_items)), names, meta)
    os.replace(tmp, folder)
    print(f"built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return folder, n_real


class Server:
    """``simsearch serve`` in a subprocess."""

    def __init__(self, folder: Path, port: int, *args: str) -> None:
        self.port = port
        env = dict(os.environ, PYTHONPATH=_common.simsearch_path())  # the simsearch this process imports
        env.pop("SIMSEARCH_TOKEN", None)
        command = [sys.executable, "-m", "simsearch.cli", "serve", "--index", str(folder), "--port", str(port), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    async def ready(self) -> None:
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"server on port {self.port} exited with {self.process.returncode}")
            try:
                status, _ = await request_once(self.port, "GET", "/readyz", b"")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"server on port {self.port} not ready in 180 s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux ``/proc``)."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def request_once(port: int, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    c = Connection(port)
    try:
        return await c.request(method, path, body)
    finally:
        c.close()


async def run_cell(port: int, concurrency: int, queries: list[str], seconds: float, max_requests: int, k: int = 10) -> dict:
    """Closed loop: ``concurrency`` clients, each sending its next query when the last one is answered."""
    bodies = [json.dumps({"query": q, "k": k}).encode() for q in queries]
    latencies: list[float] = []
    codes: dict[int, int] = {}
    next_query = 0
    end = time.monotonic() + seconds

    async def client() -> None:
        nonlocal next_query
        conn = Connection(port)
        try:
            while time.monotonic() < end and next_query < min(len(bodies), max_requests):
                body = bodies[next_query]
                next_query += 1
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.request("POST", "/v1/search", body)
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    status = -1
                    conn.close()
                    conn = Connection(port)
                latency = time.perf_counter() - t0
                codes[status] = codes.get(status, 0) + 1
                if status == 200:
                    latencies.append(latency)
        finally:
            conn.close()

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.monotonic() - start
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "requests": sum(codes.values()),
        "ok": len(latencies),
        "seconds": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "codes": {str(c): n for c, n in sorted(codes.items())},
    }


async def metrics_of(port: int) -> dict[str, float]:
    _, text = await request_once(port, "GET", "/metrics", b"")
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        for name in ("simsearch_batch_size_sum", "simsearch_batch_size_count", "simsearch_cache_hit_rate"):
            if line.startswith(name + " "):
                out[name] = float(line.split()[1])
    return out


async def main_async(args: argparse.Namespace) -> dict:
    folder, n_real = build_folder(args.items, args.titles)
    titles = [t for t in _data.load_titles() if t.strip()]
    random.Random(0).shuffle(titles)
    configs = {
        "adaptive": ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
        "anchor": ["--max-batch-size", "1"],
    }
    # No deadline: the cells compare capacity. With one, the overload policy
    # refuses (429) what the batching-off server cannot finish in time, and
    # its 200s then measure the policy, not the batching (the overload figures
    # are benchmarks/reliability.py --only overload).
    common = ["--cache", ":memory:", "--max-queue", "1024", "--timeout-ms", "0"]
    if args.threads:
        common += ["--threads", str(args.threads)]
    servers = {name: Server(folder, args.port + i, *common, *extra) for i, (name, extra) in enumerate(configs.items())}
    results: dict[str, list[dict]] = {name: [] for name in configs}
    batches: dict[str, float] = {}
    try:
        await asyncio.gather(*(s.ready() for s in servers.values()))
        cursor = 0
        for c in args.concurrency:
            for name, server in servers.items():  # side by side: each cell right after the other
                pool = titles[cursor : cursor + args.max_requests]
                cursor += args.max_requests
                before = await metrics_of(server.port)
                cpu = server.cpu_seconds()
                cell = await run_cell(server.port, c, pool, args.seconds, args.max_requests)
                cpu = server.cpu_seconds() - cpu
                after = await metrics_of(server.port)
                # CPU per answered search: what a dedicated machine's throughput
                # would follow, less blurred than wall time by other processes.
                cell["server_cpu_ms_per_ok"] = round(cpu * 1000 / cell["ok"], 2) if cell["ok"] else None
                n = after.get("simsearch_batch_size_count", 0) - before.get("simsearch_batch_size_count", 0)
                cell["mean_batch"] = round((after.get("simsearch_batch_size_sum", 0) - before.get("simsearch_batch_size_sum", 0)) / n, 2) if n else None
                cell["cache"] = "cold"
                cell["load_average"] = round(os.getloadavg()[0], 2)
                results[name].append(cell)
                print(f"{name:8s} c={c:<4d} {cell['throughput_rps']:8.1f} req/s  p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms  "
                      f"server CPU {cell['server_cpu_ms_per_ok']} ms/search  mean batch {cell['mean_batch']}  codes {cell['codes']}", flush=True)
        # Warm cache: a pass (not measured) puts these titles in each server's
        # cache; the measured cell then repeats them.
        warm = titles[cursor : cursor + 200]
        for name, server in servers.items():
            await run_cell(server.port, 8, warm, 120.0, len(warm))
            cell = await run_cell(server.port, args.warm_concurrency, warm * 100, args.seconds, args.max_requests)
            cell["cache"] = "warm"
            cell["cache_hit_rate"] = (await metrics_of(server.port)).get("simsearch_cache_hit_rate")
            results[name].append(cell)
            print(f"{name:8s} c={args.warm_concurrency:<4d} warm {cell['throughput_rps']:8.1f} req/s  p50 {cell['p50_ms']:7.2f} ms  "
                  f"p99 {cell['p99_ms']:7.2f} ms  codes {cell['codes']}", flush=True)
        batches = {name: (await metrics_of(s.port)).get("simsearch_batch_size_count", 0) for name, s in servers.items()}
    finally:
        for s in servers.values():
            s.stop()
    return {"folder": str(folder), "n_titles": n_real, "results": results, "batches": batches}


def serving_goals(adaptive: list[dict], ratios: dict[str, float]) -> dict[str, dict]:
    """The two figures of issue 15 item 6: p99 at concurrency 1 (adaptive, cold cache) and the c=32 throughput ratio."""
    c1 = next((c for c in adaptive if c["concurrency"] == 1 and c["cache"] == "cold"), None)
    p99 = c1["p99_ms"] if c1 else None
    ratio = ratios.get("c32-cold")
    return {
        "c1_p99_ms": {"value": p99, "goal": f"<= {GOAL_C1_P99_MS:g}", "met": p99 is not None and p99 <= GOAL_C1_P99_MS},
        "c32_throughput_ratio": {"value": ratio, "goal": f">= {GOAL_C32_RATIO:g}", "met": ratio is not None and ratio >= GOAL_C32_RATIO},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="index size (default 100000)")
    parser.add_argument("--titles", type=int, default=None, help="real titles in the index, embedded by the served encoder (default: all, from the shared cache)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each cell (default 8)")
    parser.add_argument("--max-requests", type=int, default=4000, help="most requests per cell (default 4000)")
    parser.add_argument("--warm-concurrency", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=18700, help="first of two ports (default 18700)")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="threads of one encoder call in both servers (default 0: the encoder's default, one per physical core)",
    )  # fmt: skip
    args = parser.parse_args()

    print(_common.host_line())
    print(f"encoder threads: {args.threads or 'default'}")
    load_start = round(os.getloadavg()[0], 2)
    out = asyncio.run(main_async(args))
    ratios = {}
    cpu_ratios = {}
    print("\nconcurrency  cache  adaptive req/s  anchor req/s  ratio  adaptive p50/p99 ms  anchor p50/p99 ms  CPU ms/search adaptive, anchor, ratio")
    for a, b in zip(out["results"]["adaptive"], out["results"]["anchor"]):
        ratio = a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else float("nan")
        ratios[f"c{a['concurrency']}-{a['cache']}"] = round(ratio, 2)
        ca, cb = a.get("server_cpu_ms_per_ok"), b.get("server_cpu_ms_per_ok")
        cpu = f"{ca:7.2f}, {cb:7.2f}, {cb / ca:5.2f}" if ca and cb else "-"
        if ca and cb:
            cpu_ratios[f"c{a['concurrency']}-{a['cache']}"] = round(cb / ca, 2)
        print(f"{a['concurrency']:>11d}  {a['cache']:5s}  {a['throughput_rps']:>14.1f}  {b['throughput_rps']:>12.1f}  {ratio:5.2f}  "
              f"{a['p50_ms']:>8.2f} / {a['p99_ms']:<8.2f}  {b['p50_ms']:>7.2f} / {b['p99_ms']:<7.2f}  {cpu}")
    five_xx = sum(n for side in out["results"].values() for cell in side for code, n in cell["codes"].items() if code.startswith("5"))
    load_end = round(os.getloadavg()[0], 2)
    print(f"5xx responses: {five_xx}; load average at start {load_start:.2f}, at end {load_end:.2f}")
    goals = serving_goals(out["results"]["adaptive"], ratios)
    for name, g in goals.items():
        verdict = "-" if g["value"] is None else ("met" if g["met"] else "not met")
        print(f"goal {name}: {g['value']} (goal {g['goal']}): {verdict}")
    summary = {
        "benchmark": "service", "items": args.items, "titles_in_index": out["n_titles"], "cpu": _common.cpu_flags(), "cores": os.cpu_count(),
        "seconds_per_cell": args.seconds, "encoder_threads": args.threads or None, "adaptive": out["results"]["adaptive"], "anchor": out["results"]["anchor"],
        "throughput_ratio": ratios, "cpu_per_search_ratio": cpu_ratios, "five_xx": five_xx,
        "goals": goals, "load_average": {"start": load_start, "end": load_end},
    }  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
