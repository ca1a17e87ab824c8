"""simsearch.evaluate: recall lost to the int8 codes against recall lost to the graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

import simsearch
from simsearch.cli import main

from _helpers import brute_force, recall


def data(n: int = 3000, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    q = x[rng.choice(n, 100, replace=False)] + 0.3 * rng.normal(size=(100, dim)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_report_matches_an_independent_computation(metric):
    x, q = data()
    ids = np.arange(len(x), dtype=np.uint64) * 3 + 5
    index = simsearch.Index(32, metric=metric, M=8, ef_construction=40, num_threads=1)
    index.add(x, ids=ids)
    report = simsearch.evaluate(index, q, k=10, vectors=x, ids=ids, ef=12)
    truth = ids[brute_force(x, q, 10, metric)]
    codes, _ = index.search_exact(q, 10)
    found, _ = index.search(q, 10, ef=12)
    assert report.recall_codes == pytest.approx(recall(codes, truth))
    assert report.recall == pytest.approx(recall(found, truth))
    assert report.recall_graph == pytest.approx(recall(found, codes))
    assert report.lost_to_codes == pytest.approx(1 - report.recall_codes)
    assert report.lost_to_graph == pytest.approx(report.recall_codes - report.recall)
    assert report.floats_from == "vectors" and report.k == 10 and report.n_queries == 100
    # The loss is really split: int8 codes lose a little, a tiny ef loses more in the graph.
    assert 0 < report.lost_to_codes < 0.1 and report.lost_to_graph > 0


def test_floats_kept_by_the_index_and_a_larger_ef_loses_less():
    x, q = data(seed=1)
    index = simsearch.Index(32, rescore=True, M=8, ef_construction=40, num_threads=1)
    index.add(x)
    small = simsearch.evaluate(index, q, k=10, ef=10)
    large = simsearch.evaluate(index, q, k=10, ef=200)
    assert small.floats_from == "index"
    assert small.recall_codes == large.recall_codes  # the codes do not depend on ef
    assert large.recall_graph > small.recall_graph
    same = simsearch.evaluate(index, q, k=10, ef=10, vectors=x)
    assert same.recall_codes == pytest.approx(small.recall_codes)
    assert "lost to int8 codes" in small.summary()
    assert json.loads(json.dumps(small.to_dict()))["k"] == 10


def test_bad_inputs():
    x, q = data(500)
    index = simsearch.Index(32, num_threads=1)
    index.add(x)
    with pytest.raises(ValueError, match="rescore=True"):
        simsearch.evaluate(index, q)
    with pytest.raises(ValueError, match="rows, the index holds"):
        simsearch.evaluate(index, q, vectors=x[:10])
    with pytest.raises(ValueError, match="not in the index"):
        simsearch.evaluate(index, q, vectors=x, ids=np.arange(len(x)) + 1000)
    with pytest.raises(ValueError, match="dimension"):
        simsearch.evaluate(index, q[:, :5], vectors=x)
    with pytest.raises(ValueError, match="empty"):
        simsearch.evaluate(index, q[:0], vectors=x)
    with pytest.raises(ValueError, match="native"):
        simsearch.evaluate(simsearch.Index(32, dtype="float32"), q)
    with pytest.raises(ValueError, match="empty"):
        simsearch.evaluate(simsearch.Index(32, rescore=True), q)


def test_cli_eval_index(tmp_path, capsys):
    x, q = data(800)
    index = simsearch.Index(32, num_threads=1)
    index.add(x)
    index.save(tmp_path / "index.ssi")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", q)
    assert main(["-q", "eval", "index", str(tmp_path / "index.ssi"), "--vectors", str(tmp_path / "x.npy"),
                 "--queries", str(tmp_path / "q.npy"), "-k", "5"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["task"] == "index" and out["k"] == 5 and out["n_queries"] == 100
    assert out["recall"] == pytest.approx(simsearch.evaluate(index, q, k=5, vectors=x).recall, abs=1e-4)
    assert main(["-q", "eval", "index", str(tmp_path / "index.ssi")]) == 2  # no float originals
