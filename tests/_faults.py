"""Fault injection shared by the reliability tests and ``benchmarks/reliability.py``.

Three harnesses, each running the code under test in another process so that
a crash or a hang is a finding, never the end of the test run:

- **Folder fuzz** (:data:`FUZZERS`, :func:`register_fuzzer`, :func:`run_fuzz`):
  a pristine folder of each format is built once, mutated into many cases
  (truncated, flipped, deleted or swapped members, JSON fields of the wrong
  type, huge numbers, paths with ``..``, other format versions), optionally
  *resealed* (checksums recomputed so the mutation reaches the parser), and
  loaded in batches by a child process that reports one line per case. A
  child that dies (signal) or stops answering (hang) is restarted after the
  case that killed it.
- **Kills** (:data:`KILL_TARGETS`, :func:`run_kills`): a child commits
  generation after generation of a state (an index file, a sharded folder, a
  dedup state, a service folder) and logs what it began and what was
  acknowledged; the parent SIGKILLs it at a seeded random moment inside a
  write, and the next child opens the state and reports what it found.
- **Crash points** (:func:`run_crash_points`): the same children, killed
  deterministically just before the n-th ``os.fsync`` / ``os.replace`` /
  ``os.rename`` of one write, for every n: each durability step of the Python
  writers is a crash point.

The children are started from a ``forkserver`` that imported simsearch once,
so a kill cycle costs a fork, not an interpreter start.

This module is also the children's entry point: ``python _faults.py
fuzz-batch NAME MODE CASES_JSON``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------- processes


def simsearch_env() -> dict[str, str]:
    """Environment for a child: the simsearch this process imports, one BLAS thread."""
    import simsearch

    env = dict(os.environ)
    root = str(Path(simsearch.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, str(HERE), env.get("PYTHONPATH", "")) if p)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    env.pop("SIMSEARCH_TOKEN", None)
    return env


class FakeEncoder:
    """Stands in for a TextEncoder where only vectors matter: hashes each text to a unit vector."""

    name = "fault-harness-encoder"

    def __init__(self, dim: int, fingerprint: str = "f" * 64) -> None:
        self.dim = dim
        self.fingerprint = fingerprint

    def encode(self, texts: Any, progress: bool = False, **_: Any) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(str(text).encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def watchdog(fn: Callable[[], Any], seconds: float) -> dict[str, Any]:
    """Call ``fn`` in a daemon thread; ``{"outcome": "ok" | "module.Error: message" | "hang", "s": seconds taken}``."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            fn()
            box["outcome"] = "ok"
        except Exception as err:  # noqa: BLE001 - reported, whatever it is
            box["outcome"] = f"{type(err).__module__}.{type(err).__name__}: {str(err)[:160]}"
        box["s"] = round(time.monotonic() - start, 2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return box if "s" in box else {"outcome": "hang", "s": seconds}


def vectors(start: int, stop: int, dim: int) -> np.ndarray:
    """Deterministic float32 vectors of ids ``start..stop-1``, shape (stop - start, dim)."""
    out = np.empty((stop - start, dim), dtype=np.float32)
    for i in range(start, stop):
        out[i - start] = np.random.default_rng(1_000_003 * dim + i).normal(size=dim)
    return out


# ---------------------------------------------------------------- folder fuzz

#: Values a hostile JSON field gets: wrong types, huge numbers, escaping paths.
HOSTILE_VALUES: list[Any] = [
    None, True, "", "x", "../../../etc/passwd", "/etc/passwd", "a/../../b", -1, 0, 1.5, -(2**63), 2**63, 2**64 + 7,
    1e308, [], {}, [1, 2, 3], {"a": 1}, "9" * 40, "é\u0000",
]
#: format_version values a hostile manifest carries.
HOSTILE_VERSIONS: list[Any] = [0, -1, 2, 999, 2**70, "1", 1.0, None, True, [1]]


@dataclasses.dataclass
class Fuzzer:
    """A format under fuzz: how to make its cases and how a child loads one.

    Attributes
    ----------
    name : str
        The registry key (``"sharded"``, ``"dedup"``, ...).
    make_cases : callable
        ``make_cases(workdir, n, rng, mode) -> list[dict]``: write ``n`` case
        folders (or files) under ``workdir`` and return one dict per case
        with at least ``path`` and ``mutation``. Runs in the parent.
    load_case : callable
        ``load_case(path, mode)``: open the case and use it a little; raising
        is a rejection, returning is an acceptance. Runs in the child.
    modes : tuple of str
        The modes this format is fuzzed in.
    module : str
        Module the child imports to find ``load_case`` (so that fuzzers
        registered elsewhere, such as the native index file fuzzer, plug in).
    """

    name: str
    make_cases: Callable[[Path, int, np.random.Generator, str], list[dict[str, Any]]]
    load_case: Callable[[str, str], None]
    modes: tuple[str, ...]
    module: str


FUZZERS: dict[str, Fuzzer] = {}


def register_fuzzer(
    name: str,
    make_cases: Callable[[Path, int, np.random.Generator, str], list[dict[str, Any]]],
    load_case: Callable[[str, str], None],
    modes: tuple[str, ...] = ("raw", "resealed"),
) -> Fuzzer:
    """Add a format to :data:`FUZZERS` (see :class:`Fuzzer`); returns the entry."""
    fuzzer = Fuzzer(name, make_cases, load_case, tuple(modes), load_case.__module__)
    FUZZERS[name] = fuzzer
    return fuzzer


def members(folder: Path) -> list[str]:
    """Files under ``folder``, relative, sorted (a lone file is its own member ``""``)."""
    if folder.is_file():
        return [""]
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".lock"))


def clone(pristine: Path, dest: Path) -> None:
    """Copy ``pristine`` to ``dest``; files over 1 MiB (model weights) as hard links, to be mutated only after :func:`own`.

    Small files are real copies, since a loader may write them in place
    (the service appends to and truncates ``wal.log``).
    """

    def copy(src: str, dst: str) -> None:
        if os.path.getsize(src) > 1 << 20:
            os.link(src, dst)
        else:
            shutil.copyfile(src, dst)

    if pristine.is_file():
        shutil.copyfile(pristine, dest)
    else:
        shutil.copytree(pristine, dest, copy_function=copy)


def own(path: Path) -> None:
    """Give ``path`` its own copy of the bytes, so that mutating it leaves the pristine file alone."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def _json_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _json_paths(v, prefix + (i,))
    return out


def _set_path(obj: Any, path: tuple, value: Any, delete: bool = False) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete and isinstance(obj, dict):
        del obj[path[-1]]
    elif delete and isinstance(obj, list):
        obj.pop(path[-1])
    else:
        obj[path[-1]] = value


def mutate(case: Path, rng: np.random.Generator, json_bias: float = 0.5, only: Callable[[str], bool] | None = None) -> str:
    """Apply one random mutation to the folder (or file) ``case`` in place; returns its description.

    ``only(member)`` limits the members that may be mutated (all by default).
    """
    names = [m for m in members(case) if only is None or only(m)]
    jsons = [m for m in names if m.endswith(".json") or m == "CURRENT"]
    pick_json = jsons and rng.random() < json_bias
    member = str(rng.choice(jsons if pick_json else names))
    target = case / member if member else case
    own(target)
    data = target.read_bytes()
    if pick_json and member.endswith(".json"):
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            kind = str(rng.choice(["value", "delete", "version", "path"]))
            paths = _json_paths(obj)
            if kind == "version" or not paths:
                obj["format_version"] = HOSTILE_VERSIONS[int(rng.integers(len(HOSTILE_VERSIONS)))]
                what = f"{member}: format_version={obj['format_version']!r}"
            elif kind == "path":
                strings = [p for p in paths if isinstance(_get(obj, p), str)] or paths
                p = strings[int(rng.integers(len(strings)))]
                value = str(rng.choice(["../outside", "../../../etc/passwd", "/etc/passwd", "sub/../../x", "nul\u0000"]))
                _set_path(obj, p, value)
                what = f"{member}: {'.'.join(map(str, p))}={value!r}"
            else:
                p = paths[int(rng.integers(len(paths)))]
                if kind == "delete":
                    _set_path(obj, p, None, delete=True)
                    what = f"{member}: deleted {'.'.join(map(str, p))}"
                else:
                    value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
                    _set_path(obj, p, value)
                    what = f"{member}: {'.'.join(map(str, p))}={value!r}"[:160]
            target.write_text(json.dumps(obj))
            return what
    kind = str(rng.choice(["truncate", "flip", "flip", "delete", "append", "empty", "swap"]))
    if kind == "truncate" and data:
        cut = int(rng.integers(0, len(data)))
        target.write_bytes(data[:cut])
        return f"{member}: truncated to {cut} of {len(data)} bytes"
    if kind == "flip" and data:
        buf = bytearray(data)
        n = int(rng.integers(1, 9))
        for _ in range(n):
            buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(buf))
        return f"{member}: {n} bits flipped"
    if kind == "delete" and member:
        target.unlink()
        return f"{member}: deleted"
    if kind == "swap" and len(names) > 1:
        other = str(rng.choice([m for m in names if m != member]))
        target.write_bytes((case / other).read_bytes())
        return f"{member}: replaced by the bytes of {other}"
    if kind == "empty":
        target.write_bytes(b"")
        return f"{member}: emptied"
    target.write_bytes(data + rng.bytes(int(rng.integers(1, 4096))))
    return f"{member}: garbage appended"


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _sha256(path: Path) -> str:
    from simsearch._storage import sha256_file  # memoised by inode: the hard-linked model files are hashed once

    return sha256_file(path)


def reseal(folder: Path) -> None:
    """Recompute every checksum a folder carries, so that a mutation reaches the parser.

    Handles what simsearch's folder formats record: ``{"file", "sha256"}``
    entries, ``files`` / ``checksums`` maps of name to sha256 (in any JSON
    member), the dedup ``CURRENT`` pointer (version folder and manifest
    sha256), and the CRC-32s of ``SIMSPY01`` containers.
    """
    if folder.is_file():
        _reseal_container(folder)
        return
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.read_bytes()[:8] == b"SIMSPY01":
            _reseal_container(p)
    for p in sorted(folder.rglob("*.json"), key=lambda q: -len(q.parts)):  # inner manifests first
        try:
            obj = json.loads(p.read_bytes())
        except ValueError:
            continue
        if _reseal_json(obj, p.parent):
            own(p)
            p.write_text(json.dumps(obj, indent=2))
    pointer = folder / "CURRENT"
    if pointer.is_file():
        parts = pointer.read_bytes().split()
        if len(parts) == 2:
            manifest = folder / parts[0].decode(errors="replace") / "manifest.json"
            if manifest.is_file():
                own(pointer)
                pointer.write_text(f"{parts[0].decode(errors='replace')} {_sha256(manifest)}\n")


def _reseal_json(obj: Any, base: Path) -> bool:
    changed = False
    if isinstance(obj, dict):
        f, digest = obj.get("file"), obj.get("sha256")
        if isinstance(f, str) and isinstance(digest, str) and (base / f).is_file():
            obj["sha256"] = _sha256(base / f)
            changed = True
        for key in ("files", "checksums"):
            table = obj.get(key)
            if isinstance(table, dict):
                for name, value in table.items():
                    if isinstance(name, str) and isinstance(value, str) and (base / name).is_file() and ".." not in name:
                        table[name] = _sha256(base / name)
                        changed = True
        for value in obj.values():
            changed |= _reseal_json(value, base)
    elif isinstance(obj, list):
        for value in obj:
            changed |= _reseal_json(value, base)
    return changed


def _reseal_container(path: Path) -> None:
    """Recompute a SIMSPY01 container's header and section CRC-32s (see ``simsearch/_fileio.py``)."""
    data = bytearray(path.read_bytes())
    if len(data) < 24 or data[:8] != b"SIMSPY01":
        return
    (length,) = struct.unpack_from("<Q", data, 8)
    if 24 + length > len(data):
        return
    try:
        header = json.loads(bytes(data[24 : 24 + length]))
        sections = header["sections"]
        for s in sections:
            off, n = int(s["offset"]), int(s["length"])
            if 0 <= off and off + n <= len(data):
                s["crc32"] = zlib.crc32(bytes(data[off : off + n]))
        blob = json.dumps(header, separators=(",", ":")).encode()
    except (ValueError, KeyError, TypeError):
        struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[24 : 24 + length])))
        own(path)
        path.write_bytes(bytes(data))
        return
    if len(blob) <= length:  # keep every offset: pad the new header in place
        blob = blob + b" " * (length - len(blob))
        data[24 : 24 + length] = blob
    struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[24 : 24 + length])))
    own(path)
    path.write_bytes(bytes(data))


def folder_cases(
    pristine: Path,
    workdir: Path,
    n: int,
    rng: np.random.Generator,
    mode: str,
    *,
    sidecar: dict[str, Any] | None = None,
    only: Callable[[str], bool] | None = None,
) -> list[dict[str, Any]]:
    """``n`` mutated copies of ``pristine`` under ``workdir``; ``resealed*`` modes recompute checksums after.

    ``only`` limits the mutated members (see :func:`mutate`).
    """
    out = []
    root = workdir / f"cases-{mode}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if sidecar:
        (root / "_sidecar.json").write_text(json.dumps(sidecar))
    for i in range(n):
        dest = root / f"{i:05d}{pristine.suffix if pristine.is_file() else ''}"
        clone(pristine, dest)
        what = mutate(dest, rng, only=only)
        if rng.random() < 0.25:  # now and then two mutations at once
            what += "; " + mutate(dest, rng, only=only)
        if mode.startswith("resealed"):
            reseal(dest)
        out.append({"path": str(dest), "mutation": what})
    return out


def sidecar(path: str) -> dict[str, Any]:
    """The ``_sidecar.json`` beside a case (facts the loader needs: fingerprint, keys)."""
    f = Path(path).parent / "_sidecar.json"
    return json.loads(f.read_text()) if f.is_file() else {}


# --------------------------------------------------- the formats and loaders


def build_sharded(dest: Path) -> None:
    from simsearch import ShardedIndex

    ix = ShardedIndex(16, n_shards=3, partition="kmeans", M=8, ef_construction=40, num_threads=1)
    ix.add(vectors(0, 600, 16))
    ix.save(dest)
    ix.close()


def load_sharded(path: str, mode: str) -> None:
    from simsearch import ShardedIndex

    ix = ShardedIndex.load(path, num_threads=1)
    try:
        ix.search(vectors(0, 2, ix.dim), k=5)
        assert len(ix) == ix.ids().size
    finally:
        ix.close()


def build_dedup(dest: Path) -> None:
    from simsearch import Deduplicator

    x = vectors(0, 200, 16)
    x[100:150] = x[:50] + 0.01 * vectors(200, 250, 16)  # 50 duplicate pairs
    Deduplicator(threshold=0.9, k=5, progress=False, index_params={"num_threads": 1}).fit(x, ids=list(range(200))).save(dest)


def load_dedup(path: str, mode: str) -> None:
    from simsearch import Deduplicator

    d = Deduplicator.load(path, progress=False)
    assert d.groups_.num_rows == d.n_items_
    d.pairs()
    d.update(vectors(900, 903, d._dim), new_ids=[10_000, 10_001, 10_002])


def build_matcher(dest: Path) -> None:
    import pyarrow.csv as pacsv

    from simsearch import CatalogMatcher
    from simsearch.cli import demo_sample_path

    table = pacsv.read_csv(str(demo_sample_path()))
    ids = list(range(40))
    titles = [str(t) for t in table.column(table.column_names[1]).to_pylist()[:40]]
    CatalogMatcher(k=2, progress=False).fit({"id": ids, "title": titles}).save(dest)


def _is_model_member(member: str) -> bool:
    """Whether a saved matcher's member is a model file (of the text encoder or the pair model)."""
    return member.startswith(("encoder/", "pair_model/"))


#: The last matcher's encoder, kept alive in the fuzz child so that cases whose
#: model files are intact share its compiled graph (as two loads of one model
#: in one process do); a case with mutated model files exports and compiles anew.
_LAST_ENCODER: list[Any] = []


def load_matcher(path: str, mode: str) -> None:
    from simsearch import CatalogMatcher

    if mode == "resealed-model":
        # Each mutated model is exported anew: keep its exports in the case, not in the shared cache.
        os.environ["SIMSEARCH_CACHE"] = str(Path(path) / ".fuzz-cache")
    try:
        m = CatalogMatcher.load(path, progress=False, num_threads=1)
        m.match({"id": ["a"], "title": ["apple iphone 8 64gb"]})
        _LAST_ENCODER[:] = [m.encoder_]
    finally:
        if mode == "resealed-model":
            shutil.rmtree(Path(path) / ".fuzz-cache", ignore_errors=True)


def build_cli_folder(dest: Path) -> dict[str, Any]:
    """``simsearch index build`` of the bundled sample, plus a write-ahead log of 3 adds."""
    from simsearch.cli import demo_sample_path, main

    if main(["-q", "index", "build", str(demo_sample_path()), "--out", str(dest)]) != 0:
        raise RuntimeError("simsearch index build failed")
    meta = json.loads((dest / "meta.json").read_text())
    p = _context().Process(target=_add_and_die, args=(str(dest), meta["dim"], meta["fingerprint"]))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"writing the write-ahead log failed (exit {p.exitcode})")
    return {"dim": meta["dim"], "fingerprint": meta["fingerprint"]}


def _add_and_die(folder: str, dim: int, fingerprint: str) -> None:
    from simsearch.serving import Service

    service = Service.open(folder, FakeEncoder(dim, fingerprint))
    service.add([990001, 990002, 990003], ["wal one", "wal two", "wal three"], vectors(0, 3, dim))
    os._exit(0)  # as a crash would: the adds stay in wal.log


def load_cli_folder(path: str, mode: str) -> None:
    from simsearch.serving import Service

    facts = sidecar(path)
    service = Service.open(path, FakeEncoder(facts.get("dim", 384), facts.get("fingerprint", "f" * 64)))
    try:
        service.search_vectors(vectors(0, 2, service.dim), k=5)
        service.add([995001], ["fuzz add"], vectors(5, 6, service.dim))
    finally:
        service.close()


_CACHE_MODEL, _CACHE_DIM = "fuzz-model", 8


def build_cache(dest: Path) -> None:
    from simsearch import EmbeddingCache

    with EmbeddingCache(dest) as cache:
        cache.put_many(_CACHE_MODEL, [f"k{i}".encode() for i in range(64)], vectors(0, 64, _CACHE_DIM))
    for suffix in ("-wal", "-shm"):  # checkpointed on close; keep one file
        Path(str(dest) + suffix).unlink(missing_ok=True)


def load_cache(path: str, mode: str) -> None:
    from simsearch import EmbeddingCache

    with EmbeddingCache(path, timeout=2.0) as cache:
        len(cache)
        # the caller knows its encoder's dimension: an entry of another size is a miss
        got = cache.get_many(_CACHE_MODEL, [f"k{i}".encode() for i in range(64)], dim=_CACHE_DIM)
        for v in got:
            if v is not None and v.shape != (_CACHE_DIM,):
                raise AssertionError(f"the cache returned a vector of shape {v.shape} for an {_CACHE_DIM}-d entry")
        cache.put_many(_CACHE_MODEL, [b"new"], np.ones((1, _CACHE_DIM), np.float32))


def _sql_mutation(db: Path, rng: np.random.Generator) -> str:
    """Change the cache's rows (the file stays a valid SQLite database)."""
    import sqlite3

    con = sqlite3.connect(db, isolation_level=None)
    try:
        kind = str(rng.choice(["short", "odd", "null", "text", "int", "drop", "schema"]))
        key = f"k{int(rng.integers(64))}".encode()
        if kind == "short":
            con.execute("UPDATE embeddings SET vector = ? WHERE key = ?", (b"\0" * 12, key))
        elif kind == "odd":
            con.execute("UPDATE embeddings SET vector = ? WHERE key = ?", (b"\1" * 7, key))
        elif kind == "null":  # NOT NULL: rebuild the table without the constraint
            con.execute("ALTER TABLE embeddings RENAME TO old")
            con.execute("CREATE TABLE embeddings (model TEXT, key BLOB, vector BLOB, PRIMARY KEY (model, key)) WITHOUT ROWID")
            con.execute("INSERT INTO embeddings SELECT * FROM old")
            con.execute("DROP TABLE old")
            con.execute("UPDATE embeddings SET vector = NULL WHERE key = ?", (key,))
        elif kind == "text":
            con.execute("UPDATE embeddings SET vector = 'not bytes' WHERE key = ?", (key,))
        elif kind == "int":
            con.execute("UPDATE embeddings SET vector = 42 WHERE key = ?", (key,))
        elif kind == "drop":
            con.execute("DROP TABLE embeddings")
            con.execute("CREATE TABLE embeddings (x INTEGER)")
        else:
            con.execute("ALTER TABLE embeddings RENAME TO other")
        return f"sql: {kind} ({key.decode()})"
    finally:
        con.close()


def _cases_for(build: Callable[[Path], Any], name: str) -> Callable[[Path, int, np.random.Generator, str], list[dict[str, Any]]]:
    def make_cases(workdir: Path, n: int, rng: np.random.Generator, mode: str) -> list[dict[str, Any]]:
        pristine = workdir / ("pristine.sqlite" if name == "cache" else "pristine")
        facts_file = workdir / "pristine-facts.json"
        if not pristine.exists():
            facts = build(pristine) or {}
            facts_file.write_text(json.dumps(facts))
        facts = json.loads(facts_file.read_text())
        if mode == "pristine":  # the control: unmutated copies must load
            root = workdir / "cases-pristine"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            (root / "_sidecar.json").write_text(json.dumps(facts))
            dest = root / ("00000.sqlite" if name == "cache" else "00000")
            clone(pristine, dest)
            return [{"path": str(dest), "mutation": "none"}]
        if mode == "sql":
            root = workdir / "cases-sql"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            out = []
            for i in range(n):
                dest = root / f"{i:05d}.sqlite"
                shutil.copyfile(pristine, dest)
                out.append({"path": str(dest), "mutation": _sql_mutation(dest, rng)})
            return out
        only = None
        if name == "matcher":
            # The matcher's own members in "raw"/"resealed"; its model files (90 MB, copied when mutated, and
            # exported anew when resealed) in "raw-model"/"resealed-model", run at smaller counts.
            only = _is_model_member if mode.endswith("-model") else (lambda member: not _is_model_member(member))
        return folder_cases(pristine, workdir, n, rng, mode, sidecar=facts, only=only)

    return make_cases


register_fuzzer("sharded", _cases_for(build_sharded, "sharded"), load_sharded, ("raw", "resealed"))
register_fuzzer("dedup", _cases_for(build_dedup, "dedup"), load_dedup, ("raw", "resealed"))
register_fuzzer("matcher", _cases_for(build_matcher, "matcher"), load_matcher, ("raw", "resealed", "raw-model", "resealed-model"))
register_fuzzer("cli_folder", _cases_for(build_cli_folder, "cli_folder"), load_cli_folder, ("raw",))
register_fuzzer("cache", _cases_for(build_cache, "cache"), load_cache, ("raw", "sql"))


# ---------------------------------------------------------- running the fuzz

#: Builtin bases a rejection may have instead of SimsearchError (with a message that says what is wrong).
TOLERATED = (ValueError, OSError, KeyError)


@dataclasses.dataclass
class FuzzResult:
    """Outcome of every case of one format and mode.

    Attributes
    ----------
    outcomes : list of dict
        Per case: ``mutation``, ``verdict`` (``accepted``, ``typed`` (a
        SimsearchError), ``tolerated`` (ValueError/OSError/KeyError with a
        message), ``untyped``, ``crash``, ``hang``), ``type`` and ``message``.
    """

    name: str
    mode: str
    outcomes: list[dict[str, Any]]

    def count(self, verdict: str) -> int:
        return sum(o["verdict"] == verdict for o in self.outcomes)

    def bad(self, *verdicts: str) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if o["verdict"] in verdicts]

    def summary(self) -> dict[str, Any]:
        verdicts = Counter(o["verdict"] for o in self.outcomes)
        types = Counter(o["type"] for o in self.outcomes if o.get("type"))
        return {"cases": len(self.outcomes), **{v: verdicts.get(v, 0) for v in _VERDICTS}, "rejections_by_type": dict(types)}


_VERDICTS = ("accepted", "typed", "tolerated", "untyped", "crash", "hang")


def _verdict(report: dict[str, Any]) -> str:
    if report["outcome"] == "accepted":
        return "accepted"
    if report["simsearch"]:
        return "typed"
    message = report["message"].strip()
    # An OSError's type says what happened and its message names the file; a ValueError needs words.
    if report["tolerated"] and report["type"] != "KeyError" and (len(message.split()) >= 3 or (report["os_error"] and message)):
        return "tolerated"
    return "untyped"


def malloc_check_env() -> dict[str, str]:
    """Environment that runs a child under glibc's heap checker (silent heap overflows abort), if installed."""
    for lib in ("/lib/x86_64-linux-gnu/libc_malloc_debug.so.0", "/usr/lib/libc_malloc_debug.so.0"):
        if Path(lib).exists():
            return {"LD_PRELOAD": lib, "GLIBC_TUNABLES": "glibc.malloc.check=3"}
    return {}


def run_fuzz(
    name: str,
    mode: str,
    workdir: Path,
    n: int,
    *,
    seed: int = 0,
    case_timeout: float = 30.0,
    memory_gb: float = 6.0,
    env: dict[str, str] | None = None,
) -> FuzzResult:
    """Make ``n`` cases of format ``name`` and load them in child processes; see :class:`FuzzResult`.

    ``env`` is added to the children's environment (e.g. :func:`malloc_check_env`).
    A fuzzer registered from another module is found by the children through
    that module, so its ``make_cases`` and ``load_case`` must live in an
    importable module (on ``PYTHONPATH``), not in a script's ``__main__``.
    """
    fuzzer = FUZZERS[name]
    workdir.mkdir(parents=True, exist_ok=True)
    cases = fuzzer.make_cases(workdir, n, np.random.default_rng(seed), mode)
    cases_file = workdir / f"cases-{mode}.json"
    cases_file.write_text(json.dumps(cases))
    outcomes: list[dict[str, Any] | None] = [None] * len(cases)
    start = 0
    child_env = {**simsearch_env(), **(env or {}), "SIMSEARCH_FAULTS_MEMORY_GB": str(memory_gb)}
    module = "_faults" if fuzzer.module == "__main__" and Path(sys.argv[0]).name == "_faults.py" else fuzzer.module
    while start < len(cases):
        command = [sys.executable, str(HERE / "_faults.py"), "fuzz-batch", name, mode, str(cases_file), str(start), module]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env, cwd=workdir)
        lines: queue.Queue[bytes | None] = queue.Queue()

        def pump(stream: Any = child.stdout, lines: queue.Queue[bytes | None] = lines) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        current = None
        # The first case also waits for the imports.
        deadline = time.monotonic() + case_timeout + 60
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                i = current if current is not None else start
                outcomes[i] = {**cases[i], "verdict": "hang", "type": None, "message": f"no answer in {case_timeout:.0f} s"}
                start = i + 1
                break
            if line is None:
                rc = child.wait()
                if current is not None and outcomes[current] is None:
                    outcomes[current] = {**cases[current], "verdict": "crash", "type": None, "message": f"exit status {rc}"}
                    start = current + 1
                else:
                    start = len(cases) if current is None else current + 1
                    if rc != 0 and current is None:
                        raise RuntimeError(f"the fuzz child for {name!r} failed before its first case (exit {rc})")
                break
            text = line.decode(errors="replace").strip()
            if text.startswith("BEGIN "):
                current = int(text.split()[1])
                deadline = time.monotonic() + case_timeout
            elif text.startswith("RESULT "):
                report = json.loads(text[7:])
                outcomes[report["case"]] = {**cases[report["case"]], "verdict": _verdict(report), **{k: report[k] for k in ("type", "message")}}
        pumper.join(30)
        child.stdout.close()  # type: ignore[union-attr]
    return FuzzResult(name, mode, [o for o in outcomes if o is not None])


def _fuzz_child(name: str, mode: str, cases_file: str, start: int, module: str) -> None:
    import importlib
    import resource

    limit = int(float(os.environ.get("SIMSEARCH_FAULTS_MEMORY_GB", "6")) * (1 << 30))
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes of address space for its shadow
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import simsearch
    from simsearch.errors import SimsearchError

    # This file runs as __main__ here; a plug-in module registers into the
    # importable copy, `_faults`, so the registry is looked up there.
    registry = importlib.import_module("_faults")
    importlib.import_module(module)
    fuzzer = registry.FUZZERS[name]
    del simsearch
    cases = json.loads(Path(cases_file).read_text())
    out = sys.stdout
    for i in range(start, len(cases)):
        out.write(f"BEGIN {i}\n")
        out.flush()
        try:
            fuzzer.load_case(cases[i]["path"], mode)
            report: dict[str, Any] = {"outcome": "accepted", "type": None, "message": ""}
        except BaseException as err:  # every rejection is reported, whatever it is
            if isinstance(err, KeyboardInterrupt):
                raise
            report = {
                "outcome": "rejected",
                "type": type(err).__qualname__ if type(err).__module__ in ("builtins", "simsearch.errors") else f"{type(err).__module__}.{type(err).__qualname__}",
                "simsearch": isinstance(err, SimsearchError),
                "tolerated": isinstance(err, TOLERATED),
                "os_error": isinstance(err, OSError),
                "message": (str(err).strip().splitlines() or [""])[0][:300],
            }
        report["case"] = i
        out.write("RESULT " + json.dumps(report, default=str) + "\n")
        out.flush()


# --------------------------------------------------------------------- kills

#: Ids/vectors of every kill target are ``vectors(id)``; a generation adds ``STEP`` items to ``BASE``.
_KILL_SPECS = {
    "index_save": {"base": 4000, "step": 20, "dim": 48},
    "sharded_save": {"base": 2000, "step": 20, "dim": 16},
    "dedup_update": {"base": 400, "step": 10, "dim": 16},
    "service_add": {"base": 200, "step": 3, "dim": 16},
}
KILL_TARGETS = tuple(_KILL_SPECS)


class _Log:
    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 - open for the child's life

    def __call__(self, **fields: Any) -> None:
        self._f.write(json.dumps({**fields, "t": time.monotonic()}) + "\n")
        self._f.flush()  # a write(2) before SIGKILL is in the page cache: the parent reads it


def _gen_of(n: int, spec: dict[str, int], what: str) -> int:
    gen, rest = divmod(n - spec["base"], spec["step"])
    if rest or gen < 0:
        raise AssertionError(f"{what} holds {n} items, which no generation has (base {spec['base']}, step {spec['step']})")
    return gen


def _kill_open(target: str, work: Path, log: _Log, acked: list[int], create: bool, snapshot_every: int) -> Any:
    """Open the target's state (building generation 0 if ``create``), check it, log its generation; returns the live object."""
    spec = _KILL_SPECS[target]
    path = work / {"index_save": "index.ssi", "sharded_save": "sharded", "dedup_update": "dedup", "service_add": "service"}[target]
    if not create and not path.exists():
        raise FileNotFoundError(f"{path} is gone: the kill left no state at its path")
    if target == "index_save":
        from simsearch import Index

        if not path.exists():
            ix = Index(spec["dim"], num_threads=1)
            ix.add(vectors(0, spec["base"], spec["dim"]))
            ix.save(path)
        ix = Index.load(path, num_threads=1)
        gen = _gen_of(len(ix), spec, str(path))
        if not np.array_equal(np.sort(ix.ids()), np.arange(len(ix), dtype=np.uint64)):
            raise AssertionError(f"{path} holds other ids than 0..{len(ix) - 1}")
        sample = np.array([0, len(ix) // 2, len(ix) - 1], dtype=np.uint64)
        got = ix.get_vectors(sample)
        want = vectors(0, len(ix), spec["dim"])[sample.astype(np.int64)]
        cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        if np.any(cos < 0.98):
            raise AssertionError(f"{path}: stored vectors differ from the ones added (cosine {cos.min():.3f})")
        state: Any = ix
    elif target == "sharded_save":
        from simsearch import ShardedIndex

        if not path.exists():
            ix = ShardedIndex(spec["dim"], n_shards=3, M=8, ef_construction=40, num_threads=1)
            ix.add(vectors(0, spec["base"], spec["dim"]))
            ix.save(path)
            ix.close()
        state = ShardedIndex.load(path, num_threads=1)
        gen = _gen_of(len(state), spec, str(path))
        if not np.array_equal(np.sort(state.ids()), np.arange(len(state), dtype=np.uint64)):
            raise AssertionError(f"{path} holds other ids than 0..{len(state) - 1}")
    elif target == "dedup_update":
        from simsearch import Deduplicator

        if not path.exists():
            x = vectors(0, spec["base"], spec["dim"])
            d = Deduplicator(threshold=0.9, k=5, progress=False, index_params={"num_threads": 1})
            d.fit(x, ids=list(range(spec["base"]))).save(path)
        state = Deduplicator.load(path, progress=False)
        gen = _gen_of(state.n_items_, spec, str(path))
        ids = state.groups_.column("item_id").to_pylist()
        if ids != list(range(state.n_items_)):
            raise AssertionError(f"{path} holds other ids than 0..{state.n_items_ - 1}")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from simsearch import Index
        from simsearch.serving import Service

        encoder = FakeEncoder(spec["dim"])
        if not path.exists():  # the layout `simsearch index build` writes
            path.mkdir()
            ix = Index(spec["dim"], metric="ip", num_threads=1)
            x = vectors(0, spec["base"], spec["dim"])
            ix.add(x / np.linalg.norm(x, axis=1, keepdims=True))
            ix.save(path / "index.ssi")
            ids = list(range(spec["base"]))
            pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "title": [f"item {i}" for i in ids]}), path / "items.parquet")
            meta = {"format": 1, "model": encoder.name, "model_path": None, "precision": "int8", "fingerprint": encoder.fingerprint,
                    "dim": spec["dim"], "count": spec["base"], "metric": "ip", "attributes": {}}
            (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        state = Service.open(path, encoder, snapshot_every=snapshot_every)
        n = len(state)
        if n < spec["base"] + len(acked):
            raise AssertionError(f"the service holds {n} items; {spec['base']} were built and {len(acked)} adds acknowledged")
        if acked:
            hits = state.search_vectors(np.concatenate([vectors(i, i + 1, spec["dim"]) for i in acked]), k=10)
            lost = [i for i, row in zip(acked, hits.hits) if i not in {h.id for h in row}]
            if lost:
                raise AssertionError(f"acknowledged adds lost after the kill: ids {lost[:10]} ({len(lost)} of {len(acked)})")
        gen = _gen_of(n, spec, str(path))
    log(opened=gen)
    return state


def _kill_write(target: str, state: Any, work: Path, gen: int) -> None:
    """Make generation ``gen`` durable (the write a kill interrupts)."""
    spec = _KILL_SPECS[target]
    lo = spec["base"] + (gen - 1) * spec["step"]
    hi = lo + spec["step"]
    if target == "index_save":
        state.add(vectors(lo, hi, spec["dim"]), ids=np.arange(lo, hi, dtype=np.uint64))
        state.save(work / "index.ssi")
    elif target == "sharded_save":
        state.add(vectors(lo, hi, spec["dim"]), ids=np.arange(lo, hi, dtype=np.uint64))
        state.save(work / "sharded")
    elif target == "dedup_update":
        state.update(vectors(lo, hi, spec["dim"]), new_ids=list(range(lo, hi)))
        state.save(work / "dedup")
    else:
        state.add(list(range(lo, hi)), [f"item {i}" for i in range(lo, hi)], vectors(lo, hi, spec["dim"]))


def kill_child(target: str, work: str, log_path: str, acked: list[int], crash_at: int | None = None, create: bool = False) -> None:
    """Child body: open and check the state, then commit generations until killed.

    With ``crash_at = n`` the child SIGKILLs itself just before the n-th
    ``os.fsync`` / ``os.replace`` / ``os.rename`` of its first write (1-based);
    ``crash_at = 0`` counts those calls in one write and logs the count.
    """
    log = _Log(Path(log_path))
    try:  # tqdm's default lock is a multiprocessing semaphore, which a killed child would leak
        import tqdm

        tqdm.tqdm.set_lock(threading.RLock())
    except ImportError:  # pragma: no cover - tqdm is a dependency
        pass
    try:
        # crash points: a snapshot on every service write, so that each write crosses the snapshot code
        state = _kill_open(target, Path(work), log, acked, create, 4 if crash_at is None else 1)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, whatever it is
        log(open_error=f"{type(err).__module__}.{type(err).__qualname__}: {err}"[:500])
        raise SystemExit(3) from None
    gen = _current_gen(log_path)
    calls = [0]
    if crash_at is not None:
        _patch_durability(calls, crash_at, log)
    while True:
        gen += 1
        log(begin=gen)
        _kill_write(target, state, Path(work), gen)
        log(committed=gen)
        if crash_at is not None:
            log(durability_calls=calls[0])
            os._exit(0)


def _current_gen(log_path: str) -> int:
    for line in reversed(Path(log_path).read_text().splitlines()):
        rec = json.loads(line)
        if "opened" in rec:
            return int(rec["opened"])
    raise AssertionError("no opened record")


def _patch_durability(calls: list[int], crash_at: int, log: _Log) -> None:
    for name in ("fsync", "replace", "rename"):
        real = getattr(os, name)

        def wrapper(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls[0] += 1
            if calls[0] == crash_at:
                log(crash_point=crash_at, call=_name, args=[str(a) for a in args][:2])
                os.kill(os.getpid(), signal.SIGKILL)
            return _real(*args)

        setattr(os, name, wrapper)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line torn by the kill
    return out


_PRELOAD = ["simsearch", "simsearch.sharding", "simsearch.applications", "simsearch.serving", "_faults"]


def stop_process(process: subprocess.Popen, log: IO[bytes]) -> None:
    """Stop a server process (SIGTERM, then SIGKILL after 30 s) and close its log."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    log.close()


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    # The fork server runs `python -c`, which puts its working folder first on sys.path:
    # started in the checkout root, its children would import the source tree (no built
    # extension) instead of the installed simsearch. Start it from tests/.
    from multiprocessing import forkserver

    here = os.getcwd()
    os.chdir(HERE)
    try:
        forkserver.ensure_running()
    finally:
        os.chdir(here)
    return ctx


@dataclasses.dataclass
class KillResult:
    """What the kills of one target found.

    Attributes
    ----------
    kills : int
        Children killed.
    in_write : int
        Kills that landed between a ``begin`` and its ``committed``.
    recovered : int
        Reopens that found a committed generation (and, for the service,
        every acknowledged add).
    failures : list of str
        One line per reopen that did not.
    """

    target: str
    kills: int = 0
    in_write: int = 0
    recovered: int = 0
    acked: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def run_kills(target: str, work: Path, kills: int, *, seed: int = 0, open_timeout: float = 120.0) -> KillResult:
    """SIGKILL ``kills`` children of ``target`` at seeded random moments inside a write; see :class:`KillResult`."""
    ctx = _context()
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    result = KillResult(target)
    committed, acked = -1, []  # -1: nothing committed yet (the first child builds the base)
    write_s: list[float] = []
    for cycle in range(kills + 1):
        log_path = work / f"log-{cycle:04d}.jsonl"
        p = ctx.Process(target=kill_child, args=(target, str(work), str(log_path), list(acked), None, cycle == 0))
        p.start()
        opened = _wait_for(log_path, lambda r: "opened" in r or "open_error" in r, p, open_timeout)
        if opened is None or "open_error" in opened:
            why = "no answer" if opened is None else opened["open_error"]
            p.kill()
            p.join()
            result.failures.append(f"reopen {cycle}: {why} (exit {p.exitcode})")
            break
        if committed >= 0 and opened["opened"] < committed:
            result.failures.append(f"reopen {cycle}: found generation {opened['opened']}, generation {committed} was committed")
        elif cycle:
            result.recovered += 1
        if cycle == kills:
            p.kill()
            p.join()
            break
        committed = opened["opened"]
        # Let 1-3 writes complete, then kill inside a later one at a random fraction of its duration.
        target_gen = committed + rng.randint(1, 3)
        begun = _wait_for(log_path, lambda r, g=target_gen: r.get("begin") == g, p, open_timeout)
        if begun is not None:
            typical = float(np.median(write_s)) if write_s else 0.05
            time.sleep(rng.uniform(0.0, typical * 1.2))
        p.kill()
        p.join()
        result.kills += 1
        records = _read_log(log_path)
        begins = {r["begin"]: r["t"] for r in records if "begin" in r}
        commits = {r["committed"]: r["t"] for r in records if "committed" in r}
        write_s += [commits[g] - begins[g] for g in commits if g in begins]
        if begins and max(begins) not in commits:
            result.in_write += 1
        if commits:
            committed = max(commits)
        if target == "service_add":
            spec = _KILL_SPECS[target]
            for g in sorted(commits):
                lo = spec["base"] + (g - 1) * spec["step"]
                acked += list(range(lo, lo + spec["step"]))
    result.acked = len(acked)
    return result


def _wait_for(log_path: Path, pred: Callable[[dict[str, Any]], bool], p: Any, timeout: float) -> dict[str, Any] | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for rec in _read_log(log_path):
            if pred(rec):
                return rec
        if not p.is_alive():
            for rec in _read_log(log_path):
                if pred(rec):
                    return rec
            return None
        time.sleep(0.002)
    return None


def run_crash_points(target: str, work: Path, *, open_timeout: float = 120.0) -> KillResult:
    """Kill a write of ``target`` before each of its durability calls in turn, then after the last."""
    ctx = _context()
    work.mkdir(parents=True, exist_ok=True)
    result = KillResult(target)

    def child(cycle: int, crash_at: int, acked: list[int]) -> tuple[dict[str, Any] | None, list[dict[str, Any]], Any]:
        log_path = work / f"points-{cycle:04d}.jsonl"
        p = ctx.Process(target=kill_child, args=(target, str(work), str(log_path), acked, crash_at, cycle == 0))
        p.start()
        p.join(open_timeout)
        if p.is_alive():
            p.kill()
            p.join()
        records = _read_log(log_path)
        opened = next((r for r in records if "opened" in r or "open_error" in r), None)
        return opened, records, p.exitcode

    # A dry run counts the calls of one write (and builds the base state).
    opened, records, _ = child(0, 0, [])
    count = next((r["durability_calls"] for r in records if "durability_calls" in r), 0)
    if opened is None or "open_error" in opened or count == 0:
        result.failures.append(f"dry run failed: {records[-3:]}")
        return result
    committed = next(r["committed"] for r in records if "committed" in r)
    spec = _KILL_SPECS[target]
    acked = list(range(spec["base"], spec["base"] + committed * spec["step"])) if target == "service_add" else []
    for n in range(1, count + 1):
        opened, records, _ = child(n, n, acked)
        result.kills += 1
        commits = [r["committed"] for r in records if "committed" in r]
        point = next((r for r in records if "crash_point" in r), None)
        if point is not None:
            result.in_write += 1
        if commits:
            committed = max(commits)
            if target == "service_add":
                acked = list(range(spec["base"], spec["base"] + committed * spec["step"]))
        # The next child opens what this one left.
        check, check_records, _ = child(10_000 + n, -1, acked)
        if check is None or "open_error" in check:
            where = f"{point['call']}({', '.join(point['args'])})" if point else "after the write"
            result.failures.append(f"killed before call {n} of {count}, {where}: reopen failed: {check and check.get('open_error')}")
            break
        if check["opened"] < committed:
            result.failures.append(f"killed before call {n}: reopened generation {check['opened']}, {committed} was committed")
        else:
            result.recovered += 1
            committed = check["opened"] + (1 if any("committed" in r for r in check_records) else 0)
    result.acked = len(acked)
    return result



# ------------------------------------------------------------------ overload


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m simsearch.cli serve`` on 127.0.0.1 and a free port, started outside the checkout.

    While it loads, every ``/readyz`` answer is kept in ``starting`` (status
    code and ``Retry-After``), so a test can check what a starting server says.
    """

    def __init__(self, index: Path, log: Path, *args: str, ready_timeout: float = 180.0) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starting: list[tuple[int, str | None]] = []
        self._log = open(log, "wb")  # noqa: SIM115 - open for the server's life
        command = [sys.executable, "-m", "simsearch.cli", "serve", "--index", str(index), "--port", str(self.port), *args]
        # cwd: `python -m` puts the working directory first on sys.path, where a
        # source checkout would shadow the simsearch under test.
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=simsearch_env(), cwd=log.parent)
        end = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                self._log.close()
                raise AssertionError(f"the server exited with {self.process.returncode}: {log.read_text()[-2000:]}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=5)
                if r.status_code == 200:
                    break
                self.starting.append((r.status_code, r.headers.get("retry-after")))
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                self.stop()
                raise AssertionError(f"the server was not ready within {ready_timeout:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (from /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        stop_process(self.process, self._log)


@dataclasses.dataclass
class LoadResult:
    """What a load run got back.

    Attributes
    ----------
    codes : Counter
        Status code -> count (``"transport"`` for connection errors and client timeouts).
    latencies_s : list of float
        Latency of each 200 answer.
    missing_retry_after : int
        429 and 503 answers without a ``Retry-After`` header.
    sent, seconds : int, float
        Requests sent, and the wall time they took.
    lag_s : list of float
        How late the load generator's own event loop woke up, sampled every
        20 ms: on a loaded machine the client's lag is part of every latency
        it measures.
    """

    codes: Counter
    latencies_s: list[float]
    missing_retry_after: int
    sent: int
    seconds: float
    lag_s: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """200 answers per second."""
        return self.codes.get(200, 0) / self.seconds if self.seconds else 0.0

    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the 200 answers' latency, in ms (NaN if none)."""
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")

    def slower_than(self, seconds: float) -> int:
        """How many 200 answers took longer than ``seconds``."""
        return sum(t > seconds for t in self.latencies_s)


def closed_loop(url: str, seconds: float, threads: int = 4, prefix: str = "rate") -> LoadResult:
    """``threads`` clients each send one search after the other for ``seconds``: the sustainable rate."""
    return _load(url, seconds, threads, None, prefix)


def open_loop(url: str, rate: float, seconds: float, threads: int = 32, prefix: str = "load", max_requests: int = 4000) -> LoadResult:
    """Send searches at ``rate`` per second whatever the answers take (at most ``max_requests``, ``threads`` in flight at most)."""
    return _load(url, seconds, threads, rate, prefix, max_requests)


class _Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams, speaking just what the load needs.

    A load generator on the machine it loads must cost little per request:
    a pool of httpx client threads contending for the GIL, and then even
    one httpx.AsyncClient loop, lagged by seconds on a loaded machine and
    added that to every latency it measured.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: Any = None
        self.writer: Any = None

    async def post(self, path: str, body: bytes) -> tuple[int, dict[bytes, bytes]]:
        import asyncio

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        headers: dict[bytes, bytes] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return int(status_line.split()[1]), headers

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _load(url: str, seconds: float, threads: int, rate: float | None, prefix: str, max_requests: int = 100_000) -> LoadResult:
    """Drive the load from one asyncio loop over at most ``threads`` keep-alive
    connections. A request's latency runs from the moment it is sent (it may
    first wait for a free connection)."""
    import asyncio
    from urllib.parse import urlsplit

    where = urlsplit(url)
    codes: Counter = Counter()
    latencies: list[float] = []
    missing = [0]
    counter = [0]
    lag: list[float] = []

    def body() -> bytes:
        counter[0] += 1
        text = f"{prefix} {counter[0]} stainless steel kettle {counter[0] * 7919 % 1000}"  # unique: no cache hits
        return json.dumps({"query": text, "k": 3}).encode()

    async def run() -> float:
        idle: asyncio.Queue = asyncio.Queue()
        for _ in range(threads):
            idle.put_nowait(_Connection(where.hostname or "127.0.0.1", where.port or 80))

        async def search() -> None:
            conn = await idle.get()
            start = time.perf_counter()
            try:
                status, headers = await asyncio.wait_for(conn.post("/v1/search", body()), 30)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
                codes["transport"] += 1  # counted, not raised
                conn.close()
                return
            finally:
                idle.put_nowait(conn)
            took = time.perf_counter() - start
            codes[status] += 1
            if status == 200:
                latencies.append(took)
            if status in (429, 503) and b"retry-after" not in headers:
                missing[0] += 1

        async def watch() -> None:
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.02)
                lag.append(time.monotonic() - before - 0.02)

        watcher = asyncio.ensure_future(watch())
        start = time.monotonic()
        end = start + seconds
        try:
            if rate is None:

                async def client_loop() -> None:
                    while time.monotonic() < end:
                        await search()

                await asyncio.gather(*(client_loop() for _ in range(threads)))
            else:
                tasks = []
                for i in range(min(max_requests, int(rate * seconds))):
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.ensure_future(search()))
                await asyncio.gather(*tasks)
            return time.monotonic() - start
        finally:
            watcher.cancel()
            while not idle.empty():
                idle.get_nowait().close()

    took = asyncio.run(run())
    return LoadResult(codes, latencies, missing[0], sum(codes.values()), took, lag)


if __name__ == "__main__":
    if sys.argv[1] == "fuzz-batch":
        _fuzz_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
