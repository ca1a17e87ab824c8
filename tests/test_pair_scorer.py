"""The learned second stage: pair features, fit_pairs/match, save/load, bad input.

Features are checked on hand-made tricky titles (model codes, units, prices);
learning, matching and saving on an Abt-Buy slice when ``../shared/data`` is there.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from simsearch import CatalogMatcher
from simsearch._tables import MissingColumnError
from simsearch.errors import CorruptFileError, FormatVersionError
from simsearch.applications import FeatureConfig, PairScorer
from simsearch.applications.lexical import LexicalModel
from simsearch.applications.pair_scorer import BASE_FEATURES, PairSide, best_candidate_scores, pair_features

from _helpers import require_data

ABT_BUY = "abt_buy/deepmatcher"


# -- features on known pairs ---------------------------------------------------

LISTINGS = ['Sony KDL-40V4100 40" LCD TV', "Samsung UE55MU6100 55 inch", "SanDisk Cruzer 64GB USB", "Apple iPhone"]
PRODUCTS = ["sony bravia kdl40v4100 40 inch lcd", "samsung ue55mu6120 55 inch", "sandisk cruzer 128 gb usb", "leather case"]


def sides(prices_l, prices_r, extra_l, extra_r) -> tuple[PairSide, PairSide]:
    lexical = LexicalModel().fit(PRODUCTS)
    # Vectors are arbitrary unit rows: these tests are about the lexical features.
    rng = np.random.default_rng(0)
    vl = rng.normal(size=(4, 8)).astype(np.float32)
    vr = rng.normal(size=(4, 8)).astype(np.float32)
    vl /= np.linalg.norm(vl, axis=1, keepdims=True)
    vr /= np.linalg.norm(vr, axis=1, keepdims=True)
    left = PairSide(vl, lexical.transform(LISTINGS), LISTINGS, {"price": prices_l, "brand": extra_l})
    right = PairSide(vr, lexical.transform(PRODUCTS), PRODUCTS, {"price": prices_r, "brand": extra_r})
    return left, right


def test_features_on_tricky_titles():
    config = FeatureConfig(price_col="price", extra_cols=("brand",))
    left, right = sides(["$1,299.00", 100, None, 5], ["1299", 80.0, 20.0, 5], ["Sony", "samsung", None, "apple inc"], ["sony", "lg", "sandisk", "apple"])
    rows = np.array([0, 1, 2, 3, 0])
    prods = np.array([0, 1, 2, 3, 1])
    best = best_candidate_scores(left, right, rows, prods, 4)
    X = pair_features(config, left, right, rows, prods, best)
    f = {name: X[:, j] for j, name in enumerate(config.names)}
    assert config.names[: len(BASE_FEATURES)] == list(BASE_FEATURES)
    assert X.shape == (5, len(BASE_FEATURES) + 2)
    # kdl-40v4100 == kdl40v4100: a shared code, contained in the other title; 40" == 40 inch.
    assert f["code_shared"][0] == 1 and f["code_contained"][0] == 1 and f["code_conflict"][0] == 0
    assert f["measure_shared"][0] == 1 and f["measure_conflict"][0] == 0
    # ue55mu6100 against ue55mu6120: two variants of one line.
    assert f["code_conflict"][1] == 1 and f["code_shared"][1] == 0 and f["code_contained"][1] == 0
    # 64GB against 128 gb: both state GB, never the same value.
    assert f["measures_both"][2] == 1 and f["measure_conflict"][2] == 1 and f["measure_shared"][2] == 0
    # no codes, no measures on either side.
    assert f["codes_both"][3] == 0 and f["measures_both"][3] == 0 and f["code_contained"][3] == 0
    # prices: $1,299.00 vs 1299 -> 1; 100 vs 80 -> 0.8; missing -> NaN.
    assert f["price_ratio"][0] == pytest.approx(1.0) and f["price_ratio"][1] == pytest.approx(0.8)
    assert np.isnan(f["price_ratio"][2])
    # text column: word Jaccard, case-folded; missing -> NaN.
    assert f["brand_similarity"][0] == 1.0 and f["brand_similarity"][1] == 0.0
    assert np.isnan(f["brand_similarity"][2]) and f["brand_similarity"][3] == pytest.approx(0.5)
    # margins: 0 for each listing's best candidate, negative for the others.
    emb = f["embedding_cosine"]
    assert f["embedding_margin"][0] == pytest.approx(min(0.0, emb[0] - max(emb[0], emb[4])))
    assert (f["embedding_margin"] <= 0).all() and (f["tfidf_margin"] <= 0).all()
    assert f["tfidf_margin"][0] == 0.0 and f["tfidf_margin"][4] < 0
    assert f["tfidf_cosine"][0] > f["tfidf_cosine"][4]


def test_scorer_learns_a_rule_and_explains_it(tmp_path, rng):
    X = rng.uniform(size=(400, 3))
    y = (X[:, 1] > 0.6).astype(int)  # only the second feature decides
    scorer = PairScorer(learner="logistic", calibration="sigmoid").fit(X, y, ["noise_a", "signal", "noise_b"])
    p = scorer.predict_proba(X)
    assert ((p >= 0.5) == y).mean() > 0.9
    why = scorer.contributions(X[y == 1][:20], top=1)
    assert sum(w[0].startswith("signal=+") for w in why if w) >= 18
    scorer.save(tmp_path / "s.skops")
    again = PairScorer.load(tmp_path / "s.skops")
    assert np.array_equal(again.predict_proba(X), p)


def test_scorer_refuses_one_class_and_bad_shapes():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="all non-matches"):
        PairScorer().fit(X, np.zeros(10, dtype=int), ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 are needed"):
        PairScorer().fit(X, np.r_[1, np.zeros(9, dtype=int)], ["a", "b"])
    with pytest.raises(ValueError, match="learner must be one of"):
        PairScorer(learner="forest").fit(X, np.r_[1, 1, np.zeros(8, dtype=int)], ["a", "b"])


# -- bad input to fit_pairs (refused before anything is encoded) -------------------

LISTING_TABLE = {"id": ["l1", "l2", "l3"], "title": ["sony kdl40v4100", "samsung ue55mu6100", "apple iphone 8"]}
CATALOG_TABLE = {"id": [1, 2, 3], "title": ["sony bravia kdl-40v4100", "samsung ue55mu6120", "iphone 8 64gb"]}


def test_fit_pairs_bad_input():
    m = CatalogMatcher()
    pairs = {"listing_id": ["l1", "l2", "l3"], "product_id": [1, 2, 3], "label": [1, 0, 1]}
    with pytest.raises(ValueError, match=r"name 1 listing_id values not in listings, e.g. \['nope'\]"):
        m.fit_pairs({**pairs, "listing_id": ["l1", "nope", "l3"]}, LISTING_TABLE, CATALOG_TABLE)
    with pytest.raises(ValueError, match=r"name 1 product_id values not in catalog, e.g. \[9\]"):
        m.fit_pairs({**pairs, "product_id": [1, 9, 3]}, LISTING_TABLE, CATALOG_TABLE)
    with pytest.raises(ValueError, match=r"holds only matches \(1\)"):
        m.fit_pairs({**pairs, "label": [1, 1, 1]}, LISTING_TABLE, CATALOG_TABLE)
    with pytest.raises(ValueError, match=r"valid_pairs holds only non-matches \(0\)"):
        m.fit_pairs(pairs, LISTING_TABLE, CATALOG_TABLE, valid_pairs={**pairs, "label": [0, 0, 0]})
    with pytest.raises(ValueError, match="must hold 0 or 1, found 2"):
        m.fit_pairs({**pairs, "label": [1, 2, 0]}, LISTING_TABLE, CATALOG_TABLE)
    with pytest.raises(ValueError, match="catalog is empty"):
        m.fit_pairs(pairs, LISTING_TABLE, {"id": [], "title": []})
    with pytest.raises(ValueError, match="pairs is empty"):
        m.fit_pairs({"listing_id": [], "product_id": [], "label": []}, LISTING_TABLE, CATALOG_TABLE)
    with pytest.raises(MissingColumnError, match="catalog has no column 'price'"):
        m.fit_pairs(pairs, {**LISTING_TABLE, "price": [1, 2, 3]}, CATALOG_TABLE, price_col="price")
    with pytest.raises(ValueError, match="lexical=True"):
        CatalogMatcher(lexical=False).fit_pairs(pairs, LISTING_TABLE, CATALOG_TABLE)


def test_load_refuses_foreign_and_newer_directories(tmp_path):
    with pytest.raises(ValueError, match="not a saved CatalogMatcher: it has no matcher.json"):
        CatalogMatcher.load(tmp_path)
    (tmp_path / "matcher.json").write_text(json.dumps({"format": "something-else", "format_version": 1}))
    with pytest.raises(ValueError, match="format 'something-else'"):
        CatalogMatcher.load(tmp_path)
    (tmp_path / "matcher.json").write_text(json.dumps({"format": "simsearch-catalog-matcher", "format_version": 7}))
    with pytest.raises(FormatVersionError, match="format_version 7; this simsearch reads \\[1, 2, 3, 4\\].*upgrade"):
        CatalogMatcher.load(tmp_path)
    (tmp_path / "matcher.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        CatalogMatcher.load(tmp_path)


# -- learning on an Abt-Buy slice -------------------------------------------------------


def _read(name: str) -> pa.Table:
    import pyarrow.csv as pcsv

    return pcsv.read_csv(require_data(f"{ABT_BUY}/{name}"), convert_options=pcsv.ConvertOptions(strings_can_be_null=True))


def _pairs(name: str, left_ids: set[int]) -> pa.Table:
    t = _read(name)
    t = t.filter(pc.is_in(t.column("ltable_id"), pa.array(sorted(left_ids))))
    return pa.table({"listing_id": t.column("ltable_id"), "product_id": t.column("rtable_id"), "label": t.column("label")})


@pytest.fixture(scope="module")
def slice_():
    """Abt products 0-399 as listings, the Buy products their pairs name as the catalog; price column.

    The encoders use the ordinary simsearch cache: exports are keyed by the
    model's content, so the bundled model is exported once per machine, not per run.
    """
    require_data(f"{ABT_BUY}/train.csv")
    ids = set(range(400))
    a = _read("tableA.csv").rename_columns(["id", "title", "description", "price"])
    b = _read("tableB.csv").rename_columns(["id", "title", "description", "price"])
    a = a.filter(pc.is_in(a.column("id"), pa.array(sorted(ids)))).select(["id", "title", "price"])
    splits = {name: _pairs(f"{name}.csv", ids) for name in ("train", "valid", "test")}
    named = pa.concat_arrays([t.column("product_id").combine_chunks() for t in splits.values()])
    b = b.filter(pc.is_in(b.column("id"), named)).select(["id", "title", "price"])
    return {"listings": a, "catalog": b, **splits}


@pytest.fixture(scope="module")
def learned(slice_):
    from simsearch import TextEncoder

    m = CatalogMatcher(TextEncoder(num_threads=1), k=3, progress=False)
    return m.fit_pairs(slice_["train"], slice_["listings"], slice_["catalog"], valid_pairs=slice_["valid"], finetune=False, price_col="price")


def _f1(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    pred = scores >= threshold
    tp = (pred & (labels == 1)).sum()
    return 2 * tp / max(pred.sum() + (labels == 1).sum(), 1)


def test_two_stage_beats_the_embedding_cosine(learned, slice_):
    from simsearch.applications import best_f1_threshold

    test, valid = slice_["test"], slice_["valid"]
    y = test.column("label").to_numpy()
    probs = learned.score_pairs(test, slice_["listings"])
    assert probs.dtype == np.float32 and ((probs >= 0) & (probs <= 1)).all()
    two_stage = _f1(probs, y, learned.threshold_)

    # The baseline: the same int8 embeddings' cosine, threshold of best F1 on valid.
    listings = learned.encoder_.encode(slice_["listings"].column("title").to_pylist())
    row = {v: i for i, v in enumerate(slice_["listings"].column("id").to_pylist())}
    product = {v: i for i, v in enumerate(slice_["catalog"].column("id").to_pylist())}

    def cosine(pairs: pa.Table) -> np.ndarray:
        a = listings[[row[v] for v in pairs.column("listing_id").to_pylist()]]
        b = learned.catalog_.vectors[[product[v] for v in pairs.column("product_id").to_pylist()]]
        return np.einsum("ij,ij->i", a, b)

    cal = best_f1_threshold(cosine(valid), valid.column("label").to_numpy())
    baseline = _f1(cosine(test), y, cal.threshold)
    assert two_stage > baseline + 0.15, (two_stage, baseline)
    assert learned.calibration_ is not None and 0 < learned.threshold_ < 1


def test_match_schema_and_explanations(learned, slice_):
    listings = slice_["listings"].slice(0, 50)
    result = learned.match(listings)
    assert result.column_names == ["listing_id", "product_id", "score", "rank", "is_match", "top_features"]
    assert result.schema.field("top_features").type == pa.list_(pa.string())
    assert result.num_rows == 150
    scores = result.column("score").to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert result.column("is_match").to_pylist() == [s >= learned.threshold_ for s in scores]
    names = set(FeatureConfig(price_col="price").names)
    explained = [e for row in result.column("top_features").to_pylist() for e in row]
    assert explained and all(e.split("=")[0] in names and e.split("=")[1][0] in "+-" for e in explained)
    # match() and score_pairs() agree on the pairs match() returned (same listings, so the
    # int8 encoder sees the same batches).
    pairs = pa.table({"listing_id": result.column("listing_id"), "product_id": result.column("product_id")})
    np.testing.assert_array_equal(learned.score_pairs(pairs, listings), scores)
    # listings without the price column are refused with the column named.
    with pytest.raises(MissingColumnError, match="no column 'price'"):
        learned.match(slice_["listings"].select(["id", "title"]))


def test_save_load_round_trip(learned, slice_, tmp_path):
    learned.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "matcher.json").read_text())
    assert manifest["format_version"] == 4 and "pair_scorer.skops" in manifest["checksums"]
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in (tmp_path / "m").rglob("*"))
    loaded = CatalogMatcher.load(tmp_path / "m", progress=False)
    assert loaded.threshold_ == learned.threshold_
    listings = slice_["listings"].slice(0, 40)
    a, b = learned.match(listings), loaded.match(listings)
    assert a.equals(b)
    np.testing.assert_array_equal(
        learned.score_pairs(slice_["test"], slice_["listings"]), loaded.score_pairs(slice_["test"], slice_["listings"])
    )
    with pytest.raises(FileExistsError):
        learned.save(tmp_path / "m")
    # a newer version or a changed file is refused
    manifest["format_version"] = 5
    (tmp_path / "m" / "matcher.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="format_version 5"):
        CatalogMatcher.load(tmp_path / "m")
    # a folder of format version 1 (checksums under "files", the calibration's n_pairs) still loads
    old = {**manifest, "format_version": 1, "files": manifest["checksums"]}
    del old["checksums"]
    # Versions 1 and 2 predate the pair model and its parameters.
    old["params"] = {k: v for k, v in manifest["params"].items() if k not in ("pair_model", "rerank")}
    if old["calibration"] is not None:
        old["calibration"] = {k: old["calibration"][k] for k in ("threshold", "f1", "precision", "recall", "n_positive")}
        old["calibration"]["n_pairs"] = manifest["calibration"]["n_labelled"]
    (tmp_path / "m" / "matcher.json").write_text(json.dumps(old))
    old_loaded = CatalogMatcher.load(tmp_path / "m", progress=False)
    assert old_loaded.match(listings).equals(a) and old_loaded.threshold_ == learned.threshold_
    with open(tmp_path / "m" / "pair_scorer.skops", "ab") as f:
        f.write(b"x")
    with pytest.raises(CorruptFileError, match="checksum of pair_scorer.skops"):
        CatalogMatcher.load(tmp_path / "m")
    (tmp_path / "m" / "matcher.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(CorruptFileError, match="pair_scorer.skops' does not match its checksum"):
        CatalogMatcher.load(tmp_path / "m")


def test_fit_pairs_fine_tunes_the_encoder(slice_, tmp_path):
    from simsearch import TextEncoder

    train = slice_["train"].slice(0, 60)
    listings = slice_["listings"].filter(pc.is_in(slice_["listings"].column("id"), train.column("listing_id")))
    catalog = slice_["catalog"].filter(pc.is_in(slice_["catalog"].column("id"), train.column("product_id")))
    m = CatalogMatcher(TextEncoder(precision="fp32", num_threads=1), k=2, progress=False)
    m.fit_pairs(
        train, listings, catalog, finetune_dir=tmp_path / "enc",
        finetune_params={"epochs": 1, "batch_size": 4, "max_length": 16, "trainable_layers": 1, "validation_fraction": 0.3},
    )
    assert m.finetune_dir_ == tmp_path / "enc"
    assert m.encoder_.source.path == tmp_path / "enc" and m.encoder_.precision == "fp32"
    assert json.loads((tmp_path / "enc" / "simsearch_finetune.json").read_text())["train_pairs"] < 60
    assert m.match(listings.slice(0, 5)).num_rows == 10


def test_command_line_train_save_match(slice_, tmp_path):
    import pyarrow.csv as pcsv

    from simsearch.cli import main

    listings = slice_["listings"].slice(0, 60)
    train = slice_["train"].filter(pc.is_in(slice_["train"].column("listing_id"), listings.column("id")))
    catalog = slice_["catalog"].filter(pc.is_in(slice_["catalog"].column("id"), train.column("product_id")))
    for name, table in (("listings", listings), ("catalog", catalog), ("pairs", train)):
        pcsv.write_csv(table, tmp_path / f"{name}.csv")
    args = [str(tmp_path / f"{n}.csv") for n in ("pairs", "listings", "catalog")]
    assert main(["-q", "train-matcher", *args, "--out", str(tmp_path / "m"), "--no-finetune", "--price-col", "price"]) == 0
    assert (tmp_path / "m" / "matcher.json").is_file()
    out = tmp_path / "result.csv"
    assert main(["-q", "match", str(tmp_path / "m"), str(tmp_path / "listings.csv"), "--out", str(out)]) == 0
    result = pcsv.read_csv(out)
    assert result.column_names == ["listing_id", "product_id", "score", "rank", "is_match", "top_features"]
    assert result.num_rows == 5 * listings.num_rows
    # bad input ends with exit status 2, not a traceback
    bad = tmp_path / "bad.csv"
    pcsv.write_csv(train.set_column(2, "label", pa.array([1] * train.num_rows)), bad)
    assert main(["-q", "train-matcher", str(bad), *args[1:], "--out", str(tmp_path / "n"), "--no-finetune"]) == 2
