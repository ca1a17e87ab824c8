"""One self-contained HTML page: the template, its inline styles and script, and its data as JSON.

A report must open offline, from a file, in any browser: nothing is fetched
(no CDN, no font, no image), the CSS and JavaScript of ``assets/`` are
inlined, and the data rides in a ``<script type="application/json">`` block
that the page parses once. Tables travel as column arrays (one JSON array
per column), which is several times smaller than a list of records.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from simsearch import _storage

__all__ = ["asset", "histogram", "json_column", "render_page", "wilson_interval", "write_page"]

_PLACEHOLDER = re.compile(r"(\{\{\w+\}\})")


def asset(name: str) -> str:
    """The text of ``simsearch/report/assets/NAME``."""
    return resources.files("simsearch.report").joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(payload: Any) -> str:
    # No "<" at all inside the script element: "</script" would end it early and
    # "<!--" would change how the browser reads the rest; JSON reads \u003c as "<".
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c")


def render_page(template: str, title: str, payload: Any, scripts: tuple[str, ...] = ("common.js",)) -> str:
    """Fill a template of ``assets/`` with the title, the inline CSS and scripts, and the data.

    Parameters
    ----------
    template : str
        File name in ``assets/`` with the placeholders ``{{title}}``,
        ``{{style}}``, ``{{data}}`` and ``{{script}}``.
    title : str
        The page title (escaped here).
    payload : JSON-ready object
        Becomes the ``<script id="data" type="application/json">`` block.
    scripts : tuple of str
        Files of ``assets/`` inlined, in order, into one script element.

    Returns
    -------
    str
    """
    page = asset(template)
    code = "\n".join(asset(name) for name in scripts).replace("</script", "<\\/script")
    parts = {
        "{{title}}": html.escape(title),
        "{{style}}": asset("style.css"),
        "{{data}}": _script_json(payload),
        "{{script}}": code,
    }
    missing = [key for key in parts if key not in page]
    if missing:
        raise ValueError(f"template {template} has no {missing[0]} placeholder")
    # One pass over the template: a value that contains a marker is never replaced again.
    return "".join(parts.get(piece, piece) for piece in _PLACEHOLDER.split(page))


def write_page(path: str | os.PathLike[str], page: str) -> Path:
    """Write a page atomically (a reader never sees half a file); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _storage.atomic_write(path, "w") as f:
        f.write(page)
    path.chmod(0o644)  # a page to share and open, not a private temporary file
    return path


def json_column(values: Any, digits: int | None = None) -> list[Any] | None:
    """A column as a JSON-ready list: floats rounded to ``digits``, NaN as ``None``.

    Parameters
    ----------
    values : array-like of shape (n,), or None
    digits : int, optional
        Decimals kept for floats (the report shows three).

    Returns
    -------
    list or None
        ``None`` for ``None``.
    """
    if values is None:
        return None
    a = np.asarray(values)
    if a.dtype.kind == "f":
        out = np.round(a.astype(np.float64), digits if digits is not None else 6)
        return [None if not math.isfinite(v) else v for v in out.tolist()]
    if a.dtype.kind == "b":
        return [int(v) for v in a.tolist()]
    return a.tolist()


def histogram(
    values: np.ndarray, bins: int = 40, lo: float | None = None, hi: float | None = None
) -> dict[str, list[float]]:
    """Equal-width histogram: ``edges`` (``bins + 1`` floats) and ``counts`` (``bins`` ints)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if lo is None:
        lo = float(values.min()) if len(values) else 0.0
    if hi is None:
        hi = float(values.max()) if len(values) else 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": json_column(edges, 4), "counts": counts.astype(int).tolist()}  # type: ignore[dict-item]


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    Returns
    -------
    (float, float)
        ``(0, 1)`` when ``n`` is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
