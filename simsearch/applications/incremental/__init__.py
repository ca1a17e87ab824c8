"""Incremental duplicate detection with stable group ids: :class:`Deduplicator`.

A catalog changes every day; re-running :func:`~simsearch.find_duplicates`
each night renumbers every group. :class:`Deduplicator` keeps a state (the
index, the scored candidate pairs, the groups) and updates it:

- **New items** are added to the index and scored with the same pair score
  as :func:`~simsearch.find_duplicates`. Their neighbourhood is searched
  wider (:data:`~simsearch.applications.incremental.neighbours.REVERSE_FACTOR`
  times ``k``) so that the old items whose kNN lists they enter are found,
  and one rule decides which candidate pairs stay, in the fit and in every
  update: the union of both directions' ``k``-nearest lists
  (:func:`~simsearch.applications.incremental.neighbours.knn_union`). A pair
  that a new item pushes out of both lists is dropped, as a full run on the
  grown catalog would drop it.
- **Regrouping.** The groups of a full run are made by the strongest-first,
  average-linkage rule of :func:`~simsearch.applications.grouping.group_pairs`
  with ties broken by id, so they depend on the pairs and not on the order
  the items came in. An update regroups, from scratch and by that rule, the
  *region* it touches: the groups of the rows paired with a new item, of the
  rows whose pair that could have linked their group was dropped, and of the
  groups that lost members
  (:func:`~simsearch.applications.incremental.regroup.replay_region`).
  The rest keeps its groups. The mean cross scores the rule asks for are
  remembered (:class:`~simsearch.applications.grouping.GroupLinkage`), so a
  stretch of merges that replays as before costs little. (A state just
  loaded from disk starts with an empty memo: its first update scores its
  region in full.)
- **Removed items** leave the index and their pairs; the groups that held
  them are regrouped with their region.
- **Scores that do not move.** The n-gram vocabulary and IDF are learned at
  the fit and frozen: new titles are scored with them. The candidate search's
  projection of the TF-IDF vector is hashed per n-gram
  (``PairScoring(hashed_projection=True)``, the default here), so the search
  vectors of old items do not change when a full run fits the lexical model
  on more titles; only the IDF moves a little.
- **A new threshold** (from :meth:`Deduplicator.calibrate`) regroups every item
  from the stored pairs at the next update.

Group ids then follow the groups: each old id goes, oldest first, to the new
group holding most of its members if that group has no id yet, so an unchanged
group keeps its id, a merge keeps the older id and the largest part of a split
keeps the id; other groups get fresh ids. Every change is reported in the change
table that :meth:`Deduplicator.update` returns (``joined``, ``new_group``,
``merged``, ``split``, ``removed``); an item absent from it kept its group id.

**Chains.** Merging by average linkage already refuses to join two groups that
only touch through one pair; ``max_group_size`` caps a group, and a group larger
than the cap (after lowering it) is cut at its weakest bridge: the weakest edge
of its maximum spanning tree over the pairs above the threshold.

**State on disk.** :meth:`Deduplicator.save` writes a new version folder
(``v000001``, ...) holding a checksummed container (arrays, parameters,
calibration), Parquet files (ids, titles, n-gram vocabulary), the index and a
``manifest.json`` with the SHA-256 of each; then it swaps the ``CURRENT``
pointer file. A save interrupted at any point leaves the previous version in
place and readable. Nothing is unpickled on load
(:mod:`~simsearch.applications.incremental.state`).

Modules: ``deduplicator`` (the estimator), ``neighbours`` (which candidate
pairs stay), ``regroup`` (regrouping and group ids), ``review`` (the review
loop), ``ids`` (id checks), ``state`` (the folder format).
"""


from simsearch.applications.incremental.deduplicator import EVENTS, PAIR_MARGIN, Deduplicator
from simsearch.applications.incremental.state import FORMAT_VERSION, STATE_KIND, check_encoder

__all__ = ["EVENTS", "FORMAT_VERSION", "PAIR_MARGIN", "STATE_KIND", "Deduplicator", "check_encoder"]
