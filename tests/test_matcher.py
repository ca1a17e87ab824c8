"""CatalogMatcher: retrieval, exact re-scoring, the pair-model stage, calibration, image fusion, bad input.

Real titles: the bundled PriceRunner sample (offers matched to product names)
always; an Abt-Buy slice when ``../shared/data`` is there.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from _helpers import data_rows, products

from simsearch import CatalogMatcher
from simsearch._tables import MissingColumnError
from simsearch.applications import PairScoring, best_f1_threshold
from simsearch.applications.match_calibration import default_score_map
from simsearch.applications.pair_model import DEFAULT_PAIR_MODEL_DIR, default_pair_model
from simsearch.errors import NotFittedError


@pytest.fixture(scope="module")
def offers(sample: pa.Table) -> pa.Table:
    """The listings to match: the sample's offers."""
    return sample


@pytest.fixture(scope="module")
def catalog(offers: pa.Table) -> pa.Table:
    return products(offers)


@pytest.fixture(scope="module")
def matcher(encoder, catalog) -> CatalogMatcher:
    return CatalogMatcher(encoder, k=3, progress=False).fit(catalog)


shipped = pytest.mark.skipif(not (DEFAULT_PAIR_MODEL_DIR / "pair_model.json").is_file(), reason="no shipped pair model")


def truth_of(offers: pa.Table) -> dict:
    return dict(zip(offers.column("id").to_pylist(), offers.column("cluster_id").to_pylist()))


def test_match_finds_the_product(matcher, offers, catalog):
    result = matcher.match(offers)
    assert result.column_names == ["listing_id", "product_id", "score", "rank", "is_match"]
    assert result.schema.field("score").type == pa.float32()
    assert result.schema.field("product_id").type == catalog.schema.field("id").type
    assert result.num_rows == 3 * offers.num_rows
    top = result.filter(pc.equal(result.column("rank"), 1))
    truth = truth_of(offers)
    accuracy = np.mean([truth[r["listing_id"]] == r["product_id"] for r in top.to_pylist()])
    assert accuracy >= 0.9
    # listings keep their input order; ranks run 1..k with scores descending
    assert top.column("listing_id").to_pylist() == offers.column("id").to_pylist()
    for i in range(0, 30, 3):
        rows = result.slice(i, 3).to_pylist()
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
    assert result.column("is_match").to_pylist() == [s >= matcher.threshold_ for s in result.column("score").to_pylist()]


def test_lexical_scores_beat_the_embedding_alone(encoder, catalog, offers):
    truth = truth_of(offers)

    def accuracy(m: CatalogMatcher) -> float:
        top = m.fit(catalog).match(offers)
        top = top.filter(pc.equal(top.column("rank"), 1)).to_pylist()
        return float(np.mean([truth[r["listing_id"]] == r["product_id"] for r in top]))

    lexical = CatalogMatcher(encoder, k=1, progress=False)
    assert accuracy(lexical) > accuracy(CatalogMatcher(encoder, k=1, lexical=False, progress=False))


@shipped
def test_default_pair_model_gives_probabilities(encoder, catalog, offers):
    """With no labels, the shipped pair model re-scores the best candidates: scores are probabilities."""
    sample = offers.slice(0, 30)
    m = CatalogMatcher(encoder, k=2, rerank=4, progress=False, pair_model="default").fit(catalog)
    result = m.match(sample)
    scores = result.column("score").to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))
    assert m.threshold_ == default_pair_model().threshold
    assert result.column("is_match").to_pylist() == [s >= m.threshold_ for s in scores]
    top = result.filter(pc.equal(result.column("rank"), 1))
    truth = truth_of(sample)
    assert np.mean([truth[r["listing_id"]] == r["product_id"] for r in top.to_pylist()]) >= 0.7
    # score_pairs gives the same probabilities (int8 activations are scaled per batch: close, not equal).
    pairs = pa.table({"listing_id": result.column("listing_id"), "product_id": result.column("product_id")})
    np.testing.assert_allclose(m.score_pairs(pairs, sample), scores, atol=0.05)


@shipped
def test_saved_matcher_keeps_its_pair_model(encoder, catalog, offers, tmp_path):
    m = CatalogMatcher(encoder, k=1, rerank=2, progress=False, pair_model="default").fit(catalog.slice(0, 30))
    m.save(tmp_path / "m")
    loaded = CatalogMatcher.load(tmp_path / "m", progress=False)
    assert loaded.pair_model == "default" and loaded.threshold_ == m.threshold_
    plain = CatalogMatcher(encoder, k=1, progress=False).fit(catalog.slice(0, 5))
    plain.save(tmp_path / "p")
    assert CatalogMatcher.load(tmp_path / "p", progress=False).pair_model is None
    model = default_pair_model()
    custom = CatalogMatcher(encoder, k=1, rerank=2, progress=False, pair_model=model.directory).fit(catalog.slice(0, 30))
    custom.save(tmp_path / "c")
    assert (tmp_path / "c" / "pair_model" / "pair_model.json").is_file()
    again = CatalogMatcher.load(tmp_path / "c", progress=False)
    listing = offers.slice(0, 5)
    np.testing.assert_allclose(again.match(listing).column("score").to_numpy(), custom.match(listing).column("score").to_numpy(), atol=1e-6)


def test_scores_match_score_pairs(matcher, offers):
    result = matcher.match(offers.slice(0, 20))
    pairs = pa.table({"listing_id": result.column("listing_id"), "product_id": result.column("product_id")})
    direct = matcher.score_pairs(pairs, offers.slice(0, 20))
    np.testing.assert_allclose(direct, result.column("score").to_numpy(), rtol=1e-5, atol=1e-6)


def labelled_pairs(matcher: CatalogMatcher, offers: pa.Table) -> pa.Table:
    result = matcher.match(offers)
    truth = truth_of(offers)
    labels = [int(truth[a] == b) for a, b in zip(result.column("listing_id").to_pylist(), result.column("product_id").to_pylist())]
    return pa.table({"listing_id": result.column("listing_id"), "product_id": result.column("product_id"), "label": labels})


def test_calibrate_maximizes_f1(encoder, catalog, offers):
    m = CatalogMatcher(encoder, k=3, progress=False).fit(catalog)
    pairs = labelled_pairs(m, offers)
    cal = m.calibrate(pairs, offers)
    scores = m.score_pairs(pairs, offers)
    ref = best_f1_threshold(scores, pairs.column("label").to_numpy())
    assert cal == ref
    assert cal.f1 >= 0.85 and cal.n_labelled == pairs.num_rows
    assert m.threshold_ == cal.threshold
    after = m.match(offers)
    assert after.column("is_match").to_pylist() == [s >= cal.threshold for s in after.column("score").to_pylist()]


def test_calibrate_with_titles_in_the_pairs(matcher, offers):
    titles = dict(zip(offers.column("id").to_pylist(), offers.column("title").to_pylist()))
    pairs = labelled_pairs(matcher, offers.slice(0, 40))
    with_titles = pairs.append_column("title", pa.array([titles[i] for i in pairs.column("listing_id").to_pylist()]))
    # The int8 encoder quantizes activations per batch, so a title's vector
    # moves slightly with the other titles of its batch (here 120 vs 301).
    np.testing.assert_allclose(matcher.score_pairs(with_titles), matcher.score_pairs(pairs, offers), atol=0.02)


def test_image_fusion(encoder):
    catalog = pa.table({"id": [1, 2], "title": ["red kettle 1.7 l", "red kettle 1.7 l"], "img": [[1.0, 0.0], [0.0, 1.0]]})
    listings = pa.table({"id": ["a"], "title": ["red kettle 1.7 l"], "img": [[0.1, 0.9]]})
    text_m = CatalogMatcher(encoder, k=2, progress=False).fit(catalog)
    fused_m = CatalogMatcher(encoder, k=2, image_col="img", image_weight=0.5, progress=False).fit(catalog)
    text_m.score_map_ = fused_m.score_map_ = None  # the fusion is on the raw scores
    text_only, fused = text_m.match(listings), fused_m.match(listings)
    assert text_only.column("score")[0].as_py() == pytest.approx(text_only.column("score")[1].as_py())
    assert fused.column("product_id").to_pylist() == [2, 1]
    cos = 0.9 / np.hypot(0.1, 0.9)
    raw = 0.5 * text_only.column("score")[0].as_py() + 0.5 * cos
    assert fused.column("score")[0].as_py() == pytest.approx(raw, rel=1e-5)
    # by default the fused score goes through the text score's map
    fused_m.score_map_ = default_score_map(True)
    assert fused_m.match(listings).column("score")[0].as_py() == pytest.approx(float(default_score_map(True).apply(raw)), rel=1e-5)


def test_k_larger_than_the_catalog(encoder):
    m = CatalogMatcher(encoder, k=10, progress=False).fit({"id": [1, 2], "title": ["a b c", "d e f"]})
    assert m.match({"id": [7], "title": ["a b"]}).num_rows == 2


def test_empty_listings_give_an_empty_table(matcher):
    out = matcher.match(pa.table({"id": pa.array([], pa.int64()), "title": pa.array([], pa.string())}))
    assert out.num_rows == 0 and out.column_names == ["listing_id", "product_id", "score", "rank", "is_match"]


def test_bad_input(encoder, matcher, tmp_path):
    with pytest.raises(MissingColumnError, match="catalog has no column 'title'"):
        CatalogMatcher(encoder).fit({"id": [1], "name": ["x"]})
    with pytest.raises(ValueError, match="catalog is empty"):
        CatalogMatcher(encoder).fit(pa.table({"id": pa.array([], pa.int64()), "title": pa.array([], pa.string())}))
    with pytest.raises(FileNotFoundError):
        CatalogMatcher(encoder).fit(tmp_path / "nope.csv")
    with pytest.raises(NotFittedError, match="not fitted"):
        CatalogMatcher(encoder).match({"id": [1], "title": ["x"]})
    with pytest.raises(MissingColumnError, match="no column 'title'"):
        matcher.match({"id": [1], "name": ["x"]})
    with pytest.raises(ValueError, match="product ids not in the catalog"):
        matcher.calibrate({"listing_id": [1], "product_id": [-5], "label": [1], "title": ["x"]})
    with pytest.raises(ValueError, match="no positive"):
        matcher.calibrate({"listing_id": [1], "product_id": [matcher.product_ids_[0].as_py()], "label": [0], "title": ["x"]})
    with pytest.raises(ValueError, match="k must"):
        CatalogMatcher(encoder, k=0)
    with pytest.raises(ValueError, match="image_encoder"):
        CatalogMatcher(encoder, image_col="img").fit({"id": [1], "title": ["x"], "img": ["a.jpg"]})
    with pytest.raises(ValueError, match="vector_weight"):
        PairScoring(vector_weight=2.0)
    with pytest.raises(ValueError, match="rerank"):
        CatalogMatcher(encoder, rerank=0)
    with pytest.raises(TypeError, match="pair_model"):
        CatalogMatcher(encoder, pair_model=3).fit({"id": [1], "title": ["x"]}).match({"id": [1], "title": ["x"]})


def test_abt_buy_slice_recall(encoder):
    abt, buy = data_rows("abt_buy/leipzig/abt.csv", "cp1252")[:150], data_rows("abt_buy/leipzig/buy.csv", "cp1252")
    mapping = data_rows("abt_buy/leipzig/abt_buy_perfect_mapping.csv", "ascii")
    abt_ids = {r["id"] for r in abt}
    truth = {(m["idAbt"], m["idBuy"]) for m in mapping if m["idAbt"] in abt_ids}
    wanted = {b for _, b in truth}
    # the true matches plus as many other Buy products as distractors
    others = [r for r in buy if r["id"] not in wanted][: len(wanted)]
    catalog = pa.table({"id": [r["id"] for r in buy if r["id"] in wanted] + [r["id"] for r in others],
                        "title": [r["name"] for r in buy if r["id"] in wanted] + [r["name"] for r in others]})
    listings = pa.table({"id": [r["id"] for r in abt], "title": [r["name"] for r in abt]})
    result = CatalogMatcher(encoder, k=5, progress=False).fit(catalog).match(listings)
    hits = {(a, b) for a, b, rank in zip(result.column("listing_id").to_pylist(), result.column("product_id").to_pylist(), result.column("rank").to_pylist()) if rank == 1}
    listed = {a for a, _ in truth}
    recall1 = len({a for a, b in hits if (a, b) in truth}) / len(listed)
    assert recall1 >= 0.85
