"""Pair-matching data sets and the one evaluation path of ``matching.py`` and ``generalization.py``.

Not a script: both benchmarks import it (after ``import _common``), so the
supervised and zero-shot figures of the two come from the same code.

Data layouts read:

- **DeepMatcher** folders (``tableA.csv``, ``tableB.csv``, and
  ``train.csv``, ``valid.csv``, ``test.csv`` of ``ltable_id, rtable_id,
  label``): each record is serialized over every column but ``id``;
- **Ditto** folders (``train.txt[.size]``, ``valid.txt[.size]``,
  ``test.txt``: ``left TAB right TAB label``, records already serialized).

:func:`read_split` reads one split's file and nothing else, so a zero-shot run
on a folder holding only ``tableA.csv``, ``tableB.csv`` and ``test.csv`` reads
those three.
"""

from __future__ import annotations

import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import numpy as np

from simsearch.applications.calibration import (
    expected_calibration_error,
    format_reliability,
    reliability_table,
)
from simsearch.applications.metrics import best_f1_threshold
from simsearch.applications.pair_model import PairModel, default_pair_model, serialize

#: Ditto's attribute markers; removing them leaves a record's values (PROVENANCE.md gives the regex).
MARKERS = re.compile(r"(?:^|\s)COL \S+ VAL(?=\s|$)")
#: Products the default CatalogMatcher returns per listing in :func:`matcher_candidates`.
MATCHER_K = 5

#: The one recipe, for the shipped model and every supervised run (no per-dataset tuning).
RECIPE = {"layers": 3, "max_length": 64, "epochs": 1.0, "batch_size": 16, "learning_rate": 5e-5}
#: Most training pairs of one supervised run: the CPU budget of a run (steps = pairs / 16).
TRAIN_CAP = 1600
#: The fine-tuned fp32 torch model behind the shipped pair model (for the speed comparison).
POOL_TORCH_DIR = _common.CACHE_DIR / "pair_model_torch"
TERMS = (
    "DeepMatcher / Magellan benchmark data (Mudgal et al., SIGMOD 2018), as serialized by Ditto "
    "(megagonlabs/ditto, Apache-2.0 repository); licence of the data as redistributed: BSD-3-Clause "
    "(megagonlabs/rotom data/README.md, reading the DeepMatcher repository). No licence written by the "
    "data's creators was found (see ../shared/data/er_benchmarks/PROVENANCE.md)."
)
ER = _common.DATA_DIR / "er_benchmarks"
ABT_BUY = _common.DATA_DIR / "abt_buy" / "deepmatcher"
Pair = tuple[str, str, int]


@dataclass(frozen=True)
class Dataset:
    """One benchmark: where its splits are, its anchors and the best published F1 we cite."""

    name: str
    folder: Path
    suffix: str = ""  # Ditto train/valid size suffix (".small" for WDC)
    tfidf_anchor: float | None = None  # char 3-5-gram TF-IDF test F1, threshold from valid (PROVENANCE.md)
    published: tuple[float, str] | None = None


_DITTO = "Ditto (Li et al., PVLDB 14(1) 2021, Table 4/5)"
_WDC = "Ditto (Li et al., PVLDB 14(1) 2021, Table 6, small)"
#: Every set of generalization.py. Published figures: Ditto's paper, full
#: Ditto with all optimizations; WDC at the "small" training size. Abt-Buy:
#: R-SupCon (Peeters & Bizer 2022) 94.3 is the best supervised figure cited.
DATASETS = {
    d.name: d
    for d in (
        Dataset("abt_buy", ABT_BUY, "", 0.616, (0.943, "R-SupCon (Peeters & Bizer, 2022); Ditto 0.893")),
        Dataset("beer", ER / "beer" / "structured", "", 0.828, (0.9437, _DITTO)),
        Dataset("itunes_amazon", ER / "itunes_amazon" / "structured", "", 0.556, (0.9706, _DITTO)),
        Dataset("itunes_amazon_dirty", ER / "itunes_amazon" / "dirty", "", 0.563, (0.9565, _DITTO)),
        Dataset("fodors_zagats", ER / "fodors_zagats" / "structured", "", 0.952, (1.0, _DITTO)),
        Dataset("dblp_acm", ER / "dblp_acm" / "structured", "", 0.920, (0.9899, _DITTO)),
        Dataset("dblp_acm_dirty", ER / "dblp_acm" / "dirty", "", 0.914, (0.9903, _DITTO)),
        Dataset("dblp_scholar", ER / "dblp_scholar" / "structured", ".balance", 0.880, (0.9560, _DITTO)),
        Dataset("dblp_scholar_dirty", ER / "dblp_scholar" / "dirty", "", 0.882, (0.9575, _DITTO)),
        Dataset("wdc_computers", ER / "wdc_computers", ".small", 0.559, (0.8076, _WDC)),
        Dataset("wdc_cameras", ER / "wdc_cameras", ".small", 0.549, (0.8089, _WDC)),
        Dataset("wdc_watches", ER / "wdc_watches", ".small", 0.563, (0.8512, _WDC)),
        Dataset("wdc_shoes", ER / "wdc_shoes", ".small", 0.507, (0.7589, _WDC)),
    )
}

#: The training pool of the shipped pair model: the Magellan / DeepMatcher
#: sets, whose licence as redistributed is BSD-3-Clause (megagonlabs/rotom's
#: reading of the DeepMatcher repository). WDC (terms unconfirmed), Abt-Buy
#: ("research and benchmarking use only"), PriceRunner and Shopee are left
#: out, so every product set is held out of the pool.
POOL = ("beer", "itunes_amazon", "itunes_amazon_dirty", "fodors_zagats", "dblp_acm", "dblp_acm_dirty", "dblp_scholar")
#: Most pairs of one pool set in the pool's train (valid) split: the citation
#: sets would otherwise swamp the rest, and the CPU budget is a few hundred steps.
POOL_TRAIN_CAP, POOL_VALID_CAP = 500, 250


def is_deepmatcher(folder: Path) -> bool:
    return (Path(folder) / "tableA.csv").is_file()


def _ditto_file(folder: Path, split: str, suffix: str) -> Path:
    path = folder / (f"{split}.txt{suffix}" if split != "test" else "test.txt")
    if not path.is_file() and split != "test":
        path = folder / f"{split}.txt"
    return path


def read_split(folder: Path | str, split: str, suffix: str = "") -> list[Pair]:
    """Labelled pairs of one split as serialized (left, right, label); reads that split's files only.

    Parameters
    ----------
    folder : path
        A DeepMatcher or Ditto folder.
    split : {"train", "valid", "test"}
    suffix : str
        Ditto size suffix of train/valid (``".small"``); ignored for DeepMatcher.

    Returns
    -------
    list of (str, str, int)
    """
    folder = Path(folder)
    if is_deepmatcher(folder):
        import pyarrow.csv as pcsv

        options = pcsv.ConvertOptions(strings_can_be_null=True)
        records = []
        for name in ("tableA", "tableB"):
            table = pcsv.read_csv(folder / f"{name}.csv", convert_options=options)
            columns = [c for c in table.column_names if c != "id"]
            rows = table.to_pylist()
            records.append({r["id"]: serialize(r, columns) for r in rows})
        pairs = pcsv.read_csv(folder / f"{split}.csv").to_pylist()
        return [(records[0][p["ltable_id"]], records[1][p["rtable_id"]], int(p["label"])) for p in pairs]
    out = []
    with open(_ditto_file(folder, split, suffix), encoding="utf-8") as f:
        for line in f:
            left, right, label = line.rstrip("\n").split("\t")
            out.append((left, right, int(label)))
    return out


def sample(pairs: list[Pair], cap: int, seed: int = 0) -> list[Pair]:
    """At most ``cap`` pairs, drawn at random with the class shares kept."""
    if len(pairs) <= cap:
        return list(pairs)
    rng = random.Random(seed)
    pos = [p for p in pairs if p[2] == 1]
    neg = [p for p in pairs if p[2] == 0]
    n_pos = max(1, round(cap * len(pos) / len(pairs)))
    return rng.sample(pos, min(n_pos, len(pos))) + rng.sample(neg, min(cap - n_pos, len(neg)))


def pool_pairs(split: str, exclude: tuple[str, ...] = ()) -> list[Pair]:
    """The shipped model's training (``"train"``) or calibration (``"valid"``) pairs."""
    cap = POOL_TRAIN_CAP if split == "train" else POOL_VALID_CAP
    out: list[Pair] = []
    for name in POOL:
        if name in exclude:
            continue
        d = DATASETS[name]
        out += sample(read_split(d.folder, split, d.suffix), cap, seed=len(out))
    random.Random(0).shuffle(out)
    return out


def prf(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    pred = probs >= threshold
    tp = int((pred & (labels == 1)).sum())
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int((labels == 1).sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4), "threshold": round(float(threshold), 4)}


def evaluate(model: PairModel, test: list[Pair], label: str) -> dict[str, Any]:
    """Score ``test`` with ``model`` at its own threshold; print F1, the reliability diagram and ECE."""
    y = np.array([p[2] for p in test])
    t0 = time.perf_counter()
    probs = model.predict_proba([p[0] for p in test], [p[1] for p in test])
    seconds = time.perf_counter() - t0
    out = prf(probs, y, model.threshold)
    out["oracle_f1"] = round(best_f1_threshold(probs, y).f1, 4)
    out["ece"] = round(expected_calibration_error(probs, y), 4)
    out["pairs_per_s"] = round(len(test) / seconds, 1)
    out["reliability"] = [[round(b.mean_predicted, 4), round(b.observed, 4), b.count] for b in reliability_table(probs, y)]
    print(f"{label}: F1 {out['f1']:.3f} (P {out['precision']:.3f}, R {out['recall']:.3f}, threshold {out['threshold']:.3f}; "
          f"oracle {out['oracle_f1']:.3f}); ECE {out['ece']:.3f}; {out['pairs_per_s']:.0f} pairs/s")
    print(format_reliability(reliability_table(probs, y)))
    return out


def speed_against_cross_encoder(model: PairModel, torch_dir: Path, pairs: list[Pair], threads: int = 2) -> dict[str, Any]:
    """Pairs per second of our int8 graph and of sentence-transformers' ``CrossEncoder`` fp32, same pairs.

    Both run the same fine-tuned weights (``torch_dir``), ``threads`` threads,
    batch 64 and the model's ``max_length``; ours counts the cross-encoder
    logits alone and the whole ``predict_proba`` (features, head, calibration).
    """
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    left, right = [p[0] for p in pairs], [p[1] for p in pairs]
    fast = PairModel(model.directory, max_length=model.max_length, head=model.head, calibrator=model.calibrator,
                     threshold=model.threshold, num_threads=threads)
    fast.logits(left[:8], right[:8])  # session start-up
    t0 = time.perf_counter()
    fast.logits(left, right)
    ours = len(pairs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    fast.predict_proba(left, right)
    ours_full = len(pairs) / (time.perf_counter() - t0)
    ce = CrossEncoder(str(torch_dir), max_length=model.max_length, device="cpu")
    ce.predict(list(zip(left[:8], right[:8])), batch_size=64, show_progress_bar=False)
    t0 = time.perf_counter()
    ce.predict(list(zip(left, right)), batch_size=64, show_progress_bar=False)
    theirs = len(pairs) / (time.perf_counter() - t0)
    out = {"pairs": len(pairs), "threads": threads, "simsearch_int8_logits_per_s": round(ours, 1),
           "simsearch_int8_predict_proba_per_s": round(ours_full, 1), "cross_encoder_fp32_per_s": round(theirs, 1),
           "speedup": round(ours / theirs, 2)}
    print(f"speed on {len(pairs)} pairs, {threads} threads: simsearch int8 {ours:.0f} pairs/s (logits), "
          f"{ours_full:.0f} (predict_proba); sentence-transformers CrossEncoder fp32 {theirs:.0f}; x{ours / theirs:.2f}")
    return out


def run_dataset(
    folder: Path, *, suffix: str = "", zero_shot: bool, work: Path | None = None, speed: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """One data set, the path both benchmarks share: train (or not) on it, score its test split.

    Zero-shot reads the test split only and scores it with the shipped model
    (its threshold and calibration come from the pool's validation pairs).
    Supervised fine-tunes :data:`RECIPE` on at most :data:`TRAIN_CAP` train
    pairs, fits head, calibration and threshold on the valid split.
    """
    from simsearch.applications.pair_training import train_pair_model

    name = name or folder.name
    test = read_split(folder, "test", suffix)
    print(f"{name}: {len(test)} test pairs ({sum(p[2] for p in test)} matches)")
    out: dict[str, Any] = {"dataset": name, "mode": "zero-shot" if zero_shot else "supervised"}
    if zero_shot:
        model, torch_dir = default_pair_model(), POOL_TORCH_DIR
        out["trained_on"] = model.info.get("datasets", [])
    else:
        work = work or Path(tempfile.mkdtemp(prefix="simsearch-pairs-"))
        train = sample(read_split(folder, "train", suffix), TRAIN_CAP)
        valid = read_split(folder, "valid", suffix)
        print(f"  train {len(train)} pairs ({sum(p[2] for p in train)} matches), valid {len(valid)}")
        torch_dir = work / "torch"
        t0 = time.perf_counter()
        model = train_pair_model(train, valid, work / "model", torch_dir=torch_dir, progress=True,
                                 info={"datasets": [name]}, **RECIPE)
        out["train_seconds"] = round(time.perf_counter() - t0, 1)
        out["train_pairs"] = len(train)
    out.update(evaluate(model, test, f"  {out['mode']} {name}"))
    if speed and torch_dir.is_dir():
        out["speed"] = speed_against_cross_encoder(model, torch_dir, test[:512])
    return out


# -- the default CatalogMatcher on a split, as a listing -> catalog task --------


def title_column(a: Any, b: Any) -> str:
    """The text column a DeepMatcher folder's two tables share that is most often filled, then longest."""
    shared = [c for c in a.column_names if c in b.column_names and c != "id"]
    strings = [c for c in shared if str(a.schema.field(c).type) == "string" and str(b.schema.field(c).type) == "string"]
    if not strings:
        raise SystemExit(f"no text column shared by both tables (columns {shared})")

    def fill_and_length(c: str) -> tuple[float, float]:
        values = [v for t in (a, b) for v in t.column(c).to_pylist()]
        filled = [v for v in values if v]
        return (-len(filled) / len(values), float(np.mean([len(v) for v in filled])) if filled else 0.0)

    return min(strings, key=fill_and_length)


def _record_key(text: str) -> str:
    """A Ditto record's identity: its values with the markers removed (a record on both sides is one node)."""
    return " ".join(MARKERS.sub(" ", text).split())


def labelled_keys(folder: Path | str, split: str, suffix: str = "") -> list[tuple[Any, Any, int]]:
    """One split's labelled pairs as (left record key, right record key, label); reads that split's files only.

    A key is ``("A", id)`` / ``("B", id)`` in a DeepMatcher folder, the record's
    values (markers removed) in a Ditto one.
    """
    folder = Path(folder)
    if is_deepmatcher(folder):
        import pyarrow.csv as pcsv

        rows = pcsv.read_csv(folder / f"{split}.csv").to_pylist()
        return [(("A", p["ltable_id"]), ("B", p["rtable_id"]), int(p["label"])) for p in rows]
    return [(_record_key(a), _record_key(b), y) for a, b, y in read_split(folder, split, suffix)]


def record_texts(folder: Path | str, keys: list[Any]) -> list[str]:
    """The text the matcher reads for each record key: the title column (DeepMatcher), the values (Ditto)."""
    folder = Path(folder)
    if not is_deepmatcher(folder):
        return list(keys)
    import pyarrow.csv as pcsv

    options = pcsv.ConvertOptions(strings_can_be_null=True)
    a, b = (pcsv.read_csv(folder / f"{t}.csv", convert_options=options) for t in ("tableA", "tableB"))
    title = title_column(a, b)
    text = {(side, i): t or "" for side, table in (("A", a), ("B", b))
            for i, t in zip(table.column("id").to_pylist(), table.column(title).to_pylist())}
    return [text[k] for k in keys]


def pair_files(folder: Path | str) -> list[tuple[str, str]]:
    """Every labelled split file of a folder as (split, suffix): the set's whole ground truth."""
    folder = Path(folder)
    if is_deepmatcher(folder):
        return [(s, "") for s in ("train", "valid", "test") if (folder / f"{s}.csv").is_file()]
    out = []
    for f in sorted(folder.glob("*.txt*")):
        split, _, suffix = f.name.partition(".txt")
        out.append((split, suffix))
    return out


def _components(keys: list[Any], edges: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Connected component (a representative key) of every key (union-find)."""
    parent = {k: k for k in keys}
    for u, v in edges:
        parent.setdefault(u, u)
        parent.setdefault(v, v)

    def find(x: Any) -> Any:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in edges:
        parent[find(u)] = find(v)
    return {k: find(k) for k in parent}


@dataclass
class MatcherCandidates:
    """What the default :class:`~simsearch.CatalogMatcher` returns on one split, labelled.

    Attributes
    ----------
    scores : ndarray of shape (m,), float32
        The matcher's score of each returned (listing, product) pair: raw
        (``score_map_ = None``) or its probability.
    labels : ndarray of shape (m,), int64
        1 when the two records are linked through the ground truth's matching
        pairs (matching is transitive; a labelled non-match stays 0), else 0.
    rank : ndarray of shape (m,), int32
    threshold : float
        The matcher's ``threshold_``.
    recall : float
        Share of the split's matching pairs among the returned pairs.
    known : ndarray of shape (m,), bool
        Pairs whose label the ground truth states: a labelled pair, or two
        records it links; the rest are labelled 0 by assumption.
    """

    scores: np.ndarray
    labels: np.ndarray
    known: np.ndarray
    rank: np.ndarray
    threshold: float
    recall: float
    n_listings: int
    n_catalog: int


def matcher_candidates(
    folder: Path | str, split: str, suffix: str = "", *, encoder: Any, lexical: bool = True, raw: bool = False,
    truth: tuple[tuple[str, str], ...] | None = None,
) -> MatcherCandidates:
    """One split as a listing -> catalog task for ``CatalogMatcher(encoder, k=MATCHER_K, lexical=lexical)``.

    The listings are the split's distinct left records, the catalog its
    distinct right records; the matcher is fit on the catalog and matches the
    listings. The pairs it returns (its top :data:`MATCHER_K` per listing,
    retrieved through its index and re-scored) are labelled by the ground
    truth: the matching pairs of the ``truth`` files ((split, suffix) pairs;
    default the split alone, so a zero-shot run reads nothing else), closed
    under transitivity. A split's own pairs are a sample of the set's
    candidate pairs, so the set's other splits hold labels of the pairs its
    records form (:func:`pair_files` lists them all). ``raw=True`` reads the
    raw score (``score_map_ = None``) instead of the probability.
    """
    from simsearch import CatalogMatcher

    pairs = labelled_keys(folder, split, suffix)
    listing_keys = list(dict.fromkeys(a for a, _, _ in pairs))
    catalog_keys = list(dict.fromkeys(b for _, b, _ in pairs))
    listings, catalog = record_texts(folder, listing_keys), record_texts(folder, catalog_keys)
    m = CatalogMatcher(encoder, k=MATCHER_K, lexical=lexical, progress=False)
    m.fit({"id": np.arange(len(catalog)), "title": catalog})
    if raw:
        m.score_map_ = None
    out = m.match({"id": np.arange(len(listings)), "title": listings})
    lrow = out.column("listing_id").to_numpy().tolist()
    prow = out.column("product_id").to_numpy().tolist()
    known = pairs if truth is None else [p for s, x in truth for p in labelled_keys(folder, s, x)]
    comp = _components(listing_keys + catalog_keys, [(a, b) for a, b, y in known if y == 1])
    negative = {(a, b) for a, b, y in known if y == 0} - {(a, b) for a, b, y in known if y == 1}
    labels, stated = [], []
    for i, j in zip(lrow, prow):
        a, b = listing_keys[i], catalog_keys[j]
        labels.append(int((a, b) not in negative and comp[a] == comp[b]))
        stated.append(bool(labels[-1]) or (a, b) in negative)
    returned = {(listing_keys[i], catalog_keys[j]) for i, j in zip(lrow, prow)}
    positives = {(a, b) for a, b, y in pairs if y == 1}
    return MatcherCandidates(
        scores=out.column("score").to_numpy().astype(np.float32), labels=np.array(labels, dtype=np.int64),
        known=np.array(stated, dtype=bool),
        rank=out.column("rank").to_numpy(), threshold=float(m.threshold_),
        recall=len(positives & returned) / max(len(positives), 1), n_listings=len(listings), n_catalog=len(catalog),
    )


def calibration_report(probs: np.ndarray, labels: np.ndarray, threshold: float, label: str) -> dict[str, Any]:
    """F1 at ``threshold``, the oracle F1, the ECE and the reliability diagram of probabilities; printed."""
    out = prf(probs, labels, threshold)
    out["oracle_f1"] = round(best_f1_threshold(probs, labels).f1, 4) if labels.any() else 0.0
    out["ece"] = round(expected_calibration_error(probs, labels), 4)
    out["pairs"], out["matches"] = len(labels), int(labels.sum())
    bins = reliability_table(probs, labels)
    out["reliability"] = [[round(b.mean_predicted, 4), round(b.observed, 4), b.count] for b in bins]
    print(f"{label}: {out['pairs']} pairs ({out['matches']} matches); F1 {out['f1']:.3f} (P {out['precision']:.3f}, "
          f"R {out['recall']:.3f}, threshold {out['threshold']:.3f}; oracle {out['oracle_f1']:.3f}); ECE {out['ece']:.3f}")
    print(format_reliability(bins))
    return out


def evaluate_matcher(
    folder: Path, split: str, suffix: str, label: str, truth: tuple[tuple[str, str], ...] | None = None
) -> dict[str, Any]:
    """The default CatalogMatcher's probabilities on a split's listing -> catalog task: F1, ECE, reliability.

    ``truth``: the split files whose matching pairs label the returned pairs
    (:func:`matcher_candidates`); default the split alone.
    """
    from simsearch import TextEncoder

    cands = matcher_candidates(folder, split, suffix, encoder=TextEncoder(cache=embedding_cache()), truth=truth)
    print(f"{label}: {cands.n_listings} listings against a catalog of {cands.n_catalog}; top {MATCHER_K} returned; "
          f"{cands.recall:.3f} of the split's matching pairs among them")
    out = calibration_report(cands.scores, cands.labels, cands.threshold, f"{label} probabilities")
    out["retrieval_recall"] = round(cands.recall, 4)
    # The labelled pairs of one split do not cover the pairs its records form: a returned pair
    # unlabelled there may be a match labelled in another split. The pairs it labels are the
    # other reading (the benchmark's blocked candidates: a harder mix than what the matcher returns).
    print(f"{label}: {int((~cands.known).sum())} of the {len(cands.known)} returned pairs are not labelled by "
          f"{'the ' + split + ' split' if truth is None else 'the ground truth'} (counted as non-matches above); "
          "on the labelled ones only:")
    if cands.labels[cands.known].any():
        out["labelled_only"] = calibration_report(
            cands.scores[cands.known], cands.labels[cands.known], cands.threshold, f"{label} probabilities, labelled pairs"
        )
    return out


def embedding_cache() -> Any:
    """The benchmarks' embedding cache (``benchmarks/.cache/embeddings.sqlite``): encoding is the cost."""
    from simsearch import EmbeddingCache

    return EmbeddingCache(_common.CACHE_DIR / "embeddings.sqlite")
