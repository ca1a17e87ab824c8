"""Read, edit and re-checksum native index files (the layout of csrc/io.hpp).

The file checksums carry no key, so a crafted file can always carry valid
ones: these helpers recompute them after every edit, so the edited bytes
reach the structural checks instead of stopping at a checksum mismatch.
They also run loads in subprocesses, so that a crash or a hang is a test
failure instead of the end of pytest.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _helpers import TESTS_DIR, child_env
from simsearch import _core

HEADER_SIZE = 512
SECTION_NAMES = [
    "data0", "labels", "levels", "flags", "upper_off", "upper_pool",
    "quant_lo", "quant_step", "free", "floats", "attr_names", "attr_values",
]
# magic, version, header_size, metric, dtype, then 11 uint64, entry, max_level, flags, n_sections
_FIXED = struct.Struct("<8sIIIIQQQQQQQQQQQIiII")
FIXED_FIELDS = [
    "magic", "version", "header_size", "metric", "dtype", "dim", "dim_padded", "M", "ef_construction",
    "rec_size", "n_slots", "n_live", "seed", "train_limit", "next_retrain", "next_auto_id", "entry",
    "max_level", "flags", "n_sections",
]
SECTIONS_AT = 128
EF_AT = 416
CHECKSUM_AT = 504
assert _FIXED.size == SECTIONS_AT

_M64 = (1 << 64) - 1
_K1 = 0x9E3779B185EBCA87
_K2 = 0xC2B2AE3D27D4EB4F


def _mix(acc: int, w: int) -> int:
    acc ^= (w * _K2) & _M64
    acc = ((acc << 31) | (acc >> 33)) & _M64
    return (acc * _K1) & _M64


def checksum64(data: bytes) -> int:
    """The file's 64-bit section checksum (csrc/io.hpp ``checksum64``)."""
    n = len(data)
    h = [_K1, _K2, _K1 ^ 0x1234567, _K2 ^ 0x89ABCDEF]
    body = n // 32 * 32
    words = np.frombuffer(data[:body], dtype="<u8").tolist()
    for i in range(0, len(words), 4):
        h[0] = _mix(h[0], words[i])
        h[1] = _mix(h[1], words[i + 1])
        h[2] = _mix(h[2], words[i + 2])
        h[3] = _mix(h[3], words[i + 3])
    out = (n * _K1) & _M64
    for lane in h:
        out = _mix(out, lane)
    for b in data[body:]:
        out = _mix(out, b)
    out ^= out >> 29
    out = (out * _K2) & _M64
    out ^= out >> 32
    return out


@dataclass
class IndexFile:
    """A native index file as header fields, section table and bytes."""

    raw: bytearray
    fields: dict[str, Any] = field(default_factory=dict)
    sections: list[list[int]] = field(default_factory=list)  # [offset, length, checksum]
    ef: int = 0

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> IndexFile:
        raw = bytearray(Path(path).read_bytes())
        f = cls(raw)
        f.fields = dict(zip(FIXED_FIELDS, _FIXED.unpack_from(raw, 0)))
        f.sections = [list(struct.unpack_from("<QQQ", raw, SECTIONS_AT + 24 * i)) for i in range(12)]
        (f.ef,) = struct.unpack_from("<Q", raw, EF_AT)
        return f

    def section(self, name: str) -> memoryview:
        off, length, _ = self.sections[SECTION_NAMES.index(name)]
        return memoryview(self.raw)[off : off + length]

    def array(self, name: str, dtype: str) -> np.ndarray:
        """A writable view of a section's bytes as ``dtype``."""
        return np.frombuffer(self.section(name), dtype=dtype)

    def records(self) -> np.ndarray:
        """Level-0 records as uint32 words, shape (n_slots, rec_size // 4)."""
        rec = self.fields["rec_size"]
        return self.array("data0", "<u4").reshape(-1, rec // 4)

    def pack(self, recompute: bool = True) -> bytes:
        """The file's bytes with the header written back (and checksums recomputed)."""
        raw = bytearray(self.raw)
        size = len(raw)
        raw.extend(bytes(max(0, HEADER_SIZE - size)))  # a file cut inside its header keeps only the cut part
        if recompute:
            for s in self.sections:
                off, length, _ = s
                if off + length <= size:
                    s[2] = checksum64(bytes(raw[off : off + length]))
        _FIXED.pack_into(raw, 0, *[self.fields[k] for k in FIXED_FIELDS])
        for i, s in enumerate(self.sections):
            struct.pack_into("<QQQ", raw, SECTIONS_AT + 24 * i, *s)
        struct.pack_into("<Q", raw, EF_AT, self.ef)
        if recompute:
            struct.pack_into("<Q", raw, CHECKSUM_AT, checksum64(bytes(raw[:CHECKSUM_AT])))
        return bytes(raw[:size])

    def write(self, path: str | os.PathLike[str], recompute: bool = True) -> Path:
        Path(path).write_bytes(self.pack(recompute))
        return Path(path)


# ------------------------------------------------------------ base indexes

COSINE, IP, L2 = 0, 1, 2
DIM = 16


def make_index(
    metric: int = COSINE, n: int = 300, *, keep_floats: bool = False, train_limit: int = 20000, removed: int = 0,
    attributes: bool = False, seed: int = 0,
) -> _core.NativeIndex:
    rng = np.random.default_rng(seed)
    ix = _core.NativeIndex(DIM, metric, 8, 40, keep_floats, "", 0x5EED5EED, train_limit)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    names, values = ([], [])
    if attributes:
        names, values = ["colour"], [rng.integers(0, 5, n).astype(np.int32)]
    ix.add(x, np.arange(n, dtype=np.uint64), 1, names, values)
    if removed:
        ix.remove(np.arange(0, 3 * removed, 3, dtype=np.uint64))
    return ix


# ------------------------------------------------------- structure-aware edits

_HEADER_FIELDS = [
    "version", "metric", "dtype", "dim", "dim_padded", "M", "ef_construction", "rec_size", "n_slots", "n_live",
    "seed", "train_limit", "next_retrain", "next_auto_id", "entry", "max_level", "flags", "n_sections",
]
_U32_FIELDS = {"version", "header_size", "metric", "dtype", "entry", "flags", "n_sections"}


def _interesting(rng: np.random.Generator, orig: int, bits: int) -> int:
    choices = [0, 1, orig + 1, orig - 1, orig * 2, orig // 2, 2 ** (bits - 1), 2**bits - 1, int(rng.integers(0, 2**31))]
    return int(choices[rng.integers(len(choices))]) % (2**bits)


def mutate(f: IndexFile, rng: np.random.Generator) -> tuple[str, bool]:
    """One structure-aware edit of ``f``; (what, whether to recompute the checksums)."""
    kind = rng.integers(10)
    n = f.fields["n_slots"]
    if kind == 0:
        name = _HEADER_FIELDS[rng.integers(len(_HEADER_FIELDS))]
        if name == "max_level":
            f.fields[name] = int(rng.integers(-3, 35))
        else:
            f.fields[name] = _interesting(rng, f.fields[name], 32 if name in _U32_FIELDS else 64)
        return f"header {name}={f.fields[name]}", True
    if kind == 1:
        if rng.random() < 0.5:
            f.ef = _interesting(rng, f.ef, 64)
            return f"ef={f.ef}", True
        i = int(rng.integers(12))
        j = int(rng.integers(2))
        other = f.sections[int(rng.integers(12))][0]
        choices = [0, 1, 4, 64, -1, -4, -64]
        if rng.random() < 0.3:
            f.sections[i][j] = int(other if j == 0 else len(f.raw))
        else:
            f.sections[i][j] = max(0, f.sections[i][j] + int(choices[rng.integers(len(choices))]))
        return f"section {SECTION_NAMES[i]}[{'offset' if j == 0 else 'length'}]={f.sections[i][j]}", True
    if kind == 2 and n:
        rec = f.records()
        s = int(rng.integers(n))
        j = int(rng.integers(rec.shape[1] - 1))
        rec[s, j] = int(rng.choice([0, 1, n - 1, n, n + 7, 2 * f.fields["M"] + 1, 2**32 - 1, rng.integers(0, n)]))
        return f"record {s} word {j}={rec[s, j]}", True
    if kind == 3 and n:
        levels = f.array("levels", "u1")
        s = int(rng.integers(n))
        levels[s] = int(rng.integers(0, 34))
        return f"level[{s}]={levels[s]}", True
    if kind == 4 and n:
        arr = f.array(["upper_off", "free", "upper_pool"][rng.integers(3)], "<u4")
        if arr.size:
            i = int(rng.integers(arr.size))
            arr[i] = int(rng.choice([0, 1, n, n - 1, 2**32 - 1, arr[(i + 1) % arr.size], rng.integers(0, 4 * n + 1)]))
        return "u32 table word", True
    if kind == 5 and n:
        arr = f.array(["flags", "labels"][rng.integers(2)], "u1")
        i = int(rng.integers(arr.size))
        arr[i] = int(rng.integers(256))
        return f"flag/label byte {i}", True
    if kind == 6:
        arr = f.array(["quant_lo", "quant_step"][rng.integers(2)], "<f4")
        arr[int(rng.integers(arr.size))] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-45, 3e38])
        return "quantizer value", True
    if kind == 7:
        cut = int(rng.integers(0, len(f.raw)))
        del f.raw[cut:]
        return f"truncated to {cut}", bool(rng.integers(2))
    if kind == 8 and f.sections[SECTION_NAMES.index("attr_names")][1]:
        names = f.section("attr_names")
        names[int(rng.integers(len(names)))] = int(rng.integers(256))
        return "attribute name byte", True
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(f.raw)))
        f.raw[i] = int(rng.integers(256))
    return "random bytes", True


def run_python(code: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a crash or hang there fails the caller, not pytest).

    The child imports the simsearch this process imports: ``python -c`` puts its working
    folder first on ``sys.path``, so it runs in ``tests/`` (never the checkout root, whose
    source tree lacks the built extension) with the installed package's folder on PYTHONPATH.
    """
    full_env = child_env()
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=full_env,
        cwd=TESTS_DIR,
    )



# Loads each file of a batch, then (when it loaded) searches and adds: one
# JSON line per file with the outcome, flushed before the next file, so a
# crash shows which file caused it.
_LOADER = r"""
import json, sys
import numpy as np
from simsearch import _core
import simsearch.errors as errors
mode = sys.argv[1]
for path in sys.argv[2:]:
    out = {"path": path}
    try:
        ix = _core.NativeIndex.load(path, mode == "mmap", mode != "noverify", "")
        out["loaded"] = True
        dim = int(ix.dim)
        rng = np.random.default_rng(0)
        q = rng.normal(size=(3, dim)).astype(np.float32)
        try:
            ix.search(q, 5, 16, False, 1)
            ix.search(q, 5, 16, bool(ix.has_floats), 1, True)
            ix.add(rng.normal(size=(4, dim)).astype(np.float32),
                   np.arange(10**15, 10**15 + 4, dtype=np.uint64), 1, [], [])
            ix.search(q, 5, 16, False, 1)
            ix.ids(); ix.memory_bytes; ix.attribute_names
        except Exception as e:
            out["after_error"] = [type(e).__name__, str(e), isinstance(e, errors.SimsearchError)]
    except Exception as e:
        out["loaded"] = False
        out["error"] = [type(e).__name__, str(e), isinstance(e, errors.CorruptFileError), isinstance(e, ValueError)]
    print(json.dumps(out), flush=True)
"""


def load_batch(paths: list[str], mode: str, timeout: float = 120) -> tuple[dict[str, dict], int | None]:
    """Load every file of ``paths`` in one subprocess; (outcome per path, return code or None on timeout)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LOADER, mode, *paths], capture_output=True, text=True, timeout=timeout,
            env=child_env(), cwd=TESTS_DIR,
        )
        rc: int | None = proc.returncode
        stdout = proc.stdout
    except subprocess.TimeoutExpired as e:
        rc = None
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    results = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["path"]] = r
    return results, rc
