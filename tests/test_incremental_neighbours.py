"""Which candidate pairs an incremental state keeps: the kNN union of a full run."""

from __future__ import annotations

import numpy as np
from _helpers import blobs, normalize

from simsearch import Deduplicator
from simsearch.applications import incremental
from simsearch.applications.incremental.neighbours import knn_union, kth_similarity


def brute_force_union(x: np.ndarray, k: int) -> set[tuple[int, int]]:
    """Pairs (a < b) with b among a's k most similar rows or a among b's."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :k]
    return {(min(a, b), max(a, b)) for a in range(len(x)) for b in top[a].tolist()}


def test_knn_union_of_all_pairs_is_the_brute_force_union():
    x = normalize(np.random.default_rng(0).standard_normal((80, 6)).astype(np.float32))
    a, b = np.triu_indices(len(x), 1)
    sim = np.einsum("ij,ij->i", x[a], x[b])
    keep = knn_union(len(x), a, b, sim, 5)
    assert set(zip(a[keep].tolist(), b[keep].tolist())) == brute_force_union(x, 5)
    kth = kth_similarity(len(x), a, b, sim, 5)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(kth, np.sort(sims, axis=1)[:, -5], rtol=1e-5)
    assert np.isneginf(kth_similarity(3, a[:1], b[:1], sim[:1], 2)).all()  # fewer partners than k


def test_updates_keep_the_pairs_of_a_full_run():
    # Dense blobs: new items enter old items' lists and push pairs out of them.
    x, _ = blobs(1200, 16, 60, seed=3, noise=0.25, dtype=np.float32)
    x = normalize(x)
    ids = np.arange(len(x))
    params = {"ef_construction": 200}
    full = Deduplicator(threshold=0.5, k=8, index_params=params, ef=200, progress=False).fit(x, ids=ids)
    dedup = Deduplicator(threshold=0.5, k=8, index_params=params, ef=200, progress=False).fit(x[:1000], ids=ids[:1000])
    for batch in np.array_split(np.arange(1000, 1200), 4):
        dedup.update(x[batch], new_ids=ids[batch])

    def pairs(d: Deduplicator) -> set[tuple[int, int]]:
        t = d.pairs(min_score=-1.0)
        return {(min(p, q), max(p, q)) for p, q in zip(t.column("id_a").to_pylist(), t.column("id_b").to_pylist())}

    floor = 0.5 - incremental.PAIR_MARGIN  # pairs below it are not kept
    truth = {(p, q) for p, q in brute_force_union(x, 8) if float(x[p] @ x[q]) >= floor}
    ours, theirs = pairs(dedup), pairs(full)
    assert len(theirs ^ truth) <= 0.03 * len(truth)  # int8 search: nearly exact here
    assert len(ours ^ theirs) <= 0.03 * len(theirs)
    assert len(ours ^ truth) <= 0.03 * len(truth)


def test_cross_scorer_equals_the_items_cross_scores(sample, encoder):
    from simsearch.applications.candidates import load_items
    from simsearch.applications.dedup_calibration import default_calibration
    from simsearch.applications.incremental.regroup import CrossScorer
    from simsearch.applications.lexical import dedup_scoring

    scoring = dedup_scoring()
    items = load_items(sample.slice(0, 300), encoder=encoder, scoring=scoring, progress=False).items
    calibration = default_calibration()
    scorer = CrossScorer(items, scoring, {}, calibration)
    rng = np.random.default_rng(0)
    for size_a, size_b in ((1, 1), (3, 5), (8, 8), (9, 8), (20, 4)):  # both sides of CrossScorer.SMALL
        a, b = rng.integers(0, len(items), size_a), rng.integers(0, len(items), size_b)
        expected = calibration.apply(items.cross_scores(items, a, b, scoring, {}))
        np.testing.assert_allclose(scorer(a, b), expected, atol=1e-5)
