"""group_pairs: the groups depend on the pairs, not on the order the items came in."""

from __future__ import annotations

import numpy as np

from simsearch.applications.grouping import group_pairs


def partition(labels: np.ndarray, ids: np.ndarray) -> set[frozenset[int]]:
    """The groups as sets of ids."""
    out: dict[int, set[int]] = {}
    for label, item in zip(labels.tolist(), ids.tolist()):
        out.setdefault(label, set()).add(item)
    return {frozenset(g) for g in out.values()}


def tied_problem(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of items 0..n-1 whose scores tie in blocks, and the full score matrix (by id)."""
    rng = np.random.default_rng(seed)
    sims = np.round(rng.uniform(0.5, 1.0, (n, n)), 1)  # few distinct values: many ties
    sims = np.triu(sims, 1)
    sims = sims + sims.T + np.eye(n)
    a, b = np.triu_indices(n, 1)
    keep = sims[a, b] >= 0.8
    return a[keep], b[keep], sims[a[keep], b[keep]], sims


def grouped(order: np.ndarray, tie_key: bool) -> set[frozenset[int]]:
    """Group the tied problem with items renumbered: row r holds item order[r]."""
    a, b, s, sims = tied_problem()
    row_of = np.argsort(order)
    ra, rb = np.minimum(row_of[a], row_of[b]), np.maximum(row_of[a], row_of[b])
    by_rows = np.lexsort((rb, ra))  # a join lists its pairs in row order
    ra, rb, s = ra[by_rows], rb[by_rows], s[by_rows]
    labels = group_pairs(
        len(order), ra, rb, s,
        cross_score=lambda p, q: sims[np.ix_(order[p], order[q])],
        link_threshold=0.8, max_group_size=4,
        tie_key=order if tie_key else None,  # the item's id: its rank does not depend on the rows
    )  # fmt: skip
    return partition(labels, order)


def test_tie_key_makes_groups_independent_of_the_row_order():
    rng = np.random.default_rng(1)
    orders = [np.arange(30)] + [rng.permutation(30) for _ in range(8)]
    with_key = [grouped(o, True) for o in orders]
    assert all(g == with_key[0] for g in with_key)
    assert max(len(g) for g in with_key[0]) > 1
    # Without the key, ties follow the input order and the groups move with it.
    without = [grouped(o, False) for o in orders]
    assert any(g != without[0] for g in without)
