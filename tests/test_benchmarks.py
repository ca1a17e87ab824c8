"""The benchmarks' shared helpers (benchmarks/_common.py, benchmarks/_data.py) and their import rule."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import _data  # noqa: E402


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module name) of every import in a file, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return sorted(found)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_follows_the_import_rule(script: Path) -> None:
    imports = _imported_modules(script)
    names = [name for _, name in imports]
    others = {p.stem for p in SCRIPTS} - {script.stem}
    assert not others & set(names), f"{script.name} imports another script"
    assert "_common" in names
    first_common = min(line for line, name in imports if name == "_common")
    first_simsearch = min((line for line, name in imports if name == "simsearch"), default=10**9)
    assert first_common < first_simsearch
    text = script.read_text()
    assert "sys.path" not in text
    assert "cpu_flags()" in text and "host_line()" in text


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_starts(script: Path) -> None:
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_cpu_flags_and_host_line() -> None:
    flags = _common.cpu_flags()
    assert list(flags) == list(_common.CPU_FLAGS)
    assert all(isinstance(v, bool) for v in flags.values())
    line = _common.host_line()
    assert line.startswith("CPU: ") and "avx2=" in line and "cores: " in line
    assert _common.rss_bytes() > 0


def test_run_json_child(tmp_path: Path) -> None:
    ok = tmp_path / "ok.py"
    ok.write_text('import json, sys\nprint("chatter")\nprint(json.dumps({"args": sys.argv[1:]}))\n')
    assert _common.run_json_child(ok, "a", "b") == {"args": ["a", "b"]}
    bad = tmp_path / "bad.py"
    bad.write_text('raise SystemExit("no data here")\n')
    with pytest.raises(RuntimeError, match="no data here"):
        _common.run_json_child(bad)


def test_read_csv_strips_header_names_and_checks_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('id, Product Title\n1,"a, b"\n2,c\n')
    assert _data.read_csv(path, columns=("Product Title",)) == [
        {"id": "1", "Product Title": "a, b"},
        {"id": "2", "Product Title": "c"},
    ]
    with pytest.raises(ValueError, match="no column 'title'"):
        _data.read_csv(path, columns=("title",))
    with pytest.raises(FileNotFoundError, match="SIMSEARCH_DATA"):
        _data.read_csv(tmp_path / "missing.csv")


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_knn_against_full_sort(metric: str, rng: np.random.Generator) -> None:
    base = rng.standard_normal((97, 8), dtype=np.float32)
    queries = rng.standard_normal((5, 8), dtype=np.float32)
    ids, scores = _data.exact_knn(base, queries, 4, metric=metric, chunk=10)
    if metric == "ip":
        full = queries @ base.T
        want = np.argsort(-full, axis=1)[:, :4]
    else:
        full = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(axis=2)
        want = np.argsort(full, axis=1)[:, :4]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-4, atol=1e-4)


def test_recall_at_k_counts_ties_and_misses() -> None:
    base = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)  # rows 0 and 1 tie
    queries = np.array([[1, 0]], dtype=np.float32)
    _, true_scores = _data.exact_knn(base, queries, 2)
    assert _data.recall_at_k(np.array([[1, 0]]), base, queries, true_scores) == 1.0
    assert _data.recall_at_k(np.array([[0, 2]]), base, queries, true_scores) == 0.5
    # simsearch's missing-id sentinel (uint64, all bits set) is a miss, not row -1.
    found = np.array([[0, np.iinfo(np.uint64).max]], dtype=np.uint64)
    assert _data.recall_at_k(found, base, queries, true_scores) == 0.5


def test_synthetic_mixture_is_seeded_and_normalized() -> None:
    base, queries = _data.synthetic_mixture(300, 20, dim=16, n_clusters=7, rank=3, seed=3)
    again, _ = _data.synthetic_mixture(300, 20, dim=16, n_clusters=7, rank=3, seed=3)
    assert base.shape == (300, 16) and queries.shape == (20, 16) and base.dtype == np.float32
    np.testing.assert_array_equal(base, again)
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, rtol=1e-5)


@pytest.mark.skipif(not (_common.DATA_DIR / _data.PRICERUNNER).exists(), reason="shared data not present")
def test_shared_data_readers() -> None:
    offers = _data.pricerunner_offers()
    assert len(offers.ids) == len(offers.titles) == len(offers.clusters) == len(offers.categories) == 35311
    abt_buy = _data.leipzig_abt_buy()
    assert (len(abt_buy.abt), len(abt_buy.buy), len(abt_buy.mapping)) == (1081, 1092, 1097)
    titles = _data.load_titles()
    assert len(titles) == 42041
    assert titles[: len(offers.titles)] == offers.titles
    shopee_test = [r["title"] for r in _data.shopee("test")]
    assert titles[-len(shopee_test) :] == shopee_test
