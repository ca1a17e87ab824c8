"""Index files under fuzz: the native format and the hnswlib / faiss containers.

The mutations the tests use (``tests/native_fuzz_helpers.py`` for the native
layout, the backend blob edits below, shared with
``tests/test_backends_fuzz.py``) registered with
:func:`_faults.register_fuzzer`, so that ``benchmarks/reliability.py`` runs
them by the thousand in each load mode:

- ``native``: files saved by the core, edited structure-aware with every
  checksum recomputed (so the edit reaches the structural checks), plus raw
  edits (checksums left stale) and truncations; loaded with the default
  ``Index.load``, with ``mmap=True`` and with ``verify=False``.
- ``hnswlib`` / ``faiss``: the container files of those backends, their
  library blob or JSON header edited and the container's CRC-32 recomputed,
  plus raw edits and truncations of the container file itself.

After a load that succeeds each case searches, adds and removes, so a file
that loads but leaves the index unusable is a finding too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _faults
import numpy as np
from native_fuzz_helpers import IP, L2, IndexFile, make_index, mutate

import simsearch
from simsearch import _fileio

LOAD_MODES = ("default", "mmap", "noverify")

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


def base_backend_index(backend: str, tmp_path: Path) -> Path:
    """Save a small index of ``backend`` (N items, some removed) under ``tmp_path``; its path."""
    rng = np.random.default_rng(7)
    index = simsearch.Index(DIM, metric="l2", backend=backend, M=M, ef_construction=32, num_threads=1)
    index.add(rng.normal(size=(N, DIM)).astype(np.float32))
    index.remove(np.arange(0, N, 9))
    path = tmp_path / f"{backend}.simsearch"
    index.save(path)
    return path


def rewrite(src: Path, dst: Path, blob_name: str, mutate: Mutation) -> Path:
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


def hnswlib_layout(blob: bytes) -> dict[str, Any]:
    """Element count, record size, label offset and upper-level blocks of an hnswlib ``saveIndex`` blob."""
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


def hnswlib_mutations(rng: np.random.Generator, blob0: bytes) -> list[Mutation]:
    """Structure-aware edits of an hnswlib blob (header fields, links, levels, lengths) and of its JSON header."""
    lay = hnswlib_layout(blob0)
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


def faiss_mutations(rng: np.random.Generator, blob0: bytes) -> list[Mutation]:
    """Structure-aware edits of a faiss ``IndexHNSWSQ`` blob and of its JSON header."""
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


# ------------------------------------------------------------ the fuzzers


def _case_root(workdir: Path, mode: str) -> Path:
    root = workdir / f"cases-{mode}"
    if root.exists():
        for f in root.iterdir():
            f.unlink()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _raw_edit(data: bytearray, rng: np.random.Generator) -> str:
    """Flip a few bytes or cut the file, checksums left as they were."""
    if rng.random() < 0.5:
        cut = int(rng.integers(0, len(data)))
        del data[cut:]
        return f"raw: truncated to {cut}"
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
    return "raw: random bytes"


def native_bases(workdir: Path) -> list[Path]:
    """The four saved native files the cases are cut from (built under ``workdir`` once)."""
    specs = {
        "base_cos": {"n": 120, "removed": 6, "attributes": True},
        "base_l2": {"metric": L2, "n": 150, "keep_floats": True, "train_limit": 60},
        "base_ip": {"metric": IP, "n": 100, "train_limit": 40, "removed": 4},
        "base_empty": {"n": 0},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, kw in specs.items():
        path = workdir / name
        if not path.exists():
            if kw["n"]:
                make_index(**kw).save(os.fspath(path))
            else:
                simsearch.Index(16).save(path)  # the quantizer not yet trained (issue 13, item 4)
        out.append(path)
    return out


def native_cases(workdir: Path, n: int, rng: np.random.Generator, mode: str) -> list[dict[str, Any]]:
    """``n`` edited native index files (see the module docstring); ``mode`` ``pristine`` gives the bases."""
    bases = native_bases(workdir)
    root = _case_root(workdir, mode)
    if mode == "pristine":
        return [{"path": os.fspath(b), "mutation": "none"} for b in bases]
    out = []
    for i in range(n):
        base = bases[i % len(bases)]
        path = root / f"{i:05d}"
        if rng.random() < 0.15:
            data = bytearray(base.read_bytes())
            what = _raw_edit(data, rng)
            path.write_bytes(bytes(data))
        elif rng.random() < 0.1:
            data = bytearray(base.read_bytes())
            data += bytes(rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8))
            what = "bytes appended"
            path.write_bytes(bytes(data))
        else:
            f = IndexFile.read(base)
            edits, recompute = [], True
            for _ in range(int(rng.integers(1, 3))):
                try:
                    w, rc = mutate(f, rng)
                except (ValueError, IndexError, ZeroDivisionError):
                    break  # the first edit broke the layout the second one reads (a record size of 0, say)
                edits.append(w)
                recompute = recompute and rc
                if w.startswith("truncated"):
                    break  # the sections' bytes are gone: nothing left to edit
            f.write(path, recompute=recompute)
            what = "; ".join(edits) + ("" if recompute else " (stale checksums)")
        out.append({"path": os.fspath(path), "mutation": f"{base.name}: {what}"})
    return out


def use_index(index: simsearch.Index) -> None:
    """Search, add, remove and search again: what a loaded file must survive."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, index.dim)).astype(np.float32)
    index.search(q, k=5)
    index.add(rng.normal(size=(3, index.dim)).astype(np.float32))
    live = index.ids()
    if live.size:
        index.remove(live[:1])
    index.search(q, k=5, ef=40)
    if len(index) != index.ids().size:
        raise AssertionError(f"len {len(index)} but ids() has {index.ids().size}")


def load_index_case(path: str, mode: str) -> None:
    """Open ``path`` with :meth:`simsearch.Index.load` in load mode ``mode``, then use it."""
    if mode == "pristine":
        mode = "default"
    index = simsearch.Index.load(path, mmap=mode == "mmap", verify=mode != "noverify", num_threads=1)
    use_index(index)


def _backend_cases(backend: str) -> Callable[[Path, int, np.random.Generator, str], list[dict[str, Any]]]:
    def make_cases(workdir: Path, n: int, rng: np.random.Generator, mode: str) -> list[dict[str, Any]]:
        workdir.mkdir(parents=True, exist_ok=True)
        base = workdir / f"{backend}.simsearch"
        if not base.exists():
            base_backend_index(backend, workdir)
        root = _case_root(workdir, mode)
        if mode == "pristine":
            return [{"path": os.fspath(base), "mutation": "none"}]
        _, sections = _fileio.read_container(base)
        blob0 = np.asarray(sections[backend]).tobytes()
        structured = (hnswlib_mutations if backend == "hnswlib" else faiss_mutations)(rng, blob0)
        out = []
        for i in range(n):
            path = root / f"{i:05d}"
            if rng.random() < 0.15:
                data = bytearray(base.read_bytes())
                what = _raw_edit(data, rng)
                path.write_bytes(bytes(data))
            else:
                picks = [int(rng.integers(len(structured)))] + ([int(rng.integers(len(structured)))] if rng.random() < 0.3 else [])
                edits = [structured[j] for j in picks] + (_random_bytes(rng, len(blob0), 1) if rng.random() < 0.5 else [])

                def apply(h: dict[str, Any], b: bytearray, edits: list[Mutation] = edits) -> None:
                    for e in edits:
                        e(h, b)

                rewrite(base, path, backend, apply)
                what = f"structured edits {picks}" + (" + random bytes" if len(edits) > len(picks) else "")
            out.append({"path": os.fspath(path), "mutation": what})
        return out

    return make_cases


_faults.register_fuzzer("native", native_cases, load_index_case, LOAD_MODES)
_faults.register_fuzzer("hnswlib", _backend_cases("hnswlib"), load_index_case, LOAD_MODES)
_faults.register_fuzzer("faiss", _backend_cases("faiss"), load_index_case, LOAD_MODES)
