"""The review loop: pair selection, weighted recalibration, intervals, labels files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from simsearch import Deduplicator
from simsearch.applications import best_f1_threshold
from simsearch.applications.review import calibrate, read_labels, sample_review_pairs
from simsearch._tables import MissingColumnError


def population(m: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pair scores and true labels: most pairs low, duplicates rising across 0.6."""
    rng = np.random.default_rng(seed)
    scores = np.clip(rng.beta(2, 5, size=m) * 1.4 - 0.1, -0.2, 1.2)
    p = 1 / (1 + np.exp(-(scores - 0.6) / 0.05))
    return scores, (rng.uniform(size=m) < p).astype(np.int8)


def test_selection_weights_add_up_and_favour_the_threshold():
    scores, _ = population()
    picked, stratum, weight = sample_review_pairs(scores, 0.6, 200, seed=1)
    assert len(picked) == 200 and len(np.unique(picked)) == 200
    assert np.all(np.diff(scores[picked]) <= 0)  # best first
    # Each stratum's weights stand for all of its candidate pairs.
    assert weight.sum() == pytest.approx(len(scores))
    near = np.abs(scores - 0.6) < 0.1
    assert near[picked].mean() > 2 * near.mean()
    # And the whole range is seen: the lowest and highest strata are sampled.
    assert scores[picked].min() < 0.1 and scores[picked].max() > 1.0


def test_few_labels_and_few_pairs():
    scores = np.array([0.1, 0.5, 0.55, 0.9])
    picked, _, weight = sample_review_pairs(scores, 0.5, 10)
    assert sorted(picked.tolist()) == [0, 1, 2, 3] and np.all(weight == 1)
    picked, _, _ = sample_review_pairs(np.linspace(0, 1, 1000), 0.5, 3)
    assert len(picked) == 3
    with pytest.raises(ValueError, match="no candidate pairs"):
        sample_review_pairs(np.zeros(0), 0.5, 10)
    with pytest.raises(ValueError, match="n must be positive"):
        sample_review_pairs(scores, 0.5, 0)


def test_loop_labels_estimate_the_population_and_beat_random_labels():
    scores, labels = population()
    best = best_f1_threshold(scores, labels)  # every pair labelled: the reference

    def f1_at(t: float) -> float:
        tp = np.sum(labels[scores >= t])
        return 2 * tp / (np.sum(scores >= t) + labels.sum())

    loop_f1, random_f1, covered = [], [], 0
    for seed in range(5):
        picked, stratum, weight = sample_review_pairs(scores, 0.5, 200, seed=seed)
        cal = calibrate(scores[picked], labels[picked], weight, stratum, 0.5, seed=seed)
        loop_f1.append(f1_at(cal.threshold))
        # The interval holds the true precision at the chosen threshold.
        true_p = labels[scores >= cal.threshold].mean()
        covered += cal.precision_interval[0] <= true_p <= cal.precision_interval[1]
        rows = np.random.default_rng(seed).choice(len(scores), 200, replace=False)
        if labels[rows].any():
            r = calibrate(scores[rows], labels[rows], np.ones(200), np.zeros(200, int), 0.5, seed=seed)
            random_f1.append(f1_at(r.threshold))
        else:
            random_f1.append(0.0)
    assert np.mean(loop_f1) >= best.f1 - 0.02
    assert np.mean(loop_f1) > np.mean(random_f1)
    assert covered >= 4


def test_target_precision_takes_the_lowest_threshold_that_reaches_it():
    scores, labels = population(3000, seed=2)
    cal = calibrate(scores, labels, np.ones(len(scores)), np.zeros(len(scores), int), 0.5, target_precision=0.9)
    assert cal.method == "target_precision" and cal.precision >= 0.9
    # Brute force over every cut: no lower threshold reaches 0.9.
    cuts = np.unique(scores)
    ok = [t for t in cuts if labels[scores >= t].mean() >= 0.9]
    assert cal.threshold <= min(ok) and cal.threshold > max(cuts[cuts < min(ok)])
    with pytest.raises(ValueError, match="no threshold reaches precision 0.9"):
        calibrate(np.array([0.9, 0.9]), np.array([0, 1]), np.ones(2), np.zeros(2, int), 0.5, target_precision=0.9)


def test_read_labels_checks(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("id_a,id_b,label,weight,stratum\n1,2,1,3.5,4\n3,4,,1,0\n5,6,0,2,1\n")
    table = read_labels(good)
    assert table.column("label").to_pylist() == [1, 0]  # the blank row is not reviewed yet
    assert table.column("weight").to_pylist() == [3.5, 2.0]
    (tmp_path / "nolabel.csv").write_text("id_a,id_b\n1,2\n")
    with pytest.raises(MissingColumnError, match="label"):
        read_labels(tmp_path / "nolabel.csv")
    (tmp_path / "yes.csv").write_text("id_a,id_b,label\n1,2,1\n3,4,yes\n")
    with pytest.raises(ValueError, match="row 2: label must be 0 or 1, got 'yes'"):
        read_labels(tmp_path / "yes.csv")
    (tmp_path / "two.csv").write_text("id_a,id_b,label\n1,2,2\n")
    with pytest.raises(ValueError, match="0 or 1"):
        read_labels(tmp_path / "two.csv")
    (tmp_path / "blank.csv").write_text("id_a,id_b,label\n1,2,\n")
    with pytest.raises(ValueError, match="no labelled row"):
        read_labels(tmp_path / "blank.csv")


def in_plane(plane: int, degrees: list[float], planes: int = 3) -> np.ndarray:
    """Unit vectors at the given angles in plane ``plane`` (dims 2p, 2p+1): cos of their difference."""
    t = np.radians(np.asarray(degrees, dtype=np.float64))
    x = np.zeros((len(t), 2 * planes), dtype=np.float32)
    x[:, 2 * plane], x[:, 2 * plane + 1] = np.cos(t), np.sin(t)
    return x


def small_state() -> Deduplicator:
    # Pairs 1-2 and 3-4 are 10 degrees apart (cos 0.985), 5-6 are 20 apart (cos 0.940).
    x = np.vstack([in_plane(0, [0, 10]), in_plane(1, [0, 10]), in_plane(2, [0, 20])])
    return Deduplicator(threshold=0.9, k=5, progress=False).fit(x, ids=[1, 2, 3, 4, 5, 6])


def test_recalibration_is_stored_and_used_by_the_next_update(tmp_path):
    dedup = small_state()
    assert dedup.groups_.column("group_id").to_pylist() == [0, 0, 1, 1, 2, 2]
    pairs = dedup.review_pairs(10)
    assert pairs.column_names == ["id_a", "id_b", "score", "stratum", "weight", "label"]
    # A reviewer says 5 and 6 (20 degrees apart) are different products.
    truth = {(1, 2): 1, (3, 4): 1, (5, 6): 0}
    y = [truth.get((a, b), 0) for a, b in zip(pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist())]
    labelled = pairs.set_column(pairs.column_names.index("label"), "label", pa.array(y))
    cal = dedup.calibrate(labelled)
    assert 0.94 < cal.threshold < 0.985 and dedup.threshold_ == cal.threshold
    dedup.save(tmp_path / "state")
    back = Deduplicator.load(tmp_path / "state")
    assert back.calibration_ == cal
    changes = back.update()
    assert changes.select(["id", "old_group", "new_group", "event"]).to_pylist() == [
        {"id": 6, "old_group": 2, "new_group": 3, "event": "split"},
    ]


def test_bad_labels_change_nothing(tmp_path):
    dedup = small_state()
    dedup.calibrate(pa.table({"id_a": [1, 5], "id_b": [2, 6], "label": [1, 0]}))
    before = dedup.calibration_
    bad = [
        (pa.table({"id_a": [1], "id_b": [2]}), MissingColumnError, "label"),
        (pa.table({"id_a": [1, 5], "id_b": [2, 6], "label": ["1", "maybe"]}), ValueError, "0 or 1"),
        (pa.table({"id_a": [1, 99], "id_b": [2, 6], "label": [1, 0]}), ValueError, "id 99"),
        (pa.table({"id_a": [5], "id_b": [6], "label": [0]}), ValueError, "no positive"),
        (pa.table({"id_a": ["x"], "id_b": ["y"], "label": [1]}), ValueError, "int64"),
    ]
    for table, error, match in bad:
        with pytest.raises(error, match=match):
            dedup.calibrate(table)
        assert dedup.calibration_ is before
