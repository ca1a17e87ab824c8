"""Look before you trust: a self-contained HTML report of matches and groups, and a labelling page.

- :func:`dedup_report` (from :func:`~simsearch.find_duplicates`' pairs and
  groups) and :func:`state_report` (from a :class:`~simsearch.Deduplicator`
  state folder; ``simsearch report dedup --state DIR``) write one HTML file:
  the score distribution with the threshold, the calibration curve when
  labels exist, group sizes, and each group's members with the evidence of
  every link (:mod:`~simsearch.report.dedup`).
- :func:`match_report` does the same for :meth:`~simsearch.CatalogMatcher.match`:
  each listing with its top candidates, scores and deciding features
  (:mod:`~simsearch.report.match`).
- :mod:`~simsearch.report.review_app` is the labelling page of the review
  loop (``simsearch review serve --state DIR``), keeping its labels in
  :mod:`~simsearch.report.labels`; it needs the ``serve`` extra.

The pages inline their scripts and styles (``assets/``) and embed their data
as JSON (:mod:`~simsearch.report.html`): they open offline, from a file.
"""

from __future__ import annotations

from simsearch.report.dedup import dedup_report, state_report
from simsearch.report.match import match_report

__all__ = ["dedup_report", "match_report", "state_report"]
