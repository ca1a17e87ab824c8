"""The HTML reports on PriceRunner's whole file: size and open time in headless Chromium.

    python benchmarks/report.py [--data ../shared/data] [--labels 200] [--opens 3] [--no-match]

**Dedup report.** A :class:`simsearch.Deduplicator` is fit on all 35,311
PriceRunner offers (defaults, ``max_group_size=100``); 200 pairs chosen by
:meth:`~simsearch.Deduplicator.review_pairs` are labelled from ``Cluster ID``
(a stand-in for a person), so the report carries a calibration curve; then
:func:`simsearch.report.state_report` writes the report.

**Match report.** The first offer of each product (``Cluster ID``) is the
catalog, the other offers are the listings; a :class:`simsearch.CatalogMatcher`
(defaults, ``k=5``) matches them and :func:`simsearch.report.match_report`
writes the report (every listing with its five candidates).

Each report is opened ``--opens`` times from its file in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, through Selenium, nothing
downloaded): the open time is the page's own ``performance.now()`` when it
has parsed its data and drawn the summary, charts and first page (its
``data-ready-ms``), and the wall time of ``driver.get`` to that point. Then a
search ("iphone") and the opening of the first row (the largest group, or the
first listing) are timed. Titles are encoded through the
:class:`simsearch.EmbeddingCache` that ``benchmarks/incremental.py`` also
uses (``benchmarks/.cache/``), so a rerun encodes nothing.

Prints the CPU, each figure beside the issue's goal (open in under 3 s), and
one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import _common
import _data
import numpy as np
import pyarrow as pa

from simsearch import CatalogMatcher, Deduplicator, EmbeddingCache, TextEncoder
from simsearch.report import match_report, state_report

CACHE = _common.CACHE_DIR / "incremental-embeddings.sqlite"  # the same encoder: one cache for both benchmarks
STATE = _common.CACHE_DIR / "report-state"
OUT = _common.CACHE_DIR / "report"
GOAL_OPEN_S = 3.0


def browser() -> Any:
    """Headless Debian Chromium through Selenium, with no download of a browser or a driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)


def wait(condition: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError("the page did not get ready")


def open_times(driver: Any, path: Path, opens: int, first_row: str, detail: str) -> dict[str, float]:
    """Median open time (in page and wall), then the time of one search and of opening the first row."""
    from selenium.webdriver.common.by import By

    in_page, wall = [], []
    for _ in range(opens):
        driver.get("about:blank")
        start = time.perf_counter()
        driver.get(path.resolve().as_uri())
        wait(lambda: driver.execute_script("return document.body && document.body.dataset.ready") == "1")
        wall.append(time.perf_counter() - start)
        in_page.append(float(driver.execute_script("return document.body.dataset.readyMs")) / 1000)
    search = driver.find_element(By.ID, "search")
    start = time.perf_counter()
    search.send_keys("iphone")
    # The page says how many rows it found once the search has run.
    wait(lambda: "iphone" in driver.find_element(By.ID, "match-count").text)
    search_s = time.perf_counter() - start - 0.12  # less the page's 120 ms typing debounce
    driver.get(path.resolve().as_uri())
    wait(lambda: driver.execute_script("return document.body.dataset.ready") == "1")
    start = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, first_row).click()
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, detail))
    open_row_s = time.perf_counter() - start
    return {
        "open_s": round(statistics.median(in_page), 3),
        "open_wall_s": round(statistics.median(wall), 3),
        "search_s": round(max(search_s, 0.0), 3),
        "open_first_row_s": round(open_row_s, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=_common.DATA_DIR)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--opens", type=int, default=3)
    parser.add_argument("--no-match", action="store_true", help="the dedup report only")
    parser.add_argument(
        "--reuse-state", action="store_true", help="load the state an earlier run saved instead of fitting"
    )
    args = parser.parse_args(argv)
    print(_common.host_line(), flush=True)
    ids, titles, clusters, _ = _data.pricerunner_offers(args.data)
    titles = [t if t.strip() else "untitled" for t in titles]
    offers = pa.table({"id": ids, "title": titles})
    encoder = TextEncoder(cache=EmbeddingCache(CACHE))
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"benchmark": "report", "cpu_flags": _common.cpu_flags(), "offers": len(ids)}

    start = time.perf_counter()
    if args.reuse_state:
        dedup = Deduplicator.load(STATE)
    else:
        dedup = Deduplicator(encoder=encoder, max_group_size=100, progress=False).fit(offers)
        dedup.save(STATE)
    fit_s = time.perf_counter() - start
    review = dedup.review_pairs(args.labels, seed=0)
    cluster = dict(zip(ids.tolist(), clusters.tolist()))
    truth = [
        str(int(cluster[a] == cluster[b]))
        for a, b in zip(review.column("id_a").to_pylist(), review.column("id_b").to_pylist())
    ]
    labels = review.set_column(review.column_names.index("label"), "label", pa.array(truth))
    start = time.perf_counter()
    dedup_path = state_report(STATE, OUT / "dedup.html", labels=labels)
    dedup_write_s = time.perf_counter() - start
    results["dedup"] = {
        "fit_s": round(fit_s, 1),
        "write_s": round(dedup_write_s, 2),
        "bytes": dedup_path.stat().st_size,
        "groups": len(set(dedup.groups_.column("group_id").to_pylist())),
    }
    print(
        f"dedup: state {'loaded' if args.reuse_state else 'fit'} in {fit_s:.0f} s; report written in {dedup_write_s:.1f} s, {dedup_path.stat().st_size / 1e6:.1f} MB",
        flush=True,
    )

    if not args.no_match:
        first = np.unique(clusters, return_index=True)[1]
        is_catalog = np.zeros(len(ids), dtype=bool)
        is_catalog[first] = True
        catalog, listings = offers.filter(pa.array(is_catalog)), offers.filter(pa.array(~is_catalog))
        start = time.perf_counter()
        matches = CatalogMatcher(encoder, k=5, progress=False).fit(catalog).match(listings)
        match_s = time.perf_counter() - start
        start = time.perf_counter()
        match_path = match_report(matches, listings, catalog, OUT / "match.html")
        match_write_s = time.perf_counter() - start
        results["match"] = {
            "match_s": round(match_s, 1),
            "write_s": round(match_write_s, 2),
            "bytes": match_path.stat().st_size,
            "listings": listings.num_rows,
            "candidates": matches.num_rows,
        }
        print(f"match: {listings.num_rows} listings against {catalog.num_rows} products in {match_s:.0f} s; "
              f"report written in {match_write_s:.1f} s, {match_path.stat().st_size / 1e6:.1f} MB", flush=True)  # fmt: skip

    driver = browser()
    try:
        results["dedup"].update(open_times(driver, dedup_path, args.opens, "#group-table tbody tr", "#members .member"))
        if not args.no_match:
            results["match"].update(
                open_times(driver, match_path, args.opens, "#listing-table tbody tr", "#candidate-table tbody tr")
            )
        results["chromium"] = driver.capabilities.get("browserVersion")
    finally:
        driver.quit()
    for kind in ("dedup", "match"):
        if kind in results:
            r = results[kind]
            print(f"{kind} report: {r['bytes'] / 1e6:.1f} MB, opens in {r['open_s']:.2f} s (wall {r['open_wall_s']:.2f} s; "
                  f"goal < {GOAL_OPEN_S:.0f} s: {'met' if r['open_s'] < GOAL_OPEN_S else 'NOT met'}), search {r['search_s']:.2f} s, "
                  f"first row opened in {r['open_first_row_s']:.2f} s", flush=True)  # fmt: skip
    print(json.dumps(results))


if __name__ == "__main__":
    main()
