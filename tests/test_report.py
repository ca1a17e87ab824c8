"""The HTML reports: self-contained, their data matching the tables they were made from, and the CLI.

References: the pairs and groups of find_duplicates and the match table of
CatalogMatcher on the bundled PriceRunner sample; a hand-computed Wilson
interval. The pages are opened in a real browser in tests/test_review_page.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from simsearch import CatalogMatcher, Deduplicator, find_duplicates
from simsearch._tables import MissingColumnError, read_table, write_table
from simsearch.cli import demo_sample_path, main
from simsearch.errors import UnknownIdError
from simsearch.report import dedup_report, match_report, state_report
from simsearch.report.dedup import calibration_curve
from simsearch.report.html import wilson_interval


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.getbasetemp() / "simsearch-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMSEARCH_CACHE", str(cache))
        from simsearch import TextEncoder

        yield TextEncoder()


@pytest.fixture(scope="module")
def sample() -> pa.Table:
    return read_table(demo_sample_path())


@pytest.fixture(scope="module")
def duplicates(sample, encoder):
    return find_duplicates(sample, encoder=encoder, progress=False)


def payload(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    block = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.DOTALL)
    assert block is not None
    return json.loads(block.group(1))


def assert_self_contained(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "default-src 'none'" in text  # the page may fetch nothing, by its own policy
    assert not re.search(r"<(script|img|iframe|link)\b[^>]*\b(src|href)=", text, re.IGNORECASE)
    assert "@import" not in text and "url(" not in text
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)  # the SVG namespace is a name, not a fetch


def test_dedup_report_shows_every_pair_and_group(tmp_path, sample, duplicates):
    pairs, groups = duplicates
    out = dedup_report(pairs, groups, sample, tmp_path / "r.html", threshold=0.5)
    assert_self_contained(out)
    data = payload(out)
    assert data["kind"] == "dedup" and data["score"] == {"column": "score", "probability": True, "threshold": 0.5}  # calibrated by find_duplicates
    g = data["groups"]
    sizes = np.diff(g["start"])
    assert len(sizes) == len(set(groups.column("group_id").to_pylist())) == data["summary"]["groups"]
    assert np.all(np.diff(sizes) <= 0)  # largest first
    assert sizes.sum() == groups.num_rows and data["summary"]["largest_group"] == sizes.max()
    # Each group's members are the groups table's, canonical member first.
    ids = data["items"]["id"]
    first = {str(r["id"]): r for r in groups.to_pylist()}
    for k in range(len(sizes)):
        members = [ids[m] for m in g["members"][g["start"][k] : g["start"][k + 1]]]
        assert {first[m]["group_id"] for m in members} == {g["id"][k]}
        assert first[members[0]]["is_canonical"]
    links = data["links"]
    # every pair touching a group is a link (a pair the conflict rule kept apart can join two singletons)
    grouped = set(groups.column("id").to_pylist())
    touching = [i for i, (x, y) in enumerate(zip(pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist())) if x in grouped or y in grouped]
    assert len(links["a"]) == len(touching) >= pairs.num_rows - 5
    assert links["score"] == pytest.approx(pairs.column("score").to_numpy()[touching], abs=1e-3)
    assert sum(data["hist"]["counts"]) == len(touching)
    title = dict(zip(ids, data["items"]["title"]))
    row = sample.to_pylist()
    assert title[str(row[0]["id"])] == row[0]["title"]
    # The evidence: identical titles have n-gram cosine 1; shared model codes are seen.
    for a, b, lex, codes in zip(links["a"], links["b"], links["lexical"], links["codes"]):
        if data["items"]["title"][a] == data["items"]["title"][b]:
            assert lex == pytest.approx(1.0, abs=1e-3)
    assert 1 in links["codes"] and links["embedding"] is None  # no vectors given


def test_probability_column_is_shown_as_one(tmp_path, sample, duplicates):
    pairs, groups = duplicates
    calibrated = pairs.append_column("probability", pa.array(np.linspace(0.99, 0.5, pairs.num_rows)))
    data = payload(dedup_report(calibrated, groups, sample, tmp_path / "p.html"))
    assert data["score"]["column"] == "probability" and data["score"]["probability"] is True
    assert data["hist"]["edges"][0] == 0 and data["hist"]["edges"][-1] == 1
    assert data["score"]["threshold"] == pytest.approx(0.5)
    uncalibrated = calibrated.replace_schema_metadata(None)  # no mark that "score" is calibrated
    raw = payload(dedup_report(uncalibrated, groups, sample, tmp_path / "s.html", score_col="score"))
    assert raw["score"]["probability"] is False


def test_hostile_titles_stay_data(tmp_path):
    evil = "</script><script>alert(1)</script> {{data}} <!-- x"
    items = pa.table({"id": [1, 2], "title": [evil, evil + " 64 GB"]})
    pairs = pa.table({"id_a": [1], "id_b": [2], "score": pa.array([0.9], pa.float32())})
    groups = pa.table({"id": [1, 2], "group_id": [0, 0]})
    out = dedup_report(pairs, groups, items, tmp_path / "e.html", title="<b>x</b>")
    text = out.read_text()
    assert (
        "alert" not in text.split('<script id="data"')[0]
        and text.count("<script") == 2
        and "<title>&lt;b&gt;x&lt;/b&gt;</title>" in text
    )
    assert payload(out)["items"]["title"] == [evil, evil + " 64 GB"]


def test_dedup_report_bad_input(tmp_path, sample, duplicates):
    pairs, groups = duplicates
    with pytest.raises(MissingColumnError, match="id_b"):
        dedup_report(pairs.drop(["id_b"]), groups, sample, tmp_path / "x.html")
    stray = pa.table({"id_a": [10**9], "id_b": [10**9 + 1], "score": [0.9]})
    with pytest.raises(ValueError, match="not in items"):
        dedup_report(stray, groups, sample, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
    strangers = pa.table({"id_a": [10**9], "id_b": [sample.column("id")[0].as_py()], "label": [1]})
    with pytest.raises(UnknownIdError, match="not among the items"):
        dedup_report(pairs, groups, sample, tmp_path / "x.html", labels=strangers)
    assert not (tmp_path / "x.html").exists()


def test_wilson_interval_and_calibration_curve():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    labels = np.array([0, 0, 1, 0, 1, 1, 1])
    curve = calibration_curve(scores, labels, bins=2)
    assert curve["n"] == [4, 3] and curve["share"] == [0.25, 1.0]
    assert all(lo <= s <= hi for lo, s, hi in zip(curve["lo"], curve["share"], curve["hi"]))


def test_state_report_and_its_labels(tmp_path, sample, encoder):
    state = tmp_path / "state"
    dedup = Deduplicator(encoder=encoder, progress=False).fit(sample)
    dedup.save(state)
    out = state_report(state, tmp_path / "state.html")
    data = payload(out)
    assert data["calibration"] is None and data["score"]["threshold"] == pytest.approx(dedup.threshold_)
    assert data["hist_of"] == "candidate pairs" and sum(data["hist"]["counts"]) == dedup.pairs(min_score=-1e9).num_rows
    assert data["links"]["embedding"] is not None  # the state keeps the vectors
    review = dedup.review_pairs(40, seed=0)
    labels = review.set_column(review.column_names.index("label"), "label", pa.array(
        ["1" if s > 0.7 else "0" for s in review.column("score").to_pylist()]
    ))  # fmt: skip
    write_table(labels, tmp_path / "labels.csv")
    data = payload(state_report(state, tmp_path / "state2.html", labels=tmp_path / "labels.csv"))
    assert sum(data["calibration"]["n"]) == 40
    assert data["calibration"]["share"][0] == 0 and data["calibration"]["share"][-1] == 1


def test_match_report(tmp_path, sample, encoder):
    catalog = sample.slice(0, 200)
    listings = sample.slice(200)
    matches = CatalogMatcher(encoder, k=3, progress=False).fit(catalog).match(listings)
    out = match_report(matches, listings, catalog, tmp_path / "m.html")
    assert_self_contained(out)
    data = payload(out)
    li, cands = data["listings"], data["candidates"]
    assert len(li["id"]) == listings.num_rows and len(cands["product"]) == matches.num_rows
    assert data["summary"]["matched"] == len(
        set(matches.filter(matches.column("is_match")).column("listing_id").to_pylist())
    )
    # Each listing's candidates, by rank, are the match table's.
    first = str(listings.column("id")[0].as_py())
    k = li["id"].index(first)
    mine = matches.filter(pa.compute.equal(matches.column("listing_id"), listings.column("id")[0]))
    got = [data["products"]["id"][p] for p in cands["product"][li["start"][k] : li["start"][k + 1]]]
    assert got == [str(v) for v in mine.sort_by("rank").column("product_id").to_pylist()]
    assert li["best"][k] == pytest.approx(max(mine.column("score").to_pylist()), abs=1e-3)
    with_features = matches.append_column("top_features", pa.array([["name=+0.41", "codes=+0.20"]] * matches.num_rows))
    data = payload(match_report(with_features, listings, catalog, tmp_path / "f.html"))
    assert data["candidates"]["features"][0] == "name=+0.41, codes=+0.20" and data["score"]["probability"] is True


def test_report_cli(tmp_path, sample, duplicates, capsys):
    pairs, groups = duplicates
    write_table(pairs, tmp_path / "pairs.parquet")
    write_table(groups, tmp_path / "groups.parquet")
    out = tmp_path / "cli.html"
    assert main(["report", "dedup", "--pairs", str(tmp_path / "pairs.parquet"), "--groups", str(tmp_path / "groups.parquet"),
                 "--items", str(demo_sample_path()), "--out", str(out)]) == 0  # fmt: skip
    assert "MB" in capsys.readouterr().err and payload(out)["summary"]["pairs"] == pairs.num_rows
    assert main(["report", "dedup", "--out", str(out)]) == 2
    assert "--state DIR, or --pairs and --groups" in capsys.readouterr().err
    assert main(["report", "dedup", "--state", str(tmp_path / "nothing"), "--out", str(tmp_path / "n.html")]) == 2
    assert "no dedup state" in capsys.readouterr().err and not (tmp_path / "n.html").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", "dedup", "--state", str(tmp_path / "empty"), "--out", str(tmp_path / "n.html")]) == 2
    assert "not a dedup state" in capsys.readouterr().err and list((tmp_path / "empty").iterdir()) == []


def test_calibrated_dedup_scores_are_shown_as_probabilities(duplicates):
    from simsearch.report.dedup import is_probability

    pairs, _ = duplicates
    assert is_probability("score", pairs)  # find_duplicates calibrates title scores and says so
    assert float(pairs.column("score").to_numpy().max()) <= 1.0
    raw = pairs.replace_schema_metadata(None)
    assert not is_probability("score", raw)
