"""Hostile folders: every folder format simsearch reads, mutated, loaded in child processes.

The formats other than index files (those have their own native fuzzer):
sharded manifest folders, Deduplicator state folders, saved CatalogMatcher
folders, the SQLite EmbeddingCache file and the CLI index folder (what
``simsearch index build`` writes, with a write-ahead log). Each pristine
folder is built once, then mutated (truncated, flipped, deleted or swapped
members, JSON fields of the wrong type, huge numbers, paths with ``..``, other
format versions); in ``resealed`` mode the checksums are recomputed so the
mutation reaches the parser, and the cache is also edited through SQL. Each
case is loaded (and used a little) in a child process (see
``tests/_faults.py``): a crash or a hang is a failure of the test, not of the
run. ``benchmarks/reliability.py`` runs the long version.
"""

from __future__ import annotations

import _faults
import pytest

#: Cases per format and mode: the builds (an encoder for two of them) dominate the time.
CASES = {"sharded": 50, "dedup": 30, "cli_folder": 40, "cache": 40, "matcher": 5}
MODES = {"sharded": ("raw", "resealed"), "dedup": ("raw", "resealed"), "cli_folder": ("raw",), "cache": ("raw", "sql"), "matcher": ("raw",)}
RUNS = [(name, mode) for name, modes in MODES.items() for mode in modes]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    done: dict[tuple[str, str], _faults.FuzzResult] = {}

    def run(name: str, mode: str) -> _faults.FuzzResult:
        if (name, mode) not in done:
            work = tmp_path_factory.getbasetemp() / f"fuzz-{name}"
            done[name, mode] = _faults.run_fuzz(name, mode, work, 1 if mode == "pristine" else CASES[name], seed=7)
        return done[name, mode]

    return run


def show(outcomes: list[dict]) -> str:
    return "\n".join(f"{o['verdict']}: {o['mutation']} -> {o['type']}: {o['message']}" for o in outcomes[:10])


@pytest.mark.parametrize("name", list(MODES))
def test_the_pristine_folder_loads(fuzz, name):
    result = fuzz(name, "pristine")
    assert [o["verdict"] for o in result.outcomes] == ["accepted"], show(result.outcomes)


@pytest.mark.parametrize("name, mode", RUNS)
def test_no_mutation_crashes_or_hangs_the_loader(fuzz, name, mode):
    result = fuzz(name, mode)
    assert len(result.outcomes) == CASES[name]
    assert result.bad("crash", "hang") == [], show(result.bad("crash", "hang"))


_UNTYPED: dict[str, str] = {}


@pytest.mark.parametrize(
    "name, mode",
    [pytest.param(n, m, marks=pytest.mark.xfail(strict=True, reason=_UNTYPED[n])) if n in _UNTYPED else (n, m) for n, m in RUNS],
)
def test_every_rejection_is_a_typed_error_that_names_the_problem(fuzz, name, mode):
    """A SimsearchError, or a ValueError/OSError (a KeyError only as a SimsearchError) of three words or more."""
    result = fuzz(name, mode)
    assert result.bad("untyped") == [], show(result.bad("untyped"))


@pytest.mark.parametrize("name, mode", RUNS)
def test_every_rejection_is_a_simsearch_error(fuzz, name, mode):
    result = fuzz(name, mode)
    assert result.bad("tolerated", "untyped") == [], show(result.bad("tolerated", "untyped"))
