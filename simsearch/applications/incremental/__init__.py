"""Incremental duplicate detection with stable group ids: :class:`Deduplicator`.

A catalog changes every day; re-running :func:`~simsearch.find_duplicates`
each night renumbers every group. :class:`Deduplicator` keeps a state (the
index, the scored candidate pairs, the groups) and updates it:

- **New items** are added to the index and their ``k`` nearest neighbours are
  scored with the same pair score as :func:`~simsearch.find_duplicates`. The
  groups they touch (through a pair at or above the threshold), seeded as
  they are, and the new items are then merged over the new items' pairs by the
  same strongest-first, average-linkage rule
  (:func:`~simsearch.applications.grouping.group_pairs` with ``initial``): a
  new item joins a group, forms a new one, or bridges two groups into one.
  Pairs between old groups are not weighed again.
- **Removed items** leave the index and their pairs. A group that lost members
  is split where no pair at or above the threshold holds it together any more.
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

Modules: ``deduplicator`` (the estimator), ``regroup`` (regrouping and group
ids), ``review`` (the review loop), ``ids`` (id checks), ``state`` (the folder
format).
"""


from simsearch.applications.incremental.deduplicator import EVENTS, PAIR_MARGIN, Deduplicator
from simsearch.applications.incremental.state import FORMAT_VERSION, STATE_KIND, check_encoder

__all__ = ["EVENTS", "FORMAT_VERSION", "PAIR_MARGIN", "STATE_KIND", "Deduplicator", "check_encoder"]
