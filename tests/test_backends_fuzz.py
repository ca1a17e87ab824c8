"""Crafted hnswlib and faiss index files: each load succeeds or raises a typed error, never crashes or hangs.

The container's CRC-32 anyone can recompute, so every mutated file here is
written back through :func:`simsearch._fileio.write_container`: the mutation
reaches the library blob's own parser. The files are loaded (then searched,
grown and shrunk) in a child process, so a segfault fails the test instead of
killing pytest, and a hang is caught by the timeout.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import simsearch
from simsearch import _fileio

DIM, M, N = 8, 6, 400
Mutation = Callable[[dict[str, Any], bytearray], None]  # mutate(json_header, blob) in place
_RESERVED = ("format_version", "sections")

# hnswlib's saveIndex header: (offset, struct format) of each field.
_HNSW_FIELDS = {
    "offsetLevel0": (0, "<Q"), "max_elements": (8, "<Q"), "cur_element_count": (16, "<Q"),
    "size_data_per_element": (24, "<Q"), "label_offset": (32, "<Q"), "offsetData": (40, "<Q"),
    "maxlevel": (48, "<i"), "enterpoint_node": (52, "<I"), "maxM": (56, "<Q"), "maxM0": (64, "<Q"),
    "M": (72, "<Q"), "mult": (80, "<d"), "ef_construction": (88, "<Q"),
}

CHILD = r"""
import sys
import numpy as np
import simsearch

rng = np.random.default_rng(0)
for i, path in enumerate(sys.argv[1:]):
    print("START", i, flush=True)
    try:
        index = simsearch.Index.load(path)
        q = rng.normal(size=(4, index.dim)).astype(np.float32)
        index.search(q, k=5)
        index.add(rng.normal(size=(3, index.dim)).astype(np.float32))
        live = index.ids()
        if live.size:
            index.remove(live[:1])
        index.search(q, k=5, ef=40)
        print("OK", i, flush=True)
    except (simsearch.SimsearchError, ValueError) as err:
        print("REJECT", i, type(err).__name__, str(err).replace("\n", " ")[:300], flush=True)
    except Exception as err:  # anything else is a bug the test reports
        print("OTHER", i, type(err).__name__, str(err).replace("\n", " ")[:300], flush=True)
"""


def _base_index(backend: str, tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    index = simsearch.Index(DIM, metric="l2", backend=backend, M=M, ef_construction=32, num_threads=1)
    index.add(rng.normal(size=(N, DIM)).astype(np.float32))
    index.remove(np.arange(0, N, 9))
    path = tmp_path / f"{backend}.simsearch"
    index.save(path)
    return path


def _rewrite(src: Path, dst: Path, blob_name: str, mutate: Mutation) -> Path:
    """Copy ``src`` to ``dst`` with ``mutate(header, blob)`` applied and every checksum recomputed."""
    header, sections = _fileio.read_container(src)
    header = {k: v for k, v in header.items() if k not in _RESERVED}
    blob = bytearray(np.asarray(sections[blob_name]).tobytes())
    mutate(header, blob)
    sections = {name: np.array(arr) for name, arr in sections.items()}
    sections[blob_name] = np.frombuffer(bytes(blob), dtype=np.uint8)
    _fileio.write_container(dst, header, sections)
    return dst


def _put(blob: bytearray, offset: int, fmt: str, value: Any) -> None:
    if 0 <= offset and offset + struct.calcsize(fmt) <= len(blob):
        struct.pack_into(fmt, blob, offset, value)


def _random_bytes(rng: np.random.Generator, size: int, n: int = 10) -> list[Mutation]:
    """``n`` mutations that each overwrite 3 random bytes anywhere in the blob."""
    out = []
    for _ in range(n):
        where, what = rng.integers(0, size, 3), rng.integers(0, 256, 3)
        out.append(lambda h, b, w=where, v=what: [b.__setitem__(int(i), int(x)) for i, x in zip(w, v)])
    return out


def _hnswlib_layout(blob: bytes) -> dict[str, Any]:
    count = struct.unpack_from("<Q", blob, 16)[0]
    per = struct.unpack_from("<Q", blob, 24)[0]
    label = struct.unpack_from("<Q", blob, 32)[0]
    pos, upper = 96 + count * per, []
    for i in range(count):
        (n,) = struct.unpack_from("<I", blob, pos)
        if n:
            upper.append((i, pos, n))
        pos += 4 + n
    return {"count": count, "per": per, "label": label, "upper": upper}


def _hnswlib_mutations(rng: np.random.Generator, blob0: bytes) -> list[Mutation]:
    lay = _hnswlib_layout(blob0)
    count, per, upper = lay["count"], lay["per"], lay["upper"]
    level0_only = next(i for i in range(count) if all(u[0] != i for u in upper))
    out: list[Mutation] = []
    for offset, fmt in _HNSW_FIELDS.values():
        values = {"<Q": (2**40, 0, 3), "<i": (2**20, 0, 3), "<I": (2**20, 0, 3), "<d": (float("nan"), 0.0, 3.0)}[fmt]
        for value in values:
            out.append(lambda h, b, o=offset, f=fmt, v=value: _put(b, o, f, v))
    for value in (count, count + 7, 2**32 - 1):  # level-0 links past the elements
        row = int(rng.integers(count))
        out.append(lambda h, b, r=row, v=value: (_put(b, 96 + r * per, "<H", 1), _put(b, 96 + r * per + 4, "<I", v)))
    for value in (2 * M + 1, 0xFFFF):  # level-0 link counts over maxM0
        row = int(rng.integers(count))
        out.append(lambda h, b, r=row, v=value: _put(b, 96 + r * per, "<H", v))
    for element, pos, n in upper[:3]:
        out.append(lambda h, b, p=pos, n=n: _put(b, p, "<I", n + 4))  # not a whole level
        out.append(lambda h, b, p=pos: _put(b, p, "<I", 2**31))  # runs past the end
        out.append(lambda h, b, p=pos: (_put(b, p + 4, "<H", 1), _put(b, p + 8, "<I", count + 1)))
        out.append(lambda h, b, p=pos, t=level0_only: (_put(b, p + 4, "<H", 1), _put(b, p + 8, "<I", t)))
        out.append(lambda h, b, p=pos: _put(b, p + 4, "<H", M + 1))
    out.append(lambda h, b: _put(b, 52, "<I", level0_only))  # entry point without the top level
    out.append(lambda h, b: b.__delitem__(slice(len(b) - 5, None)))
    out.append(lambda h, b: b.extend(b"\0" * 8))
    for key, value in (("max_elements", 2**39), ("max_elements", 1), ("dim", DIM + 1), ("M", M + 1), ("M", 2**40),
                       ("count", N + 1), ("ef", 0), ("ef", "64"), ("dim", None), ("next_id", -1)):
        out.append(lambda h, b, k=key, v=value: h.__setitem__(k, v))
    out += _random_bytes(rng, len(blob0))
    return out


def _faiss_mutations(rng: np.random.Generator, blob0: bytes) -> list[Mutation]:
    # Offsets of faiss's IndexHNSWSQ serialization: 4-byte fourcc, then the index header.
    hdr = 4 + 4 + 8 + 8 + 8 + 1 + 4
    spans, pos = {}, hdr
    for name, size in (("probas", 8), ("cum", 4), ("levels", 4), ("offsets", 8), ("neighbors", 4)):
        (n,) = struct.unpack_from("<Q", blob0, pos)
        spans[name] = (pos, n, size)
        pos += 8 + n * size
    tail = pos  # entry_point, max_level, efConstruction, efSearch, upper_beam
    storage = tail + 20
    levels_at, n_levels, _ = spans["levels"]
    nb_at, n_nb, _ = spans["neighbors"]
    levels = np.frombuffer(blob0, "<i4", n_levels, levels_at + 8)
    low = int(np.flatnonzero(levels == 1)[0])
    out: list[Mutation] = [
        lambda h, b: _put(b, 4, "<i", DIM + 1),  # d
        lambda h, b: _put(b, 8, "<q", N * 4),  # ntotal
        lambda h, b: _put(b, hdr - 4, "<i", 7),  # metric type
        lambda h, b: _put(b, tail, "<i", N * 10),  # entry point
        lambda h, b: _put(b, tail, "<i", low),  # entry point without the top level
        lambda h, b: _put(b, tail + 4, "<i", 40),  # max level
        lambda h, b: _put(b, tail + 8, "<i", -5),  # efConstruction
        lambda h, b: _put(b, tail + 12, "<i", 0),  # efSearch
        lambda h, b: _put(b, storage, "4s", b"IxPQ"),
        lambda h, b: b.__delitem__(slice(len(b) - 9, None)),
        lambda h, b: b.extend(b"\1" * 16),
    ]
    for name, (at, n, size) in spans.items():
        out.append(lambda h, b, a=at, n=n: _put(b, a, "<Q", n + 1))
        out.append(lambda h, b, a=at: _put(b, a, "<Q", 2**45))
        out.append(lambda h, b, a=at, n=n: _put(b, a, "<Q", max(n - 1, 0)))
    for value in (N, N + 100, -7, 2**31 - 1):  # neighbour ids out of range
        slot = int(rng.integers(n_nb))
        out.append(lambda h, b, s=slot, v=value: _put(b, nb_at + 8 + 4 * s, "<i", v))
    for value in (0, 99, -1):  # levels out of range
        node = int(rng.integers(n_levels))
        out.append(lambda h, b, i=node, v=value: _put(b, levels_at + 8 + 4 * i, "<i", v))
    # an upper-layer neighbour that is not on that layer
    up = int(np.flatnonzero(levels >= 2)[0])
    offsets = np.frombuffer(blob0, "<u8", n_levels + 1, spans["offsets"][0] + 8)
    cum = np.frombuffer(blob0, "<i4", spans["cum"][1], spans["cum"][0] + 8)
    out.append(lambda h, b: _put(b, nb_at + 8 + 4 * (int(offsets[up]) + int(cum[1])), "<i", low))
    for key, value in (("slots", N + 1), ("dim", DIM * 2), ("M", M + 2), ("ef_construction", 5), ("metric", "ip"),
                       ("metric", "hamming"), ("backend", "native"), ("count", 3), ("ef", 2**40)):
        out.append(lambda h, b, k=key, v=value: h.__setitem__(k, v))
    out += _random_bytes(rng, len(blob0))
    return out


def _run_child(paths: list[Path]) -> list[list[str]]:
    """Load every path in one child; a crash or hang fails naming the file it died on."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [line.split(" ", 3) for line in proc.stdout.splitlines()]
    if proc.returncode != 0:
        started = [int(parts[1]) for parts in lines if parts[0] == "START"]
        culprit = paths[started[-1]] if started else None
        pytest.fail(f"loading {culprit} killed the child (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return [parts for parts in lines if parts[0] != "START"]


@pytest.mark.parametrize("backend", ["hnswlib", "faiss"])
def test_mutated_files_load_or_raise_a_typed_error(backend: str, tmp_path: Path) -> None:
    src = _base_index(backend, tmp_path)
    _, sections = _fileio.read_container(src)
    blob0 = np.asarray(sections[backend]).tobytes()
    rng = np.random.default_rng(11 if backend == "hnswlib" else 12)
    mutations = (_hnswlib_mutations if backend == "hnswlib" else _faiss_mutations)(rng, blob0)
    paths = [_rewrite(src, tmp_path / f"m{i:03d}", backend, m) for i, m in enumerate(mutations)]
    outcomes = _run_child([src, *paths])
    assert len(outcomes) == len(paths) + 1
    assert outcomes[0][0] == "OK", outcomes[0]  # the unmutated file loads and works
    others = [(paths[int(o[1]) - 1].name, o[2:]) for o in outcomes if o[0] == "OTHER"]
    assert not others, others
    rejected = [o for o in outcomes if o[0] == "REJECT"]
    assert all(o[2] in {"CorruptFileError", "FormatVersionError"} for o in rejected), rejected
    # Most structural mutations are caught before the library sees them, in words naming the part.
    assert len(rejected) >= 0.7 * len(paths)
    assert sum(backend in o[3] for o in rejected) >= 0.4 * len(paths)


def test_the_fuzzed_layouts_are_the_libraries_own(tmp_path: Path) -> None:
    """The offsets the mutations use are those of the files the backends write."""
    for backend in ("hnswlib", "faiss"):
        header, sections = _fileio.read_container(_base_index(backend, tmp_path))
        blob = np.asarray(sections[backend]).tobytes()
        if backend == "hnswlib":
            lay = _hnswlib_layout(blob)
            assert lay["count"] == N and lay["upper"]
            assert struct.unpack_from("<Q", blob, 72)[0] == M
        else:
            assert blob[:4] == b"IHNs" and struct.unpack_from("<i", blob, 4)[0] == DIM
        assert header["count"] == N - len(range(0, N, 9))
