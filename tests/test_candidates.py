"""The shared dedup base and metrics: one candidate join, one ef policy, recall@k, one threshold-choice type.

References: brute-force set intersection for recall@k, find_duplicates at the
chosen threshold for choose_threshold's duplicates, the in-process engine for
the Ray engine, a version-1 state folder for the state reader.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest

from simsearch import Deduplicator, find_duplicates
from simsearch._validation import NO_ID
from simsearch.applications import ThresholdChoice, choose_threshold, recall_at_k
from simsearch.applications.candidates import search_ef
from simsearch.applications.lexical import LexicalModel
from simsearch.errors import NotFittedError

from _helpers import duplicate_groups


# -- recall@k -------------------------------------------------------------------


def brute_recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = total = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        t = {int(v) for v in t if v != NO_ID}
        hits += len(t & {int(v) for v in f if v != NO_ID})
        total += len(t)
    return hits / total if total else 1.0


@pytest.mark.parametrize(("k", "k_found", "k_true"), [(1, 1, 1), (3, 5, 3), (5, 3, 7), (10, 10, 10)])
def test_recall_at_k_matches_brute_force(k, k_found, k_true):
    rng = np.random.default_rng(k)
    # ids are distinct within a row, as in search results and true neighbour lists
    found = np.array([rng.choice(30, size=k_found, replace=False) for _ in range(40)], dtype=np.uint64)
    truth = np.array([rng.choice(30, size=k_true, replace=False) for _ in range(40)], dtype=np.uint64)
    found[rng.random(found.shape) < 0.2] = NO_ID  # short result rows
    truth[rng.random(truth.shape) < 0.2] = NO_ID  # fewer true neighbours
    assert recall_at_k(found, truth, k) == pytest.approx(brute_recall(found, truth, k))


def test_recall_at_k_edges():
    ids = np.arange(6, dtype=np.uint64).reshape(2, 3)
    assert recall_at_k(ids, ids, 3) == 1.0
    assert recall_at_k(np.full((2, 3), NO_ID), ids, 3) == 0.0
    assert recall_at_k(ids, np.full((2, 3), NO_ID), 3) == 1.0  # nothing to find
    with pytest.raises(ValueError, match="rows"):
        recall_at_k(ids, ids[:1], 3)
    with pytest.raises(ValueError, match="2-D"):
        recall_at_k(ids[0], ids, 3)
    with pytest.raises(ValueError, match="k must be positive"):
        recall_at_k(ids, ids, 0)


# -- one threshold-choice type ------------------------------------------------------


def test_threshold_choice_reads_the_older_result_types():
    matcher_v1 = {"threshold": 0.5, "f1": 0.8, "precision": 0.9, "recall": 0.7, "n_pairs": 100, "n_positive": 30}
    old = ThresholdChoice.from_dict(matcher_v1)
    assert old.n_labelled == 100 and old.method == "max_f1"
    review = {
        "threshold": 0.6, "previous_threshold": 0.5, "method": "target_precision", "target_precision": 0.9,
        "f1": 0.7, "precision": 0.9, "precision_interval": [0.8, 0.95], "recall": 0.6, "recall_interval": [0.5, 0.7],
        "confidence": 0.95, "n_labelled": 40, "n_positive": 12,
    }  # fmt: skip
    choice = ThresholdChoice.from_dict(review)
    assert choice.precision_interval == (0.8, 0.95)
    assert ThresholdChoice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice
    assert "0.500 -> 0.600" in choice.summary() and "[0.800, 0.950]" in choice.summary()
    with pytest.raises(ValueError, match="unknown"):
        ThresholdChoice.from_dict({**matcher_v1, "colour": "red"})


def test_deprecated_names_warn_and_point_to_the_kept_ones(monkeypatch):
    import simsearch.applications as apps
    from simsearch.applications import lexical, ray_jobs, review

    for module, name in ((apps, "Calibration"), (apps, "ReviewCalibration"), (lexical, "Calibration"), (review, "ReviewCalibration")):
        with pytest.warns(DeprecationWarning, match="ThresholdChoice"):
            assert getattr(module, name) is ThresholdChoice
    with pytest.warns(DeprecationWarning, match="n_labelled"):
        assert ThresholdChoice.from_dict({"threshold": 0.5, "f1": 1, "precision": 1, "recall": 1, "n_pairs": 3}).n_pairs == 3

    x, _ = duplicate_groups()
    seen = {}

    def fake_join(path, **kwargs):  # the Ray join, without Ray: the in-process join of the same vectors
        from simsearch.applications.candidates import load_items, self_join

        seen.update(kwargs, path=path)
        loaded = load_items(x, scoring=kwargs["scoring"])
        return self_join(loaded, k=kwargs["k"], floor=kwargs["floor"], scoring=kwargs["scoring"])

    monkeypatch.setattr(ray_jobs, "ray_join", fake_join)
    with pytest.warns(DeprecationWarning, match="engine='ray'"):
        old = ray_jobs.find_duplicates_on_ray("items.parquet", threshold=0.95, k=3, n_shards=2, progress=False)
    assert seen["path"] == "items.parquet" and seen["n_shards"] == 2
    new = find_duplicates("items.parquet", threshold=0.95, k=3, engine="ray", n_shards=2, progress=False)
    ref = find_duplicates(x, threshold=0.95, k=3, progress=False)
    assert old.pairs.equals(ref.pairs) and new.groups.equals(ref.groups)


def test_engine_arguments_are_checked():
    x, _ = duplicate_groups()
    with pytest.raises(ValueError, match="engine must be one of"):
        find_duplicates(x, engine="spark", progress=False)
    with pytest.raises(TypeError, match="path of a Parquet/CSV file"):
        find_duplicates(x, engine="ray", progress=False)
    with pytest.raises(ValueError, match="engine='ray' only"):
        find_duplicates(x, n_shards=2, progress=False)


# -- one join for choosing a threshold and using it -------------------------------


def test_choose_threshold_returns_the_duplicates_at_its_threshold():
    x, labels = duplicate_groups(noise=0.05)
    choice = choose_threshold(x, labels, max_group_size=10, include_singletons=True, progress=False)
    assert choice.method == "max_mean_f1" and choice.n_labelled == len(x)
    ref = find_duplicates(x, threshold=choice.threshold, max_group_size=10, include_singletons=True, progress=False)
    assert choice.duplicates.pairs.equals(ref.pairs) and choice.duplicates.groups.equals(ref.groups)
    assert choice.f1 == pytest.approx(2 * choice.precision * choice.recall / (choice.precision + choice.recall))


# -- one ef policy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({}, 64), ({"k": 40}, 82), ({"ef": 300}, 300), ({"index_params": {"ef": 200}}, 200), ({"ef": 90, "index_params": {"ef": 200}}, 90)],
)
def test_the_user_ef_is_honoured(monkeypatch, kwargs, expected):
    from simsearch.index import Index

    used = []
    search = Index.search

    def spy(self, queries, k=10, ef=None, filter=None):
        used.append((k, ef))
        return search(self, queries, k=k, ef=ef, filter=filter)

    monkeypatch.setattr(Index, "search", spy)
    x, _ = duplicate_groups(30)
    find_duplicates(x, threshold=0.9, progress=False, **kwargs)
    assert used and {ef for _, ef in used} == {expected}
    used.clear()
    # The Deduplicator searches more neighbours than k (2k at fit, 3k for an update's reverse
    # neighbours): a user's ef is used as given, the default follows the number searched.
    dedup = Deduplicator(threshold=0.9, progress=False, **kwargs).fit(x[:60])
    dedup.update(x[60:], new_ids=np.arange(60, 90))
    user_ef = kwargs.get("ef", kwargs.get("index_params", {}).get("ef"))
    assert used and all(ef == (user_ef if user_ef is not None else search_ef(None, k)) for k, ef in used), used


def test_a_bad_ef_is_refused_before_any_work():
    x, _ = duplicate_groups()
    with pytest.raises(ValueError, match="ef must be positive"):
        find_duplicates(x, ef=0, progress=False)
    with pytest.raises(TypeError, match="index_params\\['ef'\\] must be an integer"):
        Deduplicator(index_params={"ef": 1.5}, progress=False).fit(x)


# -- errors and old files -------------------------------------------------------------


def test_unfitted_objects_raise_not_fitted_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        Deduplicator().groups_
    with pytest.raises(NotFittedError, match="not fitted"):
        LexicalModel().transform(["a"])


def test_a_version_1_state_still_loads(tmp_path):
    x, _ = duplicate_groups()
    dedup = Deduplicator(threshold=0.95, progress=False).fit(x[:40], ids=np.arange(40) * 3)
    dedup.save(tmp_path / "state")
    folder = next((tmp_path / "state").glob("v*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    # the manifest as format version 1 wrote it: kind, format_version, files
    old = {"kind": manifest["kind"], "format_version": 1, "files": manifest["checksums"]}
    (folder / "manifest.json").write_text(json.dumps(old, indent=2, sort_keys=True))
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    (tmp_path / "state" / "CURRENT").write_text(f"{folder.name} {digest}\n")
    back = Deduplicator.load(tmp_path / "state")
    assert back.groups_.equals(dedup.groups_) and back.pairs().equals(dedup.pairs())
    changes = back.update(x[40:], new_ids=np.arange(40, 60) * 3)
    assert changes.column("id").equals(dedup.update(x[40:], new_ids=np.arange(40, 60) * 3).column("id"))


def test_groups_tables_name_the_id_column_alike():
    x, _ = duplicate_groups()
    _, groups = find_duplicates(x, threshold=0.95, include_singletons=True, progress=False)
    dedup = Deduplicator(threshold=0.95, progress=False).fit(x)
    assert groups.column_names[0] == dedup.groups_.column_names[0] == "id"
    assert dedup.groups_.column("item_id").equals(dedup.groups_.column("id"))  # the deprecated copy
    assert pa.types.is_integer(dedup.groups_.schema.field("id").type)


@pytest.mark.slow  # Ray Data starts its own workers
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own, as in test_ray.py
def test_ray_engine_matches_one_process(tmp_path, sample, local_ray):
    from simsearch._tables import write_table

    offers = sample.slice(0, 60)
    write_table(offers, tmp_path / "offers.parquet")
    local = find_duplicates(tmp_path / "offers.parquet", progress=False)
    ray = find_duplicates(tmp_path / "offers.parquet", engine="ray", n_shards=2, progress=False)
    assert ray.pairs.equals(local.pairs) and ray.groups.equals(local.groups)
