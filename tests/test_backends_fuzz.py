"""Crafted hnswlib and faiss index files: each load succeeds or raises a typed error, never crashes or hangs.

The container's CRC-32 anyone can recompute, so every mutated file here is
written back through :func:`simsearch._fileio.write_container`
(the mutations live in ``tests/fuzz_index_files.py``, shared with
``benchmarks/reliability.py``): the mutation
reaches the library blob's own parser. The files are loaded (then searched,
grown and shrunk) in a child process, so a segfault fails the test instead of
killing pytest, and a hang is caught by the timeout.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fuzz_index_files import (
    DIM,
    M,
    N,
    base_backend_index,
    faiss_mutations,
    hnswlib_layout,
    hnswlib_mutations,
    rewrite,
)

from _helpers import TESTS_DIR, child_env
from simsearch import _fileio

CHILD = r"""
import sys
import simsearch
from fuzz_index_files import use_index

for i, path in enumerate(sys.argv[1:]):
    print("START", i, flush=True)
    try:
        use_index(simsearch.Index.load(path))
        print("OK", i, flush=True)
    except (simsearch.SimsearchError, ValueError) as err:
        print("REJECT", i, type(err).__name__, str(err).replace("\n", " ")[:300], flush=True)
    except Exception as err:  # anything else is a bug the test reports
        print("OTHER", i, type(err).__name__, str(err).replace("\n", " ")[:300], flush=True)
"""


def _run_child(paths: list[Path]) -> list[list[str]]:
    """Load every path in one child; a crash or hang fails naming the file it died on."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True, timeout=240, check=False,
        env={**child_env(), "OMP_NUM_THREADS": "1"}, cwd=TESTS_DIR,
    )
    lines = [line.split(" ", 3) for line in proc.stdout.splitlines()]
    if proc.returncode != 0:
        started = [int(parts[1]) for parts in lines if parts[0] == "START"]
        culprit = paths[started[-1]] if started else None
        pytest.fail(f"loading {culprit} killed the child (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return [parts for parts in lines if parts[0] != "START"]


@pytest.mark.parametrize("backend", ["hnswlib", "faiss"])
def test_mutated_files_load_or_raise_a_typed_error(backend: str, tmp_path: Path) -> None:
    src = base_backend_index(backend, tmp_path)
    _, sections = _fileio.read_container(src)
    blob0 = np.asarray(sections[backend]).tobytes()
    rng = np.random.default_rng(11 if backend == "hnswlib" else 12)
    mutations = (hnswlib_mutations if backend == "hnswlib" else faiss_mutations)(rng, blob0)
    paths = [rewrite(src, tmp_path / f"m{i:03d}", backend, m) for i, m in enumerate(mutations)]
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
        header, sections = _fileio.read_container(base_backend_index(backend, tmp_path))
        blob = np.asarray(sections[backend]).tobytes()
        if backend == "hnswlib":
            lay = hnswlib_layout(blob)
            assert lay["count"] == N and lay["upper"]
            assert struct.unpack_from("<Q", blob, 72)[0] == M
        else:
            assert blob[:4] == b"IHNs" and struct.unpack_from("<i", blob, 4)[0] == DIM
        assert header["count"] == N - len(range(0, N, 9))
