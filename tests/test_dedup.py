"""find_duplicates, choose_threshold, the lexical rules and group refinement.

References: brute-force per-item F1, scipy's connected components, an
exhaustive threshold search; real titles from the bundled PriceRunner sample
and (when ``../shared/data`` is there) the Shopee dev split.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from simsearch import find_duplicates
from simsearch._tables import MissingColumnError
from simsearch.applications import (
    best_f1_threshold,
    choose_threshold,
    extract_facts,
    mean_group_f1,
    pairwise_precision_recall,
)
from simsearch.applications.grouping import canonical_members, group_pairs
from simsearch.applications.lexical import code_relation, measures_conflict

from _helpers import data_rows, duplicate_groups


# -- metrics ----------------------------------------------------------------


def brute_mean_f1(labels, groups) -> float:
    f = []
    for i in range(len(labels)):
        t = {j for j in range(len(labels)) if labels[j] == labels[i]}
        p = {j for j in range(len(labels)) if groups[j] == groups[i]}
        f.append(2 * len(t & p) / (len(t) + len(p)))
    return float(np.mean(f))


def test_mean_group_f1_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, 60)
    groups = rng.integers(0, 11, 60)
    assert mean_group_f1(labels, groups) == pytest.approx(brute_mean_f1(labels, groups))
    assert mean_group_f1(labels, labels) == 1.0


def test_pairwise_precision_recall_counts_pairs():
    p, r = pairwise_precision_recall([0, 0, 0, 1], [5, 5, 6, 6])
    # predicted pairs: (0,1) right, (2,3) wrong; true pairs (0,1),(0,2),(1,2)
    assert (p, r) == (0.5, pytest.approx(1 / 3))


def test_best_f1_threshold_matches_exhaustive_search():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    scores = np.round(labels * 0.3 + rng.random(200), 2)  # ties on purpose
    cal = best_f1_threshold(scores, labels)
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        best = max(best, 2 * tp / (pred.sum() + labels.sum()))
    assert cal.f1 == pytest.approx(best)
    pred = scores >= cal.threshold
    tp = np.sum(pred & (labels == 1))
    assert cal.precision == pytest.approx(tp / pred.sum())
    assert cal.recall == pytest.approx(tp / labels.sum())


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [([], [], "no labelled"), ([0.5, 0.2], [0, 0], "no positive"), ([0.5], [2], "0 or 1"), ([np.nan], [1], "NaN")],
)
def test_best_f1_threshold_rejects_bad_labels(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        best_f1_threshold(np.array(scores, dtype=float), np.array(labels))


# -- lexical rules ------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "codes", "measures"),
    [
        ('Sony KDL-40V4100 40" LCD TV', {"kdl40v4100"}, {("inch", "40")}),
        ("apple iphone 8 plus 64 gb spacegrau", set(), {("gb", "64")}),
        ("intel core i7-8700k 3.7ghz", {"i78700k"}, {("ghz", "3.7")}),
        ("bosch serie 4 wan28281gb 8kg 1400 spin", {"wan28281gb", "1400"}, {("kg", "8")}),
        ("\\xf0\\x9f\\x87 Stiker Bintang R34 100PCS", {"r34"}, {("pcs", "100")}),
        ("", set(), set()),
    ],
)
def test_extract_facts_on_tricky_titles(title, codes, measures):
    facts = extract_facts(title)
    assert set(facts.codes) == codes
    assert set(facts.measures) == measures


@pytest.mark.parametrize(
    ("a", "b", "relation"),
    [
        ("samsung ue55mu6100", "Samsung UE-55MU6100 55 inch", 1),  # same code, other spelling
        ("samsung ue55mu6100", "samsung ue55mu6120", -1),  # variants of one line
        ("severin mw7873", "severin mw8060", -1),  # equal-length digit runs
        ("severin mw 7873 microwave", "severin mw 7874 microwave", -1),
        ("speaker j006b", "speaker j006", 1),  # shared digit run: a suffix is no rival
        ("canon eos 80d", "nikon d7500 body", 0),  # different lines: nothing to say
        ("plain title", "mw 7873", 0),  # one side states no code
    ],
)
def test_code_relation(a, b, relation):
    assert code_relation(extract_facts(a), extract_facts(b)) == relation


def test_measures_conflict_only_on_shared_units():
    assert measures_conflict(extract_facts("iphone 64gb"), extract_facts("iphone 128 gb"))
    assert not measures_conflict(extract_facts("iphone 64gb 5.5 inch"), extract_facts("iphone 64 gb"))
    assert not measures_conflict(extract_facts("washer 8kg"), extract_facts("washer 1400 rpm"))


# -- grouping ---------------------------------------------------------------


def test_group_pairs_without_refine_is_connected_components():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 50, 40), rng.integers(0, 50, 40)
    labels = group_pairs(50, a, b, rng.random(40), refine=False)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, comp = connected_components(coo_matrix((np.ones(40), (a, b)), shape=(50, 50)), directed=False)
    for i, j in itertools.combinations(range(50), 2):
        assert (labels[i] == labels[j]) == (comp[i] == comp[j])
    assert all(labels[i] == min(np.flatnonzero(labels == labels[i])) for i in range(50))


def test_refinement_breaks_a_chain():
    # 0-1-2-3 in a line: neighbours alike, ends unlike. Single linkage chains all four.
    x = np.array([[np.cos(t), np.sin(t)] for t in (0.0, 0.4, 0.8, 1.2)], dtype=np.float32)
    sims = x @ x.T
    a, b = np.array([0, 1, 2]), np.array([1, 2, 3])
    s = sims[a, b]
    chained = group_pairs(4, a, b, s, refine=False)
    assert len(set(chained)) == 1
    refined = group_pairs(4, a, b, s, cross_score=lambda p, q: sims[np.ix_(p, q)], link_threshold=0.9)
    assert len(set(refined)) == 2


def test_group_size_cap():
    n = 10
    a, b = np.zeros(n - 1, dtype=int), np.arange(1, n)
    labels = group_pairs(n, a, b, np.ones(n - 1), cross_score=lambda p, q: np.ones((len(p), len(q))), link_threshold=0.5, max_group_size=4)
    assert np.bincount(labels).max() == 4


def test_canonical_member_is_the_medoid():
    x = np.array([[1, 0], [0.8, 0.6], [0.96, 0.28]], dtype=np.float32)
    canon = canonical_members(np.zeros(3, dtype=np.int64), lambda p, q: x[p] @ x[q].T)
    assert canon == {0: 2}


# -- find_duplicates on vectors ---------------------------------------------


def test_vectors_recover_clusters():
    x, truth = duplicate_groups()
    pairs, groups = find_duplicates(x, threshold=0.95, k=5, progress=False)
    assert pairs.column_names[:3] == ["id_a", "id_b", "score"]
    assert groups.num_rows == len(x)
    assert pairs.column("id_a").type == pa.int64()
    ids = groups.column("id").to_numpy()
    assert mean_group_f1(truth[ids], groups.column("group_id").to_numpy()) == 1.0
    # every group has one canonical member, and it belongs to the group
    for gid in set(groups.column("group_id").to_pylist()):
        g = groups.filter(pa.compute.equal(groups.column("group_id"), gid))
        assert sum(g.column("is_canonical").to_pylist()) == 1
        assert g.column("canonical_id")[0].as_py() in g.column("id").to_pylist()
    s = pairs.column("score").to_numpy()
    assert np.all(np.diff(s) <= 0) and np.all(s >= 0.95)


def test_scores_are_exact_cosines():
    x, _ = duplicate_groups(5, 2)
    pairs, _ = find_duplicates(x, threshold=0.5, k=3, progress=False)
    a, b = pairs.column("id_a").to_numpy(), pairs.column("id_b").to_numpy()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(pairs.column("score").to_numpy(), np.einsum("ij,ij->i", u[a], u[b]), rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_batches_do_not_change_the_result(batch_size):
    x, _ = duplicate_groups(15, 4, seed=4)
    ref = find_duplicates(x, threshold=0.9, k=6, progress=False)
    got = find_duplicates(x, threshold=0.9, k=6, batch_size=batch_size, progress=False)
    assert got.pairs.equals(ref.pairs) and got.groups.equals(ref.groups)


def test_given_ids_and_singletons():
    x, _ = duplicate_groups(3, 2)
    ids = [f"item-{i}" for i in range(len(x))]
    pairs, groups = find_duplicates(np.vstack([x, [np.ones(32, dtype=np.float32)]]), threshold=0.95, k=3, ids=ids + ["alone"], include_singletons=True, progress=False)
    assert set(pairs.column("id_a").to_pylist()) <= set(ids)
    alone = groups.filter(pa.compute.equal(groups.column("id"), "alone")).to_pylist()
    assert alone[0]["group_size"] == 1 and alone[0]["is_canonical"]


def test_one_vector_gives_no_pairs():
    pairs, groups = find_duplicates(np.ones((1, 4), dtype=np.float32), progress=False)
    assert pairs.num_rows == 0 and groups.num_rows == 0


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        (np.ones(8, dtype=np.float32), {}, ValueError, "2-D"),
        (np.zeros((0, 8), dtype=np.float32), {}, ValueError, "empty"),
        (np.array([[1.0, np.nan]], dtype=np.float32), {}, ValueError, "NaN"),
        (np.ones((3, 4), dtype=np.int64), {}, TypeError, "dtype"),
        (np.ones((3, 4), dtype=np.float32), {"ids": [1, 2]}, ValueError, "ids has 2"),
        (np.ones((3, 4), dtype=np.float32), {"k": 0}, ValueError, "k must"),
        (np.ones((3, 4), dtype=np.float32), {"threshold": "high"}, TypeError, "threshold"),
        (np.ones((3, 4), dtype=np.float32), {"max_group_size": 1}, ValueError, "max_group_size"),
    ],
)
def test_bad_vectors(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        find_duplicates(data, progress=False, **kwargs)


# -- find_duplicates on tables ------------------------------------------------


def test_bad_tables(tmp_path, encoder):
    with pytest.raises(MissingColumnError, match="no column 'title'"):
        find_duplicates({"id": [1], "name": ["x"]}, encoder=encoder, progress=False)
    with pytest.raises(ValueError, match="empty"):
        find_duplicates(pa.table({"id": pa.array([], pa.int64()), "title": pa.array([], pa.string())}), encoder=encoder, progress=False)
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_duplicates(tmp_path / "missing.parquet", encoder=encoder, progress=False)
    with pytest.raises(ValueError, match="repeated ids"):
        find_duplicates({"id": [1, 1], "title": ["a", "b"]}, encoder=encoder, progress=False)


def test_demo_sample_dedup(sample, encoder):
    pairs, groups = find_duplicates(sample, encoder=encoder, include_singletons=True, progress=False)
    truth = dict(zip(sample.column("id").to_pylist(), sample.column("cluster_id").to_pylist()))
    ids = groups.column("id").to_pylist()
    f1 = mean_group_f1([truth[i] for i in ids], groups.column("group_id").to_pylist())
    _, plain = find_duplicates(sample, threshold=0.8, encoder=encoder, lexical=False, include_singletons=True, progress=False)
    f1_plain = mean_group_f1([truth[i] for i in plain.column("id").to_pylist()], plain.column("group_id").to_pylist())
    assert f1 >= 0.8
    assert f1 > f1_plain  # the lexical evidence earns its keep
    # Parquet and CSV paths give the same answer as the in-memory table.
    assert pairs.num_rows > 0
    scores = pairs.column("score").to_numpy()
    assert scores.min() >= 0.15 and scores.max() <= 1.0  # probabilities, at the default threshold
    # Issue 14: the Electriq TV is not grouped with the Cello ones any more.
    title = dict(zip(sample.column("id").to_pylist(), sample.column("title").to_pylist()))
    group = dict(zip(ids, groups.column("group_id").to_pylist()))
    electriq = {group[i] for i in ids if title[i].startswith("electriq")}
    cello = {group[i] for i in ids if title[i].startswith("cello")}
    assert electriq and cello and not electriq & cello


def test_groups_never_hold_conflicting_attributes(sample, encoder):
    from simsearch.applications.lexical import extract_facts, facts_conflict

    # A low threshold invites chains; the conflicts still split them.
    _, groups = find_duplicates(sample, threshold=0.05, encoder=encoder, progress=False)
    title = dict(zip(sample.column("id").to_pylist(), sample.column("title").to_pylist()))
    members: dict[int, list] = {}
    for i, g in zip(groups.column("id").to_pylist(), groups.column("group_id").to_pylist()):
        members.setdefault(g, []).append(extract_facts(title[i]))
    for facts in members.values():
        assert not any(facts_conflict(a, b) for a, b in itertools.combinations(facts, 2))


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        ("electriq 50 4k ultra hd led android smart tv", "cello c55ansmt 55 inch 4k android smart tv", True),
        ("apple iphone 8 64gb", "iphone 8 64 gb space grey", False),  # a brand named, not opened with
        ("intel core i5 3.10ghz", "intel core i5 3.1 ghz", False),  # one value, two spellings
        ("samsung galaxy 64gb", "samsung galaxy 128 gb", True),
        ("sony ue55mu6100", "sony ue55mu6120", True),
        ("[cod] masker", "masker kain", False),  # no brand-like first word
    ],
)
def test_facts_conflict(a, b, conflict):
    from simsearch.applications.lexical import extract_facts, facts_conflict

    assert facts_conflict(extract_facts(a), extract_facts(b)) is conflict


def test_pair_calibration_round_trip_and_fit():
    from simsearch.applications.dedup_calibration import PairCalibration, default_calibration
    from simsearch.applications.metrics import expected_calibration_error

    cal = default_calibration()
    assert cal.slope > 0
    for p in (0.05, 0.15, 0.5, 0.9):
        assert float(cal.apply(cal.raw(p))) == pytest.approx(p, abs=1e-5)
    rng = np.random.default_rng(0)
    raw = rng.uniform(-0.5, 1.2, 20_000)
    truth = PairCalibration(6.0, -3.0)
    labels = rng.random(len(raw)) < truth.apply(raw)
    fitted = PairCalibration.fit(raw, labels)
    assert fitted.slope == pytest.approx(6.0, rel=0.1) and fitted.intercept == pytest.approx(-3.0, rel=0.1)
    assert expected_calibration_error(fitted.apply(raw), labels) < 0.02
    assert PairCalibration.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ValueError, match="both classes"):
        PairCalibration.fit([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="slope"):
        PairCalibration(-1.0, 0.0)


def test_table_from_files_equals_in_memory(sample, encoder, tmp_path):
    import pyarrow.parquet as pq

    small = sample.slice(0, 80)
    pq.write_table(small, tmp_path / "s.parquet")
    ref = find_duplicates(small, encoder=encoder, progress=False)
    got = find_duplicates(tmp_path / "s.parquet", encoder=encoder, progress=False)
    assert got.pairs.equals(ref.pairs)


def shopee_slice(n_groups: int = 120):
    rows = data_rows("shopee_subset/dev.csv")
    keep = sorted({r["label_group"] for r in rows})[:n_groups]
    rows = [r for r in rows if r["label_group"] in set(keep)]
    return pa.table({"id": [r["posting_id"] for r in rows], "title": [r["title"] for r in rows], "label": [int(r["label_group"]) for r in rows]})


def test_choose_threshold_on_shopee_slice(encoder):
    table = shopee_slice()
    choice = choose_threshold(table, None, label_col="label", encoder=encoder, progress=False)
    assert 0.05 <= choice.threshold <= 0.95  # a probability
    _, groups = find_duplicates(table, threshold=choice.threshold, encoder=encoder, include_singletons=True, progress=False)
    truth = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
    f1 = mean_group_f1([truth[i] for i in groups.column("id").to_pylist()], groups.column("group_id").to_pylist())
    assert f1 == pytest.approx(choice.mean_f1)
    assert f1 >= 0.8
    embedding_only = choose_threshold(table, None, label_col="label", encoder=encoder, lexical=False, progress=False, thresholds=np.arange(0.5, 0.96, 0.05))
    # On Shopee the calibrated lexical score with the conflict rule is about level with the embedding
    # alone (measured 0.894 vs 0.896 on this slice; the rule pays off on PriceRunner, RESULTS.md)
    assert choice.mean_f1 >= embedding_only.mean_f1 - 0.01
