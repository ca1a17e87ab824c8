"""Turn scored pairs into groups of duplicates, without chaining distinct products.

Connected components of the above-threshold pairs (single linkage) chain
products together: A looks like B, B like C, and soon thousands of fridges
share one group. :func:`group_pairs` keeps union-find's speed but merges two
groups only when they agree *as groups*:

- pairs are taken strongest first;
- two groups merge only if the **mean score over all pairs across them** (average
  linkage, scored exactly by a callback) is at least ``link_threshold``, so a
  member joins a group by being close to the group, not to one member;
- a merge that would make a group larger than ``max_group_size`` is refused;
- a merge that would put two items whose attributes conflict (model codes
  that are near misses, different capacities or sizes, different brands: see
  :func:`~simsearch.applications.lexical.facts_conflict`) in one group is
  refused, however strong the pairs that propose it: a group is split where
  its members disagree.

With ``refine=False`` the result is plain connected components (scipy), for
callers who want single linkage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Scores every pair across two member lists: ``f(rows_a, rows_b) -> (len(a), len(b))``.
CrossScore = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: Whether any pair across two member lists conflicts: ``f(rows_a, rows_b) -> bool``.
Conflict = Callable[[np.ndarray, np.ndarray], bool]


class UnionFind:
    """Disjoint sets over ``0..n-1`` with member lists, union by size.

    Parameters
    ----------
    n : int
        Number of elements.
    """

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.members: dict[int, list[int]] = {}

    def find(self, x: int) -> int:
        """Root of ``x`` (with path halving)."""
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    def group(self, root: int) -> list[int]:
        """Members of the set whose root is ``root``."""
        return self.members.get(root, [root])

    def union(self, a: int, b: int) -> int:
        """Merge the sets of roots ``a`` and ``b``; returns the new root."""
        ga, gb = self.group(a), self.group(b)
        if len(ga) < len(gb):
            a, b, ga, gb = b, a, gb, ga
        self.parent[b] = a
        merged = ga if a in self.members else list(ga)
        merged.extend(gb)
        self.members[a] = merged
        self.members.pop(b, None)
        return a

    def seed(self, initial: np.ndarray) -> None:
        """Put elements with equal ``initial`` values in one set (fresh sets only)."""
        order = np.argsort(initial, kind="stable")
        bounds = np.flatnonzero(np.r_[True, initial[order][1:] != initial[order][:-1], True])
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if stop - start > 1:
                members = order[start:stop]
                root = int(members[0])
                self.parent[members] = root
                self.members[root] = members.tolist()

    def labels(self) -> np.ndarray:
        """Root of every element, shape (n,), int64."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def group_pairs(
    n: int,
    rows_a: np.ndarray,
    rows_b: np.ndarray,
    scores: np.ndarray,
    *,
    cross_score: CrossScore | None = None,
    link_threshold: float | None = None,
    max_group_size: int | None = 100,
    refine: bool = True,
    initial: np.ndarray | None = None,
    conflict: Conflict | None = None,
    tie_key: np.ndarray | None = None,
) -> np.ndarray:
    """Group ``n`` items from scored pairs.

    Parameters
    ----------
    n : int
        Number of items (rows ``0..n-1``).
    rows_a, rows_b : ndarray of shape (m,), int
        The pairs, already filtered to those above the pair threshold.
    scores : ndarray of shape (m,), float
        Their scores; pairs are merged strongest first.
    cross_score : callable, optional
        ``f(rows_a, rows_b)`` returning the score matrix of every pair across
        two groups. Required when ``refine`` is True.
    link_threshold : float, optional
        Least mean cross score for two groups to merge; ``None`` merges
        whenever ``cross_score`` is not given.
    max_group_size : int or None, default 100
        Largest group; ``None`` for no cap.
    refine : bool, default True
        ``False`` returns connected components of the pairs (no linkage check,
        no size cap).
    initial : ndarray of shape (n,), int, optional
        Groups to start from: items with equal values begin in one group, as
        if already merged (incremental dedup seeds the existing groups this
        way); the pairs then merge groups as usual.
    conflict : callable, optional
        ``f(rows_a, rows_b)``: True if any pair across two groups must not
        share a group. Such merges are refused (refining only).
    tie_key : ndarray of shape (n,), int, optional
        Orders pairs of equal score: by the smaller, then the larger key of
        their two items (e.g. the rank of each item's id). Without it equal
        scores keep the order of the input pairs. A key that does not depend
        on where an item sits in the input makes the groups a function of
        the pairs alone, whatever order the items came in.

    Returns
    -------
    labels : ndarray of shape (n,), int64
        Group label of each item: the smallest row number in its group, so
        labels are stable for a given input and a singleton is its own label.
    """
    rows_a = np.asarray(rows_a, dtype=np.int64)
    rows_b = np.asarray(rows_b, dtype=np.int64)
    if initial is not None and len(initial) != n:
        raise ValueError(f"initial has {len(initial)} labels, expected one per item ({n})")
    if not refine:
        if initial is not None:
            seed_a, seed_b = _seed_links(np.asarray(initial))
            rows_a, rows_b = np.r_[rows_a, seed_a], np.r_[rows_b, seed_b]
        return connected_components(n, rows_a, rows_b)
    if cross_score is None and link_threshold is not None:
        raise ValueError("refine with a link_threshold needs cross_score")
    cap = np.inf if max_group_size is None else max_group_size
    uf = UnionFind(n)
    if initial is not None:
        uf.seed(np.asarray(initial))
    # Two groups joined by many pairs would be compared once per pair; a
    # refusal stays valid until one of them changes, which bumps its version.
    version = np.zeros(n, dtype=np.int64)
    refused: set[tuple[int, int, int, int]] = set()
    for e in edge_order(rows_a, rows_b, scores, tie_key):
        a, b = uf.find(int(rows_a[e])), uf.find(int(rows_b[e]))
        if a == b:
            continue
        ga, gb = uf.group(a), uf.group(b)
        if len(ga) + len(gb) > cap:
            continue
        linkage = link_threshold is not None and (len(ga) > 1 or len(gb) > 1)
        if linkage or conflict is not None:
            key = (a, int(version[a]), b, int(version[b])) if a < b else (b, int(version[b]), a, int(version[a]))
            if key in refused:
                continue
            if conflict is not None and conflict(np.asarray(ga), np.asarray(gb)):
                refused.add(key)
                continue
            if linkage and _mean_cross(cross_score, ga, gb) < link_threshold:  # type: ignore[operator]
                refused.add(key)
                continue
        root = uf.union(a, b)
        version[root] += 1
    return _smallest_member_labels(uf.labels())


def _mean_cross(cross_score: CrossScore | None, ga: list[int], gb: list[int]) -> float:
    """Mean score across two groups; a :class:`GroupLinkage` answers from its memo."""
    if isinstance(cross_score, GroupLinkage):
        return cross_score.mean(ga, gb)
    return float(np.mean(cross_score(np.asarray(ga), np.asarray(gb))))  # type: ignore[misc]


class GroupLinkage:
    """Mean cross score and conflict of two groups, remembered by their members.

    A greedy regrouping asks about the same two groups again whenever it
    replays a stretch of merges it made before (an incremental update
    regroups a region from scratch, see
    :mod:`~simsearch.applications.incremental.regroup`); the answer depends on
    the two member sets only, so it is computed once. Pass the object as
    both ``cross_score`` and ``conflict`` of :func:`group_pairs`.

    Parameters
    ----------
    cross : callable
        Scores every pair across two row lists (a :data:`CrossScore`).
    conflict : callable, optional
        A :data:`Conflict`; None: no two groups conflict.
    rows : ndarray of shape (m,), int, optional
        Row of each local index when :func:`group_pairs` works on a subset;
        the memo is kept by these rows, so it carries over between subsets.
    """

    def __init__(self, cross: CrossScore, conflict: Conflict | None = None, rows: np.ndarray | None = None) -> None:
        self.cross = cross
        self.conflict_of = conflict
        self.rows = rows
        self.means: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        self.conflicts: dict[tuple[tuple[int, ...], tuple[int, ...]], bool] = {}

    def on(self, rows: np.ndarray) -> GroupLinkage:
        """The same memo, for a :func:`group_pairs` over ``rows`` (local index i is row ``rows[i]``)."""
        view = GroupLinkage(self.cross, self.conflict_of, np.asarray(rows, dtype=np.int64))
        view.means, view.conflicts = self.means, self.conflicts
        return view

    def _key(self, ga: Any, gb: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        ra, rb = np.asarray(ga, dtype=np.int64), np.asarray(gb, dtype=np.int64)
        if self.rows is not None:
            ra, rb = self.rows[ra], self.rows[rb]
        ka, kb = tuple(sorted(ra.tolist())), tuple(sorted(rb.tolist()))
        return ((ka, kb) if ka <= kb else (kb, ka)), ra, rb

    def mean(self, ga: Any, gb: Any) -> float:
        """Mean score over every pair across the two groups."""
        key, ra, rb = self._key(ga, gb)
        value = self.means.get(key)
        if value is None:
            value = self.means[key] = float(np.mean(self.cross(ra, rb)))
        return value

    def __call__(self, ga: Any, gb: Any) -> bool:
        """Whether a pair across the two groups conflicts (the ``conflict`` callback)."""
        if self.conflict_of is None:
            return False
        key, ra, rb = self._key(ga, gb)
        value = self.conflicts.get(key)
        if value is None:
            value = self.conflicts[key] = bool(self.conflict_of(ra, rb))
        return value


def edge_order(rows_a: np.ndarray, rows_b: np.ndarray, scores: np.ndarray, tie_key: np.ndarray | None) -> np.ndarray:
    """Positions of the pairs strongest first; equal scores by ``tie_key`` (see :func:`group_pairs`), else input order."""
    scores = np.asarray(scores)
    if tie_key is None:
        return np.argsort(-scores, kind="stable")
    key_a, key_b = tie_key[rows_a], tie_key[rows_b]
    return np.lexsort((np.maximum(key_a, key_b), np.minimum(key_a, key_b), -scores))


def connected_components(n: int, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Connected components (single linkage) of ``n`` items joined by pairs.

    Parameters
    ----------
    n : int
        Number of items (rows ``0..n-1``).
    rows_a, rows_b : ndarray of shape (m,), int
        The pairs.

    Returns
    -------
    labels : ndarray of shape (n,), int64
        The smallest row of each item's component.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    rows_a = np.asarray(rows_a, dtype=np.int64)
    rows_b = np.asarray(rows_b, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows_a), dtype=np.int8), (rows_a, rows_b)), shape=(n, n))
    _, comp = components(graph, directed=False)
    return _smallest_member_labels(comp)


def _seed_links(initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs that chain the members of each ``initial`` group together."""
    order = np.argsort(initial, kind="stable")
    same = initial[order][1:] == initial[order][:-1]
    return order[:-1][same].astype(np.int64), order[1:][same].astype(np.int64)


def _smallest_member_labels(comp: np.ndarray) -> np.ndarray:
    """Relabel components by their smallest member."""
    comp = np.asarray(comp, dtype=np.int64)
    smallest = np.full(comp.max() + 1 if len(comp) else 0, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(len(comp), dtype=np.int64))
    return smallest[comp]


def canonical_members(labels: np.ndarray, cross_score: CrossScore | None) -> dict[int, int]:
    """Pick each group's canonical member: the one most similar to the rest.

    Parameters
    ----------
    labels : ndarray of shape (n,), int64
        From :func:`group_pairs`.
    cross_score : callable or None
        As in :func:`group_pairs`; ``None`` picks the smallest row.

    Returns
    -------
    dict
        Group label -> row of its canonical member, for groups of two or more.
    """
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    out: dict[int, int] = {}
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop - start < 2:
            continue
        members = order[start:stop]
        if cross_score is None:
            out[int(labels[members[0]])] = int(members.min())
            continue
        sims = np.asarray(cross_score(members, members), dtype=np.float64)
        # Medoid: highest summed similarity; ties go to the first row.
        out[int(labels[members[0]])] = int(members[int(np.argmax(sims.sum(axis=1)))])
    return out
