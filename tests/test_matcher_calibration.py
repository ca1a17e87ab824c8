"""CatalogMatcher scores as probabilities: the shipped map, calibrate's refit, save/load, old folders.

Real titles: the bundled PriceRunner sample (offers matched to product names).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from _helpers import products

from simsearch import CatalogMatcher, _storage
from simsearch.applications.dedup_calibration import PairCalibration
from simsearch.applications.match_calibration import (
    DEFAULT_MATCH_CALIBRATION,
    ScoreMap,
    default_score_map,
    raw_threshold,
)
from simsearch.applications.metrics import best_f1_threshold
from simsearch.applications.saved_matcher import MANIFEST, MATCHER_FORMAT
from simsearch.errors import CorruptFileError


@pytest.fixture(scope="module")
def catalog(sample: pa.Table) -> pa.Table:
    return products(sample)


def raw_twin(m: CatalogMatcher) -> CatalogMatcher:
    """``m`` returning raw scores: the same fitted state, no score map."""
    twin = CatalogMatcher.__new__(CatalogMatcher)
    twin.__dict__.update(m.__dict__)
    twin.score_map_ = None
    return twin


def labelled(m: CatalogMatcher, offers: pa.Table) -> pa.Table:
    """The pairs ``m`` returns for ``offers``, labelled by the sample's clusters."""
    result = m.match(offers)
    truth = dict(zip(offers.column("id").to_pylist(), offers.column("cluster_id").to_pylist()))
    labels = [int(truth[a] == b) for a, b in zip(result.column("listing_id").to_pylist(), result.column("product_id").to_pylist())]
    return pa.table({"listing_id": result.column("listing_id"), "product_id": result.column("product_id"), "label": labels})


@pytest.mark.parametrize("lexical", [True, False])
def test_default_scores_are_the_shipped_map_of_the_raw_score(encoder, catalog, sample, lexical):
    m = CatalogMatcher(encoder, k=3, lexical=lexical, progress=False).fit(catalog)
    assert m.score_map_ == default_score_map(lexical) and m.score_map_.source == "default"
    result, raw = m.match(sample), raw_twin(m).match(sample)
    scores, raw_scores = result.column("score").to_numpy(), raw.column("score").to_numpy()
    assert result.schema.field("score").type == pa.float32()
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    # the raw scale is not [0, 1]: the map does something
    assert raw_scores.max() > 1.0 or raw_scores.min() < 0.0 or not np.allclose(scores, raw_scores, atol=0.05)
    # ranking unchanged: the same products in the same order, the same ranks
    for col in ("listing_id", "product_id", "rank"):
        assert result.column(col).equals(raw.column(col))
    # probabilities are the map of the raw scores, so monotone in them
    np.testing.assert_array_equal(scores, m.score_map_.apply(raw_scores))
    order = np.argsort(raw_scores, kind="stable")
    assert np.all(np.diff(scores[order]) >= 0)
    assert m.threshold_ == default_score_map(lexical).threshold
    assert result.column("is_match").to_pylist() == [s >= m.threshold_ for s in scores]
    assert result.schema.metadata == {b"simsearch.score": b"probability"}
    assert raw.schema.metadata is None and raw_twin(m).threshold_ == raw_threshold(lexical)
    # score_pairs says what match says
    pairs = pa.table({"listing_id": result.column("listing_id"), "product_id": result.column("product_id")})
    np.testing.assert_allclose(m.score_pairs(pairs, sample), scores, atol=1e-6)


def test_shipped_file_is_json_with_its_provenance():
    body = json.loads(DEFAULT_MATCH_CALIBRATION.read_text(encoding="utf-8"))
    assert body["format"] == "simsearch-match-calibration"
    for mode in ("lexical", "embedding"):
        ScoreMap.from_dict(body[mode])  # slope > 0, threshold in (0, 1)
    assert "validation" in body["provenance"] and "WDC and Abt-Buy were not used" in body["provenance"]


def test_calibrate_refits_the_map_and_the_threshold(encoder, catalog, sample):
    m = CatalogMatcher(encoder, k=3, progress=False).fit(catalog)
    pairs = labelled(m, sample)
    labels = pairs.column("label").to_numpy()
    before = m.score_pairs(pairs, sample)
    raw = raw_twin(m).score_pairs(pairs, sample)
    choice = m.calibrate(pairs, sample)
    # the map is Platt scaling on these pairs' raw scores (the old calibrate kept the scores)
    ref = PairCalibration.fit(raw, labels)
    assert m.score_map_.source == "labels"
    assert m.score_map_.calibration.slope == pytest.approx(ref.slope) and m.score_map_.calibration.intercept == pytest.approx(ref.intercept)
    after = m.score_pairs(pairs, sample)
    assert not np.allclose(after, before, atol=1e-3)
    np.testing.assert_array_equal(after, ref.apply(raw))
    # the threshold is the probability of best F1 on the pairs
    assert choice == best_f1_threshold(after, labels) and m.threshold_ == choice.threshold == m.score_map_.threshold
    assert 0.0 < m.threshold_ < 1.0 and choice.f1 >= 0.85
    result = m.match(sample)
    assert result.column("is_match").to_pylist() == [s >= m.threshold_ for s in result.column("score").to_pylist()]
    assert m.match(sample).column("product_id").equals(raw_twin(m).match(sample).column("product_id"))
    # a refit map survives a new catalog; the default one follows the matcher's scoring
    assert m.fit(catalog).score_map_.source == "labels"
    with pytest.raises(ValueError, match="no negative pair"):
        m.calibrate(pairs.filter(pc.equal(pairs.column("label"), 1)), sample)
    with pytest.raises(ValueError, match="no positive pair"):
        m.calibrate(pairs.filter(pc.equal(pairs.column("label"), 0)), sample)


def test_save_load_keeps_the_map(encoder, catalog, sample, tmp_path):
    m = CatalogMatcher(encoder, k=3, progress=False).fit(catalog)
    m.calibrate(labelled(m, sample.slice(0, 150)), sample.slice(0, 150))
    m.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["format_version"] == 4 and manifest["score_map"]["source"] == "labels"
    loaded = CatalogMatcher.load(tmp_path / "m", progress=False)
    assert loaded.score_map_ == m.score_map_ and loaded.threshold_ == m.threshold_
    listings = sample.slice(150, 60)
    np.testing.assert_allclose(loaded.match(listings).column("score").to_numpy(), m.match(listings).column("score").to_numpy(), atol=1e-6)
    # the default map is written out too
    CatalogMatcher(encoder, k=3, progress=False).fit(catalog).save(tmp_path / "d")
    assert CatalogMatcher.load(tmp_path / "d", progress=False).score_map_ == default_score_map(True)
    # a damaged map is refused by name
    bad = json.loads((tmp_path / "d" / MANIFEST).read_text())
    bad["score_map"]["slope"] = -1.0
    files = [k for k in bad.pop("checksums")]
    fields = {k: v for k, v in bad.items() if k not in ("format", "format_version")}
    (tmp_path / "d" / MANIFEST).unlink()
    _storage.write_manifest(tmp_path / "d", MANIFEST, format=MATCHER_FORMAT, version=4, fields=fields, files=files)
    with pytest.raises(CorruptFileError, match="score map"):
        CatalogMatcher.load(tmp_path / "d", progress=False)


def test_a_folder_before_version_4_scores_as_before(encoder, catalog, sample, tmp_path):
    m = CatalogMatcher(encoder, k=3, progress=False).fit(catalog)
    m.save(tmp_path / "m")
    body = json.loads((tmp_path / "m" / MANIFEST).read_text())
    files = list(body.pop("checksums"))
    fields = {k: v for k, v in body.items() if k not in ("format", "format_version", "score_map")}
    fields["threshold"] = 0.5  # what version 3 wrote: the threshold in use, raw scale
    (tmp_path / "m" / MANIFEST).unlink()
    _storage.write_manifest(tmp_path / "m", MANIFEST, format=MATCHER_FORMAT, version=3, fields=fields, files=files)
    old = CatalogMatcher.load(tmp_path / "m", progress=False)
    # raw scores and the threshold it was saved with, as version 3 gave
    assert old.score_map_ is None and old.threshold_ == 0.5
    listings = sample.slice(0, 60)
    got, raw = old.match(listings), raw_twin(m).match(listings)
    np.testing.assert_allclose(got.column("score").to_numpy(), raw.column("score").to_numpy(), atol=1e-6)
    assert got.column("is_match").to_pylist() == [s >= 0.5 for s in got.column("score").to_pylist()]
    assert got.schema.metadata is None
