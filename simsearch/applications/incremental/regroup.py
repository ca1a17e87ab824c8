"""How an update regroups the rows it touches, and how group ids follow the groups.

- :func:`regroup`: the region an update touches (:func:`replay_region`) is
  regrouped from scratch by the strongest-first, average-linkage rule of
  :func:`~simsearch.applications.grouping.group_pairs`, the rule a full run
  applies to everything; the rest keeps its groups. A new threshold
  regroups everything.
- :func:`cut_large_groups`: a group over the size cap is cut at its weakest
  bridge, the weakest edge of its maximum spanning tree.
- :func:`assign_ids`: each old id goes, oldest first, to the cluster holding
  most of its members if that cluster has no id yet; other clusters get fresh
  ids. It also lists the change events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simsearch.applications.grouping import (
    GroupLinkage,
    connected_components,
    group_pairs,
)

__all__ = ["REPLAY_HOPS", "CrossScorer", "assign_ids", "cut_large_groups", "regroup", "replay_region"]

#: How far from a new row an update regroups: the groups of the rows paired
#: (at or above the threshold) with it this many steps out (see :func:`replay_region`).
REPLAY_HOPS = 1


def regroup(
    linkage: GroupLinkage,
    alive: np.ndarray,
    old_group: np.ndarray,
    edges: tuple[np.ndarray, np.ndarray, np.ndarray],
    dirty: np.ndarray,
    threshold: float,
    grouped_at: float,
    next_group: int,
    cap: int | None,
    tie_key: np.ndarray | None = None,
    hops: int = REPLAY_HOPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels of every row and the mask of rows whose group may have changed.

    With an order-free ``tie_key`` the groups of a full run depend on the
    pairs alone, and :func:`group_pairs` only merges along pairs at or above
    the threshold, so what a new pair can change lies near it. Exact equality
    with a full run would regroup every connected component holding a dirty
    row, but at low thresholds one component spans most of a catalog. An
    update therefore regroups, from scratch, the groups of the dirty rows (new
    rows, rows whose pairs or group changed) and of the rows within ``hops``
    pairs of a new row, and keeps every other group: a full run's result
    wherever a change does not travel further than that.

    Parameters
    ----------
    linkage : GroupLinkage
        Mean cross score and conflict of two groups (remembered across
        updates: a replayed merge is not scored again).
    alive : ndarray of shape (n,), bool
        Live rows after the update.
    old_group : ndarray of shape (n,), int64
        Group id of each row before the update; -1 for new and removed rows.
    edges : tuple of ndarray
        ``(rows_a, rows_b, scores)`` of every live candidate pair.
    dirty : ndarray of shape (n,), bool
        Rows whose region must be regrouped: new rows, live ends of pairs
        that were added or dropped, members of groups that lost members.
    threshold : float
        The threshold in use; ``grouped_at`` is the one the groups were made
        at (a change regroups everything).
    next_group : int
        The next unused group id.
    cap : int or None
        ``max_group_size``.
    tie_key : ndarray of shape (n,), int, optional
        Order of pairs of equal score (see :func:`group_pairs`).
    hops : int, default :data:`REPLAY_HOPS`
        How far the regrouped region reaches from a new row (see
        :func:`replay_region`); from other dirty rows, only their groups.

    Returns
    -------
    cluster : ndarray of shape (n,), int64
        Cluster label per row (not yet group ids; see :func:`assign_ids`).
    affected : ndarray of shape (n,), bool
    """
    n = len(alive)
    a, b, s = edges
    hit = s >= threshold
    a, b, s = a[hit], b[hit], s[hit]
    if threshold != grouped_at:
        # A new threshold: regroup everything from the stored pairs.
        cluster = group_pairs(
            n, a, b, s, cross_score=linkage, link_threshold=threshold, max_group_size=cap,
            conflict=linkage if linkage.conflict_of is not None else None, tie_key=tie_key,
        )  # fmt: skip
        affected = alive.copy()
    else:
        cluster = np.where(old_group >= 0, old_group, next_group + np.arange(n))
        is_new = old_group < 0
        region = np.union1d(replay_region(cluster, alive, dirty & is_new, a, b, hops), replay_region(cluster, alive, dirty, a, b, 0))
        affected = np.zeros(n, dtype=bool)
        if region.size:
            local = np.full(n, -1, dtype=np.int64)
            local[region] = np.arange(region.size)
            inside = (local[a] >= 0) & (local[b] >= 0)
            local_linkage = linkage.on(region)
            labels = group_pairs(
                region.size,
                local[a[inside]],
                local[b[inside]],
                s[inside],
                cross_score=local_linkage,
                link_threshold=threshold,
                max_group_size=cap,
                conflict=local_linkage if linkage.conflict_of is not None else None,
                tie_key=None if tie_key is None else tie_key[region],
            )
            cluster[region] = next_group + n + region[labels]
            affected[region] = True
    if cap is not None:
        affected |= cut_large_groups(cluster, alive, a, b, s, cap)
    return cluster, affected & alive


def replay_region(
    cluster: np.ndarray, alive: np.ndarray, dirty: np.ndarray, a: np.ndarray, b: np.ndarray, hops: int
) -> np.ndarray:
    """Live rows of the groups within reach of a dirty row, sorted.

    The rows paired with a dirty row (``a``, ``b``: the pairs at or above the
    threshold), ``hops`` steps out, and every member of their groups and of
    the dirty rows' groups.
    """
    inside = alive & dirty
    for _ in range(hops):
        reach = inside[a] | inside[b]
        inside[a[reach]] = True
        inside[b[reach]] = True
        inside &= alive
    return np.flatnonzero(alive & np.isin(cluster, np.unique(cluster[inside])))


def cut_large_groups(
    cluster: np.ndarray, alive: np.ndarray, a: np.ndarray, b: np.ndarray, s: np.ndarray, cap: int
) -> np.ndarray:
    """Cut groups larger than ``cap`` at their weakest bridge until none is; returns the rows touched."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    touched = np.zeros(len(cluster), dtype=bool)
    fresh = int(cluster.max()) + 1 if len(cluster) else 0
    values, counts = np.unique(cluster[alive], return_counts=True)
    todo = [np.flatnonzero(alive & (cluster == v)) for v in values[counts > cap]]
    while todo:
        members = todo.pop()
        touched[members] = True
        local = np.full(len(cluster), -1, dtype=np.int64)
        local[members] = np.arange(len(members))
        inside = (local[a] >= 0) & (local[b] >= 0)
        la, lb, ls = local[a[inside]], local[b[inside]], s[inside].astype(np.float64)
        m = len(members)
        # Maximum spanning tree by a minimum one over (top - score) > 0.
        top = (ls.max() if len(ls) else 0.0) + 1.0
        tree = minimum_spanning_tree(coo_matrix((top - ls, (la, lb)), shape=(m, m))).tocoo()
        if tree.nnz:
            weakest = int(np.argmax(tree.data))  # the largest (top - score): the weakest edge
            keep = np.ones(tree.nnz, dtype=bool)
            keep[weakest] = False
            part = connected_components(m, tree.row[keep], tree.col[keep])
        else:
            part = np.arange(m) % 2  # no pair at all: cut anywhere
        for p in np.unique(part):
            rows = members[part == p]
            cluster[rows] = fresh
            fresh += 1
            if len(rows) > cap:
                todo.append(rows)
    return touched


def assign_ids(
    cluster: np.ndarray, affected: np.ndarray, old_group: np.ndarray, prev_group: np.ndarray, next_group: int
) -> tuple[np.ndarray, int, tuple[list[int], list[Any], list[Any], list[str]]]:
    """Give the affected clusters group ids, oldest id first, and list the changes.

    Each old id among the affected rows goes to the cluster holding most of its
    members (ties: the cluster of its first row) unless that cluster already
    has an id; clusters left without one get fresh ids in row order.
    """
    n = len(cluster)
    group = np.r_[prev_group, np.full(n - len(prev_group), -1, dtype=np.int64)]
    rows = np.flatnonzero(affected)
    if rows.size == 0:
        return group, next_group, ([], [], [], [])
    clusters = cluster[rows]
    olds = old_group[rows]
    given: dict[int, int] = {}  # cluster -> id
    majority: dict[int, int] = {}  # old id -> its majority cluster
    has_old = olds >= 0
    if has_old.any():
        pair = np.stack([olds[has_old], clusters[has_old]], axis=1)
        uniq, first, counts = np.unique(pair, axis=0, return_index=True, return_counts=True)
        # Per old id: most members first, then the cluster of its earliest row.
        order = np.lexsort((rows[has_old][first], -counts, uniq[:, 0]))
        for g, c in uniq[order].tolist():
            if g in majority:
                continue
            majority[g] = c
            if c not in given:
                given[c] = g
    assigned = set(given.values())
    # Fresh ids for the rest, in order of each cluster's first row.
    _, first_rows = np.unique(clusters, return_index=True)
    for i in np.sort(first_rows):
        c = int(clusters[i])
        if c not in given:
            given[c] = next_group
            next_group += 1
    has_old_cluster = set(clusters[has_old].tolist())
    out_rows, out_old, out_new, out_event = [], [], [], []
    for r, c, g in zip(rows.tolist(), clusters.tolist(), olds.tolist()):
        gid = given[c]
        group[r] = gid
        if g < 0:
            out_rows.append(r)
            out_old.append(None)
            out_new.append(gid)
            out_event.append("joined" if c in has_old_cluster else "new_group")
        elif gid != g:
            out_rows.append(r)
            out_old.append(g)
            out_new.append(gid)
            out_event.append("merged" if g not in assigned and majority.get(g) == c else "split")
    return group, next_group, (out_rows, out_old, out_new, out_event)


class CrossScorer:
    """Scores of every pair across two row lists, as ``Items.cross_scores`` gives them, fast for small lists.

    Regrouping asks for many small blocks (a few rows against a few), where
    slicing sparse matrices costs more than the arithmetic: those blocks are
    scored from each row's n-grams held in a dict; larger blocks go through
    ``Items.cross_scores``.

    Parameters
    ----------
    items : Items
    scoring : PairScoring
    rules : dict
        ``(row_a, row_b) -> rule adjustment``, filled and reused.
    calibration : PairCalibration or None
        Maps raw scores to probabilities.
    """

    #: Blocks of at most this many pairs are scored from the dicts.
    SMALL = 64

    def __init__(self, items: Any, scoring: Any, rules: dict[tuple[int, int], float], calibration: Any) -> None:
        self.items, self.scoring, self.rules, self.calibration = items, scoring, rules, calibration
        self._grams: dict[int, dict[int, float]] = {}

    def _row(self, r: int) -> dict[int, float]:
        grams = self._grams.get(r)
        if grams is None:
            m = self.items.features.tfidf
            lo, hi = m.indptr[r], m.indptr[r + 1]
            grams = self._grams[r] = dict(zip(m.indices[lo:hi].tolist(), m.data[lo:hi].tolist()))
        return grams

    def __call__(self, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
        from simsearch.applications.lexical import rule_adjustment

        items = self.items
        if items.features is None or len(rows_a) * len(rows_b) > self.SMALL:
            raw = items.cross_scores(items, rows_a, rows_b, self.scoring, self.rules)
        else:
            w = self.scoring.vector_weight
            vec = items.vectors[rows_a] @ items.vectors[rows_b].T
            raw = np.empty((len(rows_a), len(rows_b)), dtype=np.float32)
            facts = items.features.facts
            for i, ra in enumerate(rows_a.tolist()):
                ga, fa = self._row(ra), facts[ra]
                rules_a = bool(fa.codes or fa.measures)
                for j, rb in enumerate(rows_b.tolist()):
                    gb = self._row(rb)
                    small, large = (ga, gb) if len(ga) <= len(gb) else (gb, ga)
                    lex = sum(v * large[c] for c, v in small.items() if c in large)
                    score = w * float(vec[i, j]) + (1.0 - w) * lex
                    if rules_a:
                        adj = self.rules.get((ra, rb))
                        if adj is None:
                            adj = self.rules[(ra, rb)] = rule_adjustment(self.scoring, fa, facts[rb])
                        score += adj
                    raw[i, j] = score
        return raw if self.calibration is None else self.calibration.apply(raw)
