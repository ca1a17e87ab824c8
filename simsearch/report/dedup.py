"""The dedup report: score distribution, calibration, group sizes, and each group with its evidence.

:func:`dedup_report` takes the tables :func:`~simsearch.find_duplicates`
returns; :func:`state_report` reads a :class:`~simsearch.Deduplicator` state
folder (its pairs, groups, titles and vectors, and the labels of its review
page when there are some). Both write one self-contained HTML file (see
:mod:`simsearch.report.html`).

What the page shows:

- the distribution of candidate pair scores with the threshold marked, and,
  when labels exist, the calibration curve: the labelled share of duplicates
  in each score bin (with a Wilson interval) against the bin's mean score;
- the group sizes (a histogram), and the groups largest first, since a chain
  of weak links that glues products into one giant group is the usual failure;
- each group's members side by side, and every link between them with its
  evidence: pair score, embedding cosine, character n-gram cosine, and whether
  model codes and measures agree or conflict. Links the refinement cut
  (``same_group`` false) are listed too, marked as cut.

Groups and members are searchable and sortable; the lists are paginated, so a
35,000-item catalog opens quickly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from simsearch import _tables
from simsearch.applications import Deduplicator
from simsearch.applications.incremental.state import load_state
from simsearch.applications.review import read_labels
from simsearch.errors import UnknownIdError
from simsearch.report.evidence import pair_evidence
from simsearch.report.html import histogram, json_column, render_page, wilson_interval, write_page
from simsearch.report.labels import LabelStore, default_labels_path

__all__ = ["dedup_report", "state_report"]

#: Score bins of the calibration curve.
CALIBRATION_BINS = 10


def score_column(table: pa.Table, score_col: str | None) -> str:
    """The column a report shows as the score: ``score_col``, else ``probability`` if present, else ``score``."""
    if score_col is None:
        score_col = "probability" if "probability" in table.column_names else "score"
    _tables.require_columns(table, [score_col], name="pairs")
    return score_col


def is_probability(name: str, table: pa.Table | None = None) -> bool:
    """Whether a score column holds probabilities: its name says so, or the pairs table's metadata does.

    ``find_duplicates`` marks calibrated ``score`` columns with the schema
    metadata ``{b"simsearch.score": b"probability"}``.
    """
    if "probability" in name.lower():
        return True
    meta = table.schema.metadata if table is not None else None
    return name == "score" and bool(meta) and meta.get(b"simsearch.score") == b"probability"


def _keys(column: Any) -> list[str]:
    # Ids are matched as text, so an id read as 7 from Parquet and "7" from CSV agree.
    return [str(v) for v in column.to_pylist()]


def calibration_curve(scores: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list[Any]]:
    """Labelled share of duplicates per equal-width score bin, with Wilson intervals.

    Parameters
    ----------
    scores : ndarray of shape (n,), float
    labels : ndarray of shape (n,), {0, 1}
    bins : int

    Returns
    -------
    dict
        Column arrays over the non-empty bins: ``score`` (mean score), ``share``,
        ``lo``, ``hi`` (the interval), ``n`` (labels in the bin).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    width = (hi - lo) / bins if hi > lo else 1.0
    which = np.minimum(((scores - lo) / width).astype(np.int64), bins - 1)
    out: dict[str, list[Any]] = {"score": [], "share": [], "lo": [], "hi": [], "n": []}
    for h in range(bins):
        inside = which == h
        n = int(inside.sum())
        if n == 0:
            continue
        positive = float(labels[inside].sum())
        low, high = wilson_interval(positive, n)
        out["score"].append(round(float(scores[inside].mean()), 4))
        out["share"].append(round(positive / n, 4))
        out["lo"].append(round(low, 4))
        out["hi"].append(round(high, 4))
        out["n"].append(n)
    return out


def _labelled_scores(
    labels: Any, pair_score: dict[tuple[str, str], float], score_col: str, known_ids: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Score and 0/1 label of each labelled pair (the score from the labels table, else from the pairs).

    Raises
    ------
    UnknownIdError
        A labelled pair names an id that is not among the items (a ``KeyError``).
    """
    raw = _tables.read_table(labels, name="labels")
    table = read_labels(raw)
    unknown = [
        (x, y)
        for x, y in zip(_keys(table.column("id_a")), _keys(table.column("id_b")))
        if x not in known_ids or y not in known_ids
    ]
    if unknown:
        raise UnknownIdError(
            f"labels holds {len(unknown)} labelled pairs with ids that are not among the items (the first: "
            f"{unknown[0][0]!r}, {unknown[0][1]!r}): were they labelled on another data set or state?"
        )
    own = score_col if score_col in raw.column_names else ("score" if "score" in raw.column_names else None)
    if own is not None:
        # read_labels keeps the labelled rows in order; take their scores the same way.
        text = raw.column("label").cast(pa.string()).to_pylist()
        keep = [i for i, v in enumerate(text) if v is not None and str(v).strip() != ""]
        given = np.asarray(
            raw.column(own).take(pa.array(keep, type=pa.int64())).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    else:
        given = np.full(table.num_rows, np.nan)
    a, b = _keys(table.column("id_a")), _keys(table.column("id_b"))
    scores = np.array(
        [
            g if np.isfinite(g) else pair_score.get((x, y), pair_score.get((y, x), np.nan))
            for g, x, y in zip(given, a, b)
        ]
    )
    labels_arr = table.column("label").to_numpy().astype(np.int8)
    known = np.isfinite(scores)
    return scores[known], labels_arr[known]


def _ordered_groups(groups: pa.Table, g_rows: np.ndarray, n_items: int) -> tuple[np.ndarray, ...]:
    """Groups of two or more, largest first, each one's canonical member first.

    Returns
    -------
    rows, group_ids : ndarray of shape (m,), int64
        Item row and group id of each member, group by group.
    starts : ndarray of shape (n_groups,), int64
        Where each group begins in ``rows``.
    group_of : ndarray of shape (n_items,), int64
        Position of each item's group in that order; -1 outside groups.
    """
    g_ids = np.asarray(groups.column("group_id").to_numpy(), dtype=np.int64)
    canonical = (
        np.asarray(groups.column("is_canonical").to_numpy(zero_copy_only=False), dtype=bool)
        if "is_canonical" in groups.column_names
        else np.zeros(len(g_rows), dtype=bool)
    )
    _, inverse, sizes = np.unique(g_ids, return_inverse=True, return_counts=True)
    multi = sizes[inverse] >= 2
    g_rows, g_ids, canonical, inverse = g_rows[multi], g_ids[multi], canonical[multi], inverse[multi]
    order = np.lexsort((~canonical, g_ids, -sizes[inverse]))
    g_rows, g_ids = g_rows[order], g_ids[order]
    starts = np.flatnonzero(np.r_[True, g_ids[1:] != g_ids[:-1]]) if len(g_ids) else np.zeros(0, dtype=np.int64)
    group_of = np.full(n_items, -1, dtype=np.int64)
    group_of[g_rows] = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(g_ids)]))
    return g_rows, g_ids, starts, group_of


def dedup_report(
    pairs: pa.Table,
    groups: pa.Table,
    items: Any,
    path: str | os.PathLike[str],
    *,
    id_col: str = "id",
    text_col: str = "title",
    vectors: np.ndarray | None = None,
    tfidf: Any = None,
    threshold: float | None = None,
    labels: Any = None,
    candidates: pa.Table | None = None,
    score_col: str | None = None,
    scoring: Any = None,
    summary: dict[str, Any] | None = None,
    title: str = "simsearch dedup report",
) -> Path:
    """Write the HTML report of a :func:`~simsearch.find_duplicates` result.

    Parameters
    ----------
    pairs : pyarrow.Table
        ``id_a``, ``id_b``, a score column and optionally ``same_group``
        (the ``pairs`` of :func:`~simsearch.find_duplicates`).
    groups : pyarrow.Table
        ``id``, ``group_id`` and optionally ``is_canonical`` (its ``groups``).
        Groups of one item are left out.
    items : table or path, or None
        The input items: ``id_col`` and ``text_col`` (any table
        :func:`~simsearch._tables.read_table` reads). ``None`` shows ids only.
    path : path-like
        The HTML file to write (atomically).
    id_col, text_col : str, default "id", "title"
    vectors : ndarray of shape (n_items, dim), float, optional
        The items' embeddings, row ``i`` for item ``i``: adds the embedding
        cosine to each link's evidence.
    tfidf : scipy.sparse.csr_matrix of shape (n_items, n_terms), optional
        The items' L2-normalized character n-gram TF-IDF rows; default
        fitted on the titles here.
    threshold : float, optional
        Marked on the score distribution; default the lowest pair score.
    labels : table or path, optional
        ``id_a``, ``id_b``, ``label`` (1 / 0; empty rows skipped) and
        optionally the score: draws the calibration curve.
    candidates : pyarrow.Table, optional
        Every candidate pair (``id_a``, ``id_b``, score), below the threshold
        too, for the score distribution; default ``pairs``.
    score_col : str, optional
        The score column; default ``probability`` when the pairs have one
        (shown as a probability), else ``score`` (shown as a raw score).
    scoring : PairScoring, optional
        The n-gram range of the lexical evidence.
    summary : dict, optional
        Figures shown at the top, over the ones counted here (``pairs``,
        ``calibration``: a :meth:`~simsearch.applications.ThresholdChoice.to_dict`).
    title : str

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    MissingColumnError
        A table without its required columns (a ``ValueError``).
    ValueError
        An id of ``pairs`` or ``groups`` that is not in ``items``;
        ``vectors`` of another length than ``items``.

    Examples
    --------
    >>> from simsearch import find_duplicates  # doctest: +SKIP
    >>> pairs, groups = find_duplicates("offers.csv")  # doctest: +SKIP
    >>> dedup_report(pairs, groups, "offers.csv", "report.html")  # doctest: +SKIP
    """
    _tables.require_columns(pairs, ["id_a", "id_b"], name="pairs")
    _tables.require_columns(groups, ["id", "group_id"], name="groups")
    score_col = score_column(pairs, score_col)
    if items is not None:
        items = _tables.read_table(items, name="items")
        _tables.require_columns(items, [id_col], name="items")
        all_keys = _keys(items.column(id_col))
        titles = items.column(text_col).to_pylist() if text_col in items.column_names else None
    else:
        all_keys = sorted(
            set(_keys(groups.column("id"))) | set(_keys(pairs.column("id_a"))) | set(_keys(pairs.column("id_b")))
        )
        titles = None
    if vectors is not None and len(vectors) != len(all_keys):
        raise ValueError(f"vectors has {len(vectors)} rows, items has {len(all_keys)}")
    row_of = {k: i for i, k in enumerate(all_keys)}

    def rows(column: Any, name: str) -> np.ndarray:
        out = np.empty(len(column), dtype=np.int64)
        for i, k in enumerate(_keys(column)):
            r = row_of.get(k)
            if r is None:
                raise ValueError(f"{name} holds id {k!r}, which is not in items")
            out[i] = r
        return out

    g_rows, g_ids, starts, group_of = _ordered_groups(groups, rows(groups.column("id"), "groups"), len(all_keys))

    a, b = rows(pairs.column("id_a"), "pairs"), rows(pairs.column("id_b"), "pairs")
    s = np.asarray(pairs.column(score_col).to_numpy(zero_copy_only=False), dtype=np.float64)
    if "same_group" in pairs.column_names:
        same = np.asarray(pairs.column("same_group").to_numpy(zero_copy_only=False), dtype=bool)
    else:
        same = (group_of[a] >= 0) & (group_of[a] == group_of[b])
    shown = (group_of[a] >= 0) | (group_of[b] >= 0)
    a, b, s, same = a[shown], b[shown], s[shown], same[shown]
    evidence = pair_evidence(titles, a, b, vectors=vectors, tfidf=tfidf, scoring=scoring)

    # Only the items a group or a link names travel in the page.
    used = np.union1d(g_rows, np.r_[a, b]).astype(np.int64)
    new_row = np.full(len(all_keys), -1, dtype=np.int64)
    new_row[used] = np.arange(len(used))
    weakest = np.full(len(starts), np.nan)
    inside = same & (group_of[a] >= 0) & (group_of[a] == group_of[b])
    if inside.any():
        np.fmin.at(weakest, group_of[a[inside]], s[inside])

    hist_scores = s
    if candidates is not None:
        hist_scores = np.asarray(
            candidates.column(score_column(candidates, score_col)).to_numpy(zero_copy_only=False), dtype=np.float64
        )
    probability = is_probability(score_col, pairs)
    if threshold is None and len(s):
        threshold = float(s.min())
    calibration = None
    if labels is not None:
        pair_score = {(all_keys[x], all_keys[y]): float(v) for x, y, v in zip(a.tolist(), b.tolist(), s.tolist())}
        ls, ll = _labelled_scores(labels, pair_score, score_col, row_of)
        if len(ls):
            calibration = calibration_curve(ls, ll)
    size_values, size_counts = np.unique(np.diff(np.r_[starts, len(g_ids)]), return_counts=True)
    payload = {
        "kind": "dedup",
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "score": {"column": score_col, "probability": probability, "threshold": threshold},
        "summary": {
            "items": len(all_keys),
            "pairs": int(pairs.num_rows),
            "groups": len(starts),
            "grouped_items": len(g_rows),
            "largest_group": int(size_values.max()) if len(size_values) else 0,
            **(summary or {}),
        },
        "hist": histogram(hist_scores, lo=0.0 if probability else None, hi=1.0 if probability else None),
        "hist_of": "candidate pairs" if candidates is not None else "pairs at or above the threshold",
        "calibration": calibration,
        "sizes": {"size": size_values.astype(int).tolist(), "count": size_counts.astype(int).tolist()},
        "items": {
            "id": [all_keys[r] for r in used.tolist()],
            "title": None if titles is None else ["" if titles[r] is None else str(titles[r]) for r in used.tolist()],
        },
        "groups": {
            "id": [int(g) for g in g_ids[starts].tolist()],
            "start": [int(x) for x in starts.tolist()] + [len(g_ids)],
            "members": new_row[g_rows].tolist(),
            "weakest": json_column(weakest, 3),
        },
        "links": {
            "a": new_row[a].tolist(),
            "b": new_row[b].tolist(),
            "score": json_column(s, 3),
            "same": json_column(same),
            "embedding": json_column(evidence["embedding"], 3),
            "lexical": json_column(evidence["lexical"], 3),
            "codes": json_column(evidence["codes"]),
            "measures": json_column(evidence["measures"]),
        },
    }
    return write_page(path, render_page("report.html", title, payload, ("common.js", "report.js")))


def state_report(
    state: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    labels: Any = None,
    title: str | None = None,
) -> Path:
    """Write the HTML report of a :class:`~simsearch.Deduplicator` state folder.

    Parameters
    ----------
    state : path-like
        The state folder (``simsearch dedup ITEMS --state DIR``).
    path : path-like
        The HTML file to write.
    labels : table or path, optional
        Labelled pairs for the calibration curve; default the labels given
        on the state's review page (``simsearch review serve``), if any.
    title : str, optional

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        No state at ``state``.
    ValueError
        Not a dedup state, a newer format version
        (:class:`~simsearch.errors.FormatVersionError`), a damaged file
        (:class:`~simsearch.errors.CorruptFileError`).
    """
    dedup = Deduplicator.load(state)
    files = load_state(state)  # the titles and vectors beside the results
    alive = files.sections["alive"].astype(bool)
    items = files.items.filter(pa.array(alive))
    sections = files.sections
    vectors = sections["vectors"][alive]
    tfidf = None
    if "tfidf_data" in sections:  # the n-gram rows the dedup scored with
        shape = (len(alive), len(files.vocabulary))  # type: ignore[arg-type]
        tfidf = sp.csr_matrix(
            (sections["tfidf_data"], sections["tfidf_indices"], sections["tfidf_indptr"]), shape=shape
        )[alive]
    items = items.rename_columns(["id" if c == "item_id" else c for c in items.column_names])
    if labels is None and default_labels_path(state).exists():
        labels = LabelStore(default_labels_path(state)).labels_table()
        if not any(v is not None for v in labels.column("label").to_pylist()):
            labels = None
    above = dedup.pairs()
    summary: dict[str, Any] = {"state": str(Path(state).resolve().name), "pairs": above.num_rows}
    if dedup.calibration_ is not None:
        summary["calibration"] = dedup.calibration_.to_dict()
    candidates = dedup.pairs(min_score=-1e9)
    # The links shown: those above the threshold, and those that hold a group
    # together although a recalibration has since moved the threshold past them.
    shown = pc.or_(candidates.column("same_group"), pc.greater_equal(candidates.column("score"), dedup.threshold_))
    return dedup_report(
        candidates.filter(shown), dedup.groups_.select(["id", "group_id"]), items, path, vectors=vectors, tfidf=tfidf,
        threshold=dedup.threshold_, labels=labels, candidates=candidates, summary=summary,
        title=title or f"simsearch dedup report: {summary['state']}",
    )  # fmt: skip
