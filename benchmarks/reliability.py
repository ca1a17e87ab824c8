"""Reliability figures: fuzzed folders, concurrent callers, kills, overload, failing dependencies.

The long versions of ``tests/test_folder_fuzz.py``, ``tests/test_kill.py`` and
``tests/test_overload.py`` (their harness is ``tests/_faults.py``), plus a
concurrency stress test of one :class:`simsearch.Index` and the failures of
the two dependencies the library talks to (Redis, Ray):

- **fuzz**: every format in ``_faults.FUZZERS`` (sharded manifests, dedup
  state, saved matchers, the CLI index folder, the SQLite cache, and from
  ``tests/fuzz_index_files.py`` the native index file and the hnswlib and
  faiss containers, each in the three load modes default, ``mmap=True`` and
  ``verify=False``) in each of its modes: cases, crashes, hangs, and
  rejections by exception type.
- **concurrency**: 8 threads over add / remove / search / filtered search /
  contains / ids / get_vectors / attribute_names / memory_bytes / compact /
  save on one index, in a child with a timeout: deadlocks, crashes and
  invariant violations (a removed id returned, ``len(ix) != ids().size``).
- **kills**: SIGKILLs at random moments inside ``Index.save``,
  ``ShardedIndex.save``, ``Deduplicator.update`` + ``save`` and
  ``Service.add``, and one kill before every durability call of the Python
  writers: recoveries, and acknowledged writes lost.
- **overload**: ``simsearch serve`` at twice the rate it sustains (the 200s
  per second of a saturated server): status codes, p50/p90/p99 of the
  accepted requests against their 2 s deadline, the server's own counters
  (refused, shed after queueing, answered late), the load generator's own
  lag, server RSS before and after.
- **dependencies**: Redis killed, stopped (a hung server) and restarted under
  a :class:`~simsearch.RedisEmbeddingCache` and under a Service using it; a Ray
  worker SIGKILLed under ``ShardedIndex(engine="ray")``: each call either
  answers, raises a clear error, or (a finding) hangs past a watchdog.
- **atheris** (when installed): coverage-guided fuzzing of ``Index.load``
  (seeded with native, hnswlib and faiss files) and of the sharded manifest
  for a fixed time; the coverage is that of simsearch's Python code (the
  extension is not built with libFuzzer's instrumentation).

Prints the CPU and its flags first, a line per figure, and one JSON object on
the last line.

Usage::

    python benchmarks/reliability.py --quick      # about 2-3 minutes
    python benchmarks/reliability.py              # 10,000 cases per format and mode, 100 kills per target: hours
    python benchmarks/reliability.py --only fuzz kills --fuzz-cases 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common

_common.use_test_harness()  # the fault harness lives in tests/ and is shared with the tests
import _faults  # noqa: E402
import fuzz_index_files  # noqa: E402  registers the native, hnswlib and faiss index-file fuzzers with _faults

HERE = Path(__file__).resolve().parent

SECTIONS = ("fuzz", "concurrency", "kills", "overload", "deps", "atheris")


cpu_flags = _common.cpu_flags
host_line = _common.host_line


# ---------------------------------------------------------------------- fuzz


def fuzz(
    work: Path, cases: int, matcher_cases: int, seed: int, malloc_check: bool, formats: list[str] | None = None,
    modes: list[str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = _faults.malloc_check_env() if malloc_check else {}
    if malloc_check:
        print(f"fuzz children run under glibc's heap checker: {env or 'not installed here'}")
    for name, fuzzer in _faults.FUZZERS.items():
        if formats and name not in formats:
            continue
        for mode in fuzzer.modes:
            if modes and mode not in modes:
                continue
            # A mutated model is exported and compiled anew (seconds a case): fewer of those.
            n = matcher_cases if name == "matcher" and mode.endswith("-model") else cases
            start = time.perf_counter()
            # An export of a mutated model takes a minute or more on a busy machine: a hang is what outlasts 10.
            timeout = 600.0 if mode == "resealed-model" else 30.0
            result = _faults.run_fuzz(name, mode, work / f"fuzz-{name}", n, seed=seed, env=env, case_timeout=timeout)
            summary = result.summary()
            summary["seconds"] = round(time.perf_counter() - start, 1)
            summary["examples"] = [
                f"{o['verdict']}: {o['mutation']} -> {o['type']}: {o['message']}"[:240] for o in result.bad("crash", "hang", "untyped")[:5]
            ]
            summary["builtin_examples"] = [
                f"{o['mutation']} -> {o['type']}: {o['message']}"[:240] for o in result.bad("tolerated")[:5]
            ]
            out[f"{name}/{mode}"] = summary
            print(
                f"fuzz {name:>10}/{mode:<8} {summary['cases']:6d} cases: {summary['crash']} crashes, {summary['hang']} hangs, "
                f"{summary['untyped']} untyped, {summary['tolerated']} builtin, {summary['typed']} SimsearchError, "
                f"{summary['accepted']} accepted ({summary['seconds']} s)",
                flush=True,
            )
            for line in summary["examples"]:
                print(f"    {line}")
            for line in summary["builtin_examples"][:3]:
                print(f"    builtin: {line}")
    return out


# --------------------------------------------------------------- concurrency

_CONCURRENCY_CHILD = r'''
import json, sys, threading, time, random
import numpy as np
import simsearch
from simsearch._validation import NO_ID

seconds, seed, dim = float(sys.argv[1]), int(sys.argv[2]), 32
import faulthandler
faulthandler.dump_traceback_later(seconds + 20, exit=True)  # a deadlock prints every thread's stack, then exits
rng = np.random.default_rng(seed)
ix = simsearch.Index(dim, num_threads=2)
first = rng.normal(size=(2000, dim)).astype(np.float32)
ix.add(first, ids=np.arange(2000, dtype=np.uint64), attributes={"color": np.arange(2000) % 5})
live, removed, lock = set(range(2000)), set(), threading.Lock()
next_id = [2000]
counts, errors, violations = {}, [], []
stop = time.monotonic() + seconds
path = sys.argv[3]

def count(name):
    with lock:
        counts[name] = counts.get(name, 0) + 1

def guard(fn):
    def run():
        r = random.Random(hash(fn.__name__) ^ seed)
        while time.monotonic() < stop:
            try:
                fn(r)
            except (KeyError, simsearch.UnknownIdError):
                count("expected_key_error")
            except Exception as err:
                errors.append(f"{fn.__name__}: {type(err).__name__}: {err}"[:300])
    return run

def adder(r):
    with lock:
        lo = next_id[0]; next_id[0] += 50
    x = np.random.default_rng(lo).normal(size=(50, dim)).astype(np.float32)
    ix.add(x, ids=np.arange(lo, lo + 50, dtype=np.uint64), attributes={"color": np.arange(50) % 5})
    with lock:
        live.update(range(lo, lo + 50))
    count("add")

def remover(r):
    with lock:
        if len(live) < 500:
            return
        pick = r.sample(sorted(live), 20)
        live.difference_update(pick)
    ix.remove(pick)
    with lock:
        removed.update(pick)
    count("remove")

def searcher(r):
    with lock:
        gone = set(removed)
    q = np.random.default_rng(r.randrange(1 << 30)).normal(size=(8, dim)).astype(np.float32)
    if r.random() < 0.5:
        found, _ = ix.search(q, k=10)
        count("search")
    else:
        found, _ = ix.search(q, k=10, filter={"color": [1, 3]})
        count("filtered_search")
    bad = gone.intersection(int(i) for i in found.ravel() if i != NO_ID)
    if bad:
        violations.append(f"search returned removed ids {sorted(bad)[:5]}")

def reader(r):
    with lock:
        some = r.sample(sorted(live), 5)
    ix.contains(np.array(some, dtype=np.uint64)); (some[0] in ix)
    ix.get_vectors(some[:2]); ids = ix.ids(); ix.attribute_names; ix.memory_bytes
    if np.unique(ids).size != ids.size:
        violations.append("ids() repeats an id")
    count("read")

def compactor(r):
    time.sleep(0.3); ix.compact(); count("compact")

def saver(r):
    time.sleep(0.3); ix.save(path); count("save")

threads = [threading.Thread(target=guard(f)) for f in (adder, adder, remover, searcher, searcher, reader, compactor, saver)]
for t in threads: t.start()
for t in threads: t.join()
ids = ix.ids()
if len(ix) != ids.size:
    violations.append(f"len(ix) {len(ix)} != ids().size {ids.size}")
if removed & set(ids.tolist()):
    violations.append("ids() holds removed ids")
if set(ids.tolist()) != live:
    violations.append(f"ids() differs from the ids added and not removed ({len(set(ids.tolist()) ^ live)} differ)")
print(json.dumps({"ops": counts, "errors": errors[:10], "n_errors": len(errors), "violations": violations[:10]}))
'''


def concurrency(work: Path, seconds: float, runs: int, seed: int) -> dict[str, Any]:
    out = {"runs": runs, "seconds_each": seconds, "deadlocks": 0, "crashes": 0, "errors": 0, "violations": 0, "ops": {}, "examples": []}
    for run in range(runs):
        command = [sys.executable, "-c", _CONCURRENCY_CHILD, str(seconds), str(seed + run), str(work / f"concurrent-{run}.ssi")]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60, env=_faults.simsearch_env(), cwd=work)
        except subprocess.TimeoutExpired:
            out["deadlocks"] += 1
            out["examples"].append(f"run {run}: no answer {seconds + 60:.0f} s after a {seconds:.0f} s run (deadlock)")
            continue
        if done.returncode != 0 and "Timeout (" in done.stderr:
            out["deadlocks"] += 1
            # the innermost frame of each stuck thread that is this script's own: which calls hang
            where = sorted({line.strip().split(", ", 1)[1] for line in done.stderr.splitlines()
                            if line.strip().startswith('File "<string>"') and not line.strip().endswith((" in run", " in <module>"))})
            out["examples"].append(f"run {run}: still running {seconds + 20:.0f} s after a {seconds:.0f} s run (deadlock) at {where}")
            continue
        if done.returncode != 0:
            out["crashes"] += 1
            out["examples"].append(f"run {run}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
            continue
        report = json.loads(done.stdout.strip().splitlines()[-1])
        out["errors"] += report["n_errors"]
        out["violations"] += len(report["violations"])
        out["examples"] += report["errors"][:2] + report["violations"][:2]
        for k, v in report["ops"].items():
            out["ops"][k] = out["ops"].get(k, 0) + v
    print(
        f"concurrency {runs} x 8 threads x {seconds:.0f} s: {out['deadlocks']} deadlocks, {out['crashes']} crashes, "
        f"{out['errors']} unexpected errors, {out['violations']} invariant violations; ops {out['ops']}",
        flush=True,
    )
    for line in out["examples"][:6]:
        print(f"    {line}")
    return out


# --------------------------------------------------------------------- kills


def kills(work: Path, n: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in _faults.KILL_TARGETS:
        start = time.perf_counter()
        r = _faults.run_kills(target, work / f"kill-{target}", n, seed=seed)
        out[target] = {"kills": r.kills, "in_write": r.in_write, "recovered": r.recovered, "acked": r.acked,
                       "failures": r.failures[:5], "seconds": round(time.perf_counter() - start, 1)}
        print(f"kills {target:>13}: {r.recovered}/{r.kills} recovered ({r.in_write} inside a write), "
              f"{r.acked} acknowledged writes checked, {len(r.failures)} failures", flush=True)
        for line in r.failures[:3]:
            print(f"    {line}")
    for target in _faults.KILL_TARGETS[1:]:  # the Python writers
        r = _faults.run_crash_points(target, work / f"points-{target}")
        out[f"{target}/crash_points"] = {"points": r.kills, "recovered": r.recovered, "failures": r.failures[:5]}
        print(f"crash points {target:>13}: {r.recovered}/{r.kills} recovered, {len(r.failures)} failures", flush=True)
        for line in r.failures[:3]:
            print(f"    {line}")
    return out


# ------------------------------------------------------------------ overload


def overload(work: Path, seconds: float) -> dict[str, Any]:
    import numpy as np

    from simsearch.cli import demo_sample_path, main

    folder = work / "overload-index"
    if not folder.exists():
        assert main(["-q", "index", "build", str(demo_sample_path()), "--out", str(folder)]) == 0
    server = _faults.Server(folder, work / "overload-server.log", "--max-queue", "32", "--max-batch-size", "16",
                            "--timeout-ms", "2000", "--threads", "1")
    try:
        starting = sorted({c for c, _ in server.starting})
        rss_before = server.rss_bytes()
        # The sustainable rate is what the server answers with 200 when it is
        # saturated: a closed loop of a few clients leaves batches half-full
        # (4 clients, as before, measured half the capacity, and "twice the
        # rate" was barely more than the server could serve), so a short open
        # loop at four times the closed loop's rate measures it.
        closed = _faults.closed_loop(server.url, seconds=3.0, threads=16, prefix="closed")
        sustained = _faults.open_loop(server.url, rate=4 * max(closed.rate, 2.0), seconds=3.0, threads=64, prefix="sustained")
        rate = max(sustained.rate, closed.rate, 2.0)
        loaded = _faults.open_loop(server.url, rate=2 * rate, seconds=seconds, threads=64, max_requests=int(2 * rate * seconds) + 1)
        rss_after = server.rss_bytes()
        import httpx

        alive = httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        counters = _server_counters(httpx.get(f"{server.url}/metrics", timeout=10).text)
    finally:
        server.stop()
    codes = {str(k): v for k, v in sorted(loaded.codes.items(), key=lambda kv: str(kv[0]))}
    other_5xx = sum(v for k, v in loaded.codes.items() if isinstance(k, int) and k >= 500)
    out = {
        "closed_loop_per_s": round(closed.rate, 1), "sustained_per_s": round(rate, 1), "offered_per_s": round(2 * rate, 1),
        "answered_per_s": round(loaded.rate, 1), "sent": loaded.sent,
        "codes": codes, "other_5xx": other_5xx, "missing_retry_after": loaded.missing_retry_after,
        "p99_accepted_ms": round(loaded.p99_ms(), 1), "deadline_ms": 2000, "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1), "healthz_after": alive, "codes_while_starting": starting,
        "p50_accepted_ms": round(loaded.percentile_ms(50), 1), "p90_accepted_ms": round(loaded.percentile_ms(90), 1),
        "accepted_past_deadline": loaded.slower_than(2.0), "server": counters,
        "client_lag_p99_ms": round(float(np.percentile(loaded.lag_s, 99)) * 1000, 1) if loaded.lag_s else None,
        "client_lag_max_ms": round(max(loaded.lag_s, default=0.0) * 1000, 1),
    }
    print(f"overload: sustained {out['sustained_per_s']}/s, offered {out['offered_per_s']}/s for {seconds:.0f} s: codes {codes}, "
          f"p99 of 200s {out['p99_accepted_ms']} ms (deadline 2000), RSS {out['rss_before_mb']} -> {out['rss_after_mb']} MB, "
          f"healthz after: {alive}; while starting: {starting}", flush=True)
    print(f"overload: closed loop of 16 {out['closed_loop_per_s']}/s; answered {out['answered_per_s']}/s of the {out['offered_per_s']}/s offered", flush=True)
    print(f"overload: 200s p50 / p90 / p99 {out['p50_accepted_ms']} / {out['p90_accepted_ms']} / {out['p99_accepted_ms']} ms, "
          f"{out['accepted_past_deadline']} past 2000 ms; server counters {counters}; "
          f"load generator's own lag p99 {out['client_lag_p99_ms']} ms, max {out['client_lag_max_ms']} ms", flush=True)
    return out


def _server_counters(text: str) -> dict[str, float]:
    """The service's overload counters from its Prometheus text: refused at admission, shed after queueing, answered late."""
    names = {"simsearch_rejected_total": "429_sent", "simsearch_shed": "shed", "simsearch_late": "late",
             "simsearch_deadline_exceeded": "deadline_exceeded"}  # fmt: skip
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            out[names[name]] = float(value)
        # The server's own latency of /v1/search (every status, from its arrival in the app to the answer).
        elif name.startswith('simsearch_request_duration_seconds_bucket{endpoint="/v1/search",le="2.0"}'):
            out["search_within_2s_server"] = float(value)
        elif name.startswith('simsearch_request_duration_seconds_count{endpoint="/v1/search"}'):
            out["search_count_server"] = float(value)
    return out


# -------------------------------------------------------------- dependencies

_REDIS_CHILD = r'''
import json, os, signal, subprocess, sys, time
import numpy as np
import _faults
from simsearch import Index
from simsearch.cache import RedisEmbeddingCache
from simsearch.serving import Service

port = int(sys.argv[1])
def start():
    p = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis
    for _ in range(100):
        try:
            redis.Redis(port=port).ping(); return p
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")

def timed(fn):
    return _faults.watchdog(fn, 20.0)

out = {}
server = start()
cache = RedisEmbeddingCache(f"redis://127.0.0.1:{port}/0")
keys, x = [b"a", b"b"], np.ones((2, 8), np.float32)
out["healthy"] = timed(lambda: (cache.put_many("m", keys, x), cache.get_many("m", keys)))
enc = _faults.FakeEncoder(8)
svc = Service(enc, Index(8, metric="ip"), cache=cache)
server.kill(); server.wait()
out["killed_get"] = timed(lambda: cache.get_many("m", keys))
out["killed_service_embed"] = timed(lambda: svc.embed(["hello"], timeout=5))
server = start()
out["restarted_get"] = timed(lambda: cache.get_many("m", keys))
server.send_signal(signal.SIGSTOP)
out["stopped_get"] = timed(lambda: cache.get_many("m", keys))
out["stopped_service_embed"] = timed(lambda: svc.embed(["stopped"], timeout=5))
server.send_signal(signal.SIGCONT); server.kill(); server.wait()
print(json.dumps(out))
os._exit(0)
'''

_RAY_CHILD = r'''
import json, os, signal, sys, time
import numpy as np
import ray
import _faults
from simsearch import ShardedIndex

def timed(fn):
    return _faults.watchdog(fn, 60.0)

ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
out = {}
x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
for restarts in (3, 0):
    ix = ShardedIndex(16, n_shards=2, engine="ray", engine_options={"max_restarts": restarts})
    ix.add(x)
    engine = ix._engine
    pid = ray.get(engine.actor_of(0).pid.remote())
    os.kill(pid, signal.SIGKILL)
    out[f"max_restarts={restarts}/search"] = timed(lambda: ix.search(x[:5], k=3))
    out[f"max_restarts={restarts}/add"] = timed(lambda: ix.add(x[:5] + 1))
    out[f"max_restarts={restarts}/len"] = timed(lambda: len(ix))
    ix.close()
print(json.dumps(out))
os._exit(0)
'''


def deps(work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    runs = (("redis", [sys.executable, "-c", _REDIS_CHILD, str(_faults.free_port())], 180),
            ("ray", [sys.executable, "-c", _RAY_CHILD], 400))
    for name, command, limit in runs:
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=limit, env=_faults.simsearch_env(), cwd=work)
            if done.returncode == 0 and done.stdout.strip():
                out[name] = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                out[name] = {"error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
        except subprocess.TimeoutExpired:
            out[name] = {"error": f"the {name} run did not finish in {limit} s"}
        for step, result in out[name].items():
            print(f"deps {name:>5} {step:<28} {result if isinstance(result, str) else json.dumps(result)}", flush=True)
        out[name]["seconds"] = round(time.perf_counter() - start, 1)
    hangs = sum(1 for part in out.values() for r in part.values() if isinstance(r, dict) and r.get("outcome") == "hang")
    out["hangs"] = hangs
    return out


# ------------------------------------------------------------------- atheris

_ATHERIS_CHILD = r"""
import os, sys, tempfile
import atheris

with atheris.instrument_imports(include=["simsearch"]):
    import simsearch
    from simsearch.errors import SimsearchError

target, pristine = sys.argv[1], sys.argv[2]
scratch = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
path = os.path.join(scratch, "case")
if target == "sharded":
    import shutil
    shutil.copytree(pristine, path)


def one_input(data):
    if target == "index":
        with open(path, "wb") as f:
            f.write(data)
        mode = len(data) % 3
        try:
            ix = simsearch.Index.load(path, mmap=mode == 1, verify=mode != 2, num_threads=1)
        except (SimsearchError, OSError):
            return
        try:
            fuzz_index_files.use_index(ix)
        except SimsearchError:
            pass
    else:
        with open(os.path.join(path, "manifest.json"), "wb") as f:
            f.write(data)
        try:
            ix = simsearch.ShardedIndex.load(path, num_threads=1)
        except (SimsearchError, OSError):
            return
        try:
            ix.search(fuzz_index_files.np.ones((1, ix.dim), "float32"), k=3)
        except SimsearchError:
            pass
        ix.close()


import fuzz_index_files
atheris.Setup([sys.argv[0], *sys.argv[3:]], one_input)
atheris.Fuzz()
"""


def atheris_run(work: Path, seconds: float) -> dict[str, Any]:
    """Coverage-guided fuzzing (atheris: coverage of simsearch's Python code) of ``Index.load`` and the sharded manifest."""
    import importlib.util
    import re

    if importlib.util.find_spec("atheris") is None:
        print("atheris: not installed (pip install atheris)", flush=True)
        return {"installed": False}
    out: dict[str, Any] = {"installed": True}
    seeds = work / "atheris-seeds-index"
    seeds.mkdir(parents=True, exist_ok=True)
    for base in fuzz_index_files.native_bases(work / "atheris-bases"):
        (seeds / base.name).write_bytes(base.read_bytes())
    for backend in ("hnswlib", "faiss"):
        (seeds / backend).write_bytes(fuzz_index_files.base_backend_index(backend, work / "atheris-bases").read_bytes())
    sharded = work / "atheris-bases" / "sharded"
    if not sharded.exists():
        _faults.build_sharded(sharded)
    seeds_sharded = work / "atheris-seeds-sharded"
    seeds_sharded.mkdir(exist_ok=True)
    (seeds_sharded / "manifest.json").write_bytes((sharded / "manifest.json").read_bytes())
    for target, pristine, corpus in (("index", "", seeds), ("sharded", str(sharded), seeds_sharded)):
        each = max(1, int(seconds / 2))
        findings = work / f"atheris-{target}-findings"
        findings.mkdir(exist_ok=True)
        command = [sys.executable, "-c", _ATHERIS_CHILD, target, pristine, f"-max_total_time={each}", "-rss_limit_mb=4096",
                   "-timeout=30", f"-artifact_prefix={findings}/", "-max_len=65536", str(corpus)]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=each + 300,
                              env=_faults.simsearch_env(), cwd=HERE.parent / "tests")
        log = done.stdout + done.stderr
        runs = re.findall(r"Done (\d+) runs in (\d+) second", log)
        cov = re.findall(r"cov: (\d+)", log)
        found = sorted(p.name for p in findings.iterdir())
        out[target] = {"seconds": each, "runs": int(runs[-1][0]) if runs else None, "coverage": int(cov[-1]) if cov else None,
                       "exit": done.returncode, "findings": found,
                       "finding_tail": log.strip()[-600:] if done.returncode else ""}
        print(f"atheris {target:>8}: {out[target]['runs']} inputs in {each} s, coverage {out[target]['coverage']}, "
              f"exit {done.returncode}, findings {found}", flush=True)
        if done.returncode:
            print("    " + out[target]["finding_tail"].replace("\n", "\n    "))
    return out


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: about 2-3 minutes")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--fuzz-cases", type=int, default=None, help="cases per format and mode (default 10000; --quick 30)")
    parser.add_argument("--matcher-cases", type=int, default=None, help="cases of saved matchers with mutated model files, modes raw-model and resealed-model (default 1000; --quick 4)")
    parser.add_argument("--kills", type=int, default=None, help="kills per target (default 100; --quick 10)")
    parser.add_argument("--concurrency-seconds", type=float, default=None, help="seconds per run (default 60; --quick 5)")
    parser.add_argument("--concurrency-runs", type=int, default=None, help="runs (default 3; --quick 1)")
    parser.add_argument("--overload-seconds", type=float, default=None, help="seconds at twice the rate (default 30; --quick 5)")
    parser.add_argument("--fuzzer-module", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: it registers more formats with _faults.register_fuzzer (repeatable)")
    parser.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                        help="only these fuzz modes (e.g. raw resealed); default: every mode of each format")
    parser.add_argument("--formats", nargs="+", default=None, metavar="NAME",
                        help=f"fuzz only these formats (of {', '.join(_faults.FUZZERS)})")
    parser.add_argument("--atheris-seconds", type=float, default=None, help="coverage-guided fuzzing time, split between its targets (default 300; --quick 20)")
    parser.add_argument("--no-malloc-check", action="store_true", help="fuzz without glibc's heap checker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a new temporary one)")
    args = parser.parse_args()
    q = args.quick
    print(host_line(), flush=True)
    results: dict[str, Any] = {"benchmark": "reliability", "quick": q, "cpu_flags": cpu_flags()}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="simsearch-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if "fuzz" in args.only:
        import importlib

        for module in args.fuzzer_module:
            importlib.import_module(module)
        results["fuzz"] = fuzz(
            work, args.fuzz_cases or (30 if q else 10_000), args.matcher_cases or (4 if q else 1000), args.seed,
            not args.no_malloc_check, args.formats, args.modes,
        )  # fmt: skip
    if "concurrency" in args.only:
        results["concurrency"] = concurrency(work, args.concurrency_seconds or (5.0 if q else 60.0), args.concurrency_runs or (1 if q else 3), args.seed)
    if "kills" in args.only:
        results["kills"] = kills(work, args.kills or (10 if q else 100), args.seed)
    if "overload" in args.only:
        results["overload"] = overload(work, args.overload_seconds or (5.0 if q else 30.0))
    if "deps" in args.only:
        results["deps"] = deps(work)
    if "atheris" in args.only:
        results["atheris"] = atheris_run(work, args.atheris_seconds or (20.0 if q else 300.0))
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
