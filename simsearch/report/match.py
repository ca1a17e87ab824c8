"""The match report: each listing with its top catalog candidates, scores and deciding features.

:func:`match_report` takes the table :meth:`~simsearch.CatalogMatcher.match`
returns (``listing_id``, ``product_id``, ``score``, ``rank``, ``is_match``
and, after :meth:`~simsearch.CatalogMatcher.fit_pairs`, ``top_features``),
the listings and the catalog, and writes one self-contained HTML file: the
distribution of best scores with the threshold, then the listings (searchable,
sortable by best score, filterable by matched or not, paginated), each with
its candidates side by side.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simsearch import _tables
from simsearch.report.dedup import is_probability, score_column
from simsearch.report.html import histogram, json_column, render_page, write_page

__all__ = ["match_report"]

MATCH_COLUMNS = ("listing_id", "product_id")


def _titles(table: Any, id_col: str, text_col: str, name: str) -> dict[str, str]:
    table = _tables.read_table(table, name=name)
    _tables.require_columns(table, [id_col, text_col], name=name)
    ids = [str(v) for v in table.column(id_col).to_pylist()]
    return dict(zip(ids, ["" if t is None else str(t) for t in table.column(text_col).to_pylist()]))


def match_report(
    matches: pa.Table,
    listings: Any,
    catalog: Any,
    path: str | os.PathLike[str],
    *,
    id_col: str = "id",
    text_col: str = "title",
    listing_id_col: str | None = None,
    listing_text_col: str | None = None,
    threshold: float | None = None,
    score_col: str | None = None,
    title: str = "simsearch match report",
) -> Path:
    """Write the HTML report of a :meth:`~simsearch.CatalogMatcher.match` result.

    Parameters
    ----------
    matches : pyarrow.Table or path
        ``listing_id``, ``product_id``, a score column, and optionally
        ``rank``, ``is_match`` and ``top_features`` (list of str).
    listings, catalog : table or path
        The matched listings and the catalog: ``id_col`` and ``text_col``.
    path : path-like
        The HTML file to write (atomically).
    id_col, text_col : str, default "id", "title"
        Columns of the catalog (and of the listings, unless
        ``listing_id_col`` / ``listing_text_col`` say otherwise).
    threshold : float, optional
        Marked on the distribution; default the lowest matched score.
    score_col : str, optional
        Default ``probability`` when present, else ``score``. A ``score``
        beside ``top_features`` is the pair scorer's match probability
        (:meth:`~simsearch.CatalogMatcher.fit_pairs`) and is shown as one.
    title : str

    Returns
    -------
    pathlib.Path

    Raises
    ------
    MissingColumnError
        A table without its required columns (a ``ValueError``).
    """
    matches = _tables.read_table(matches, name="matches")
    _tables.require_columns(matches, list(MATCH_COLUMNS), name="matches")
    score_col = score_column(matches, score_col)
    listing_titles = _titles(listings, listing_id_col or id_col, listing_text_col or text_col, "listings")
    product_titles = _titles(catalog, id_col, text_col, "catalog")
    n = matches.num_rows
    rank = (
        np.asarray(matches.column("rank").to_numpy(zero_copy_only=False), dtype=np.int64)
        if "rank" in matches.column_names
        else np.ones(n, dtype=np.int64)
    )
    listing_keys = [str(v) for v in matches.column("listing_id").to_pylist()]
    product_keys = [str(v) for v in matches.column("product_id").to_pylist()]
    scores = np.asarray(matches.column(score_col).to_numpy(zero_copy_only=False), dtype=np.float64)
    if "is_match" in matches.column_names:
        is_match = np.asarray(
            pc.fill_null(matches.column("is_match"), False).to_numpy(zero_copy_only=False), dtype=bool
        )
    elif threshold is not None:
        is_match = scores >= threshold
    else:
        is_match = np.zeros(n, dtype=bool)
    if threshold is None and is_match.any():
        threshold = float(scores[is_match].min())
    features = (
        [", ".join(f or []) for f in matches.column("top_features").to_pylist()]
        if "top_features" in matches.column_names
        else None
    )

    # Listings in order of first appearance; each one's candidates by rank.
    listing_order: dict[str, int] = {}
    for k in listing_keys:
        listing_order.setdefault(k, len(listing_order))
    for k in listing_titles:  # listings with no candidate row are shown too
        listing_order.setdefault(k, len(listing_order))
    l_rows = np.array([listing_order[k] for k in listing_keys], dtype=np.int64)
    order = np.lexsort((rank, l_rows))
    l_sorted = l_rows[order]
    starts = np.searchsorted(l_sorted, np.arange(len(listing_order) + 1))
    product_order: dict[str, int] = {}
    p_rows = np.array(
        [product_order.setdefault(product_keys[i], len(product_order)) for i in order.tolist()], dtype=np.int64
    )
    best = np.full(len(listing_order), np.nan)
    matched = np.zeros(len(listing_order), dtype=bool)
    if n:
        np.fmax.at(best, l_rows, scores)
        np.logical_or.at(matched, l_rows, is_match)
    listing_list = list(listing_order)
    probability = is_probability(score_col, matches) or (score_col == "score" and features is not None)
    payload = {
        "kind": "match",
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "score": {"column": score_col, "probability": probability, "threshold": threshold},
        "summary": {
            "listings": len(listing_list),
            "matched": int(matched.sum()),
            "products": len(product_titles),
            "candidates": n,
        },
        "hist": histogram(best[np.isfinite(best)], lo=0.0 if probability else None, hi=1.0 if probability else None),
        "hist_of": "best candidate of each listing",
        "listings": {
            "id": listing_list,
            "title": [listing_titles.get(k, "") for k in listing_list],
            "best": json_column(best, 3),
            "matched": json_column(matched),
            "start": starts.astype(int).tolist(),
        },
        "products": {"id": list(product_order), "title": [product_titles.get(k, "") for k in product_order]},
        "candidates": {
            "product": p_rows.tolist(),
            "score": json_column(scores[order], 3),
            "rank": rank[order].astype(int).tolist(),
            "is_match": json_column(is_match[order]),
            "features": None if features is None else [features[i] for i in order.tolist()],
        },
    }
    return write_page(path, render_page("report.html", title, payload, ("common.js", "report.js")))
