"""Quality of kNN classification, dedup and matching on the real product data.

    python benchmarks/quality.py [--data ../shared/data] [--encoders fp32,int8] [--student DIR] [--no-full] [--no-cache]
    python benchmarks/quality.py --fit-calibration   # refit simsearch/data/dedup_calibration.json

For each encoder (``TextEncoder(precision="fp32")``, ``TextEncoder(precision="int8")``
and, with ``--student``, a distilled student folder) it measures:

- **Classification accuracy**: ``KNNClassifier(encoder=encoder)`` at its
  defaults (neighbours fused with the linear head), beside the neighbours'
  vote alone (``linear_weight=0``) and a TF-IDF + logistic-regression baseline
  trained in the same run, on PriceRunner categories (fixed 80/20 split grouped
  by ``Cluster ID``, GroupShuffleSplit seed 0) and, as a second check, WDC
  product categories (titles of the cameras / computers / shoes / watches
  matching sets as 4 classes, 2,000 distinct titles each, stratified 80/20,
  seed 0); with the expected calibration error of the top-class probability.
- **PriceRunner dedup**: ``find_duplicates`` against ``Cluster ID``, as mean
  per-offer F1 plus pairwise precision and recall, on a 6.6k-offer sample of
  whole clusters (seed 0, as the issue's anchor), with the threshold chosen by
  ``choose_threshold`` on a disjoint sample of whole clusters (seed 1), and at
  the default threshold; then on all 35,311 offers at both (skip with
  ``--no-full``). The expected calibration error of the pair scores is taken
  over every kNN candidate pair of the evaluation rows.
- **Shopee subset dedup**: threshold from ``dev.csv``, reported on ``test.csv``
  (and at the default threshold, with the calibration error).
- **Abt-Buy retrieval**: ``CatalogMatcher`` over the 1,092 Buy names, each of the
  1,081 Abt names matched; recall@1 and @5 against the Leipzig perfect mapping.

Encodings are kept in ``benchmarks/.cache/quality-PRECISION.sqlite``
(:class:`simsearch.EmbeddingCache`), so a rerun encodes nothing; ``--no-cache``
encodes again.

Each dedup and matching figure is given for the full pair score (embedding +
character n-grams + model codes + measures) and for the embedding cosine alone
(``lexical=False``, threshold chosen the same way). The last line printed is one
JSON object with every figure, keyed by encoder, and the CPU flags under ``"cpu"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common
import _data

from simsearch.applications import (
    CatalogMatcher,
    KNNClassifier,
    choose_threshold,
    find_duplicates,
    mean_group_f1,
    pairwise_precision_recall,
)
from simsearch.applications.candidates import DEFAULT_TEXT_THRESHOLD, load_items, self_join
from simsearch.applications.dedup_calibration import PairCalibration
from simsearch.applications.lexical import PairScoring
from simsearch.applications.metrics import expected_calibration_error

SAMPLE_OFFERS = 6624  # the anchor sample size


class MemoEncoder:
    """Encode each distinct text once per run, then serve it from memory.

    Every task sees vectors from the real ``TextEncoder``; the memo only avoids
    encoding PriceRunner's 35k titles again for each task.
    """

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.name = encoder.name
        self.memo: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], progress: bool | None = None, **_: Any) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if todo:
            for t, v in zip(todo, self.encoder.encode(todo, progress=progress)):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def table(ids: list[Any], titles: list[str]) -> dict[str, list[Any]]:
    return {"id": ids, "title": titles}


def whole_cluster_sample(clusters: np.ndarray, size: int, seed: int, exclude: set[int] = frozenset()) -> np.ndarray:
    """Rows of randomly chosen whole clusters, about ``size`` of them."""
    rng = np.random.default_rng(seed)
    uniq, counts = np.unique(clusters, return_counts=True)
    chosen, total = [], 0
    for i in rng.permutation(len(uniq)):
        if total >= size:
            break
        if int(uniq[i]) in exclude:
            continue
        chosen.append(uniq[i])
        total += counts[i]
    return np.flatnonzero(np.isin(clusters, chosen))


def dedup_quality(data: dict[str, list[Any]], labels: np.ndarray, threshold: float, encoder: Any, lexical: bool) -> dict[str, float]:
    _, groups = find_duplicates(data, threshold=threshold, encoder=encoder, lexical=lexical, include_singletons=True, progress=False)
    row = {v: i for i, v in enumerate(data["id"])}
    predicted = np.empty(len(labels), dtype=np.int64)
    predicted[[row[v] for v in groups.column("id").to_pylist()]] = groups.column("group_id").to_numpy()
    p, r = pairwise_precision_recall(labels, predicted)
    return {"threshold": round(threshold, 4), "mean_f1": round(mean_group_f1(labels, predicted), 4), "precision": round(p, 4), "recall": round(r, 4)}


def dedup_rows(data: dict[str, list[Any]], labels: np.ndarray, encoder: Any, threshold: float | None = None) -> dict[str, Any]:
    """Figures at ``threshold`` (default: the library's) and the calibration error of every candidate pair."""
    res = dedup_quality(data, labels, DEFAULT_TEXT_THRESHOLD if threshold is None else threshold, encoder, True)
    pairs, _ = find_duplicates(data, threshold=0.0, encoder=encoder, progress=False)
    group = dict(zip(data["id"], labels))
    same = np.array([group[a] == group[b] for a, b in zip(pairs.column("id_a").to_pylist(), pairs.column("id_b").to_pylist())])
    scores = pairs.column("score").to_numpy()
    res["pair_ece"] = round(expected_calibration_error(scores, same), 4)
    res["candidate_pairs"] = int(len(scores))
    res["score_range"] = [round(float(scores.min()), 4), round(float(scores.max()), 4)] if len(scores) else []
    return res


def plain_thresholds() -> np.ndarray:
    return np.round(np.arange(0.6, 0.981, 0.02), 4)


def pricerunner(data_dir: Path, encoder: Any, full: bool, log: Any, classify: bool = True) -> dict[str, Any]:
    from sklearn.model_selection import GroupShuffleSplit

    offers = _data.pricerunner_offers(data_dir)
    titles, ids, clusters, category = offers.titles, offers.ids.tolist(), offers.clusters, offers.categories
    out: dict[str, Any] = {}

    start = time.perf_counter()
    encoder.encode(titles, progress=False)  # fill the memo once
    log(f"  encoded {len(titles)} PriceRunner titles in {time.perf_counter() - start:.0f} s")

    if classify:
        train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0).split(titles, category, clusters))
        out.update(classification([titles[i] for i in train], category[train], [titles[i] for i in test], category[test], encoder))
        log(f"  PriceRunner categories: {out}")

    eval_rows = whole_cluster_sample(clusters, SAMPLE_OFFERS, seed=0)
    dev_rows = whole_cluster_sample(clusters, SAMPLE_OFFERS, seed=1, exclude=set(clusters[eval_rows].tolist()))

    def sub(rows_: np.ndarray) -> dict[str, list[Any]]:
        return table([ids[i] for i in rows_], [titles[i] for i in rows_])

    for key, lexical, grid in (("dedup", True, None), ("dedup_embedding_only", False, plain_thresholds())):
        choice = choose_threshold(sub(dev_rows), clusters[dev_rows], thresholds=grid, encoder=encoder, lexical=lexical, progress=False)
        res = dedup_quality(sub(eval_rows), clusters[eval_rows], choice.threshold, encoder, lexical)
        res["offers"] = int(len(eval_rows))
        res["dev_mean_f1"] = round(choice.mean_f1, 4)
        out[key] = res
        log(f"  {key} on {len(eval_rows)} offers (threshold {choice.threshold} from {len(dev_rows)} dev offers): {res}")
        if lexical:
            out["dedup_default"] = dedup_rows(sub(eval_rows), clusters[eval_rows], encoder)
            log(f"  dedup at the default threshold: {out['dedup_default']}")
        if full and lexical:
            for name, t in ((key + "_all_offers", choice.threshold), ("dedup_default_all_offers", DEFAULT_TEXT_THRESHOLD)):
                start = time.perf_counter()
                res_full = dedup_quality(table(ids, titles), clusters, t, encoder, lexical)
                res_full["seconds"] = round(time.perf_counter() - start, 1)
                out[name] = res_full
                log(f"  {name} on all {len(ids)} offers: {res_full}")
    return out


def classification(tr_t: list[str], tr_y: np.ndarray, te_t: list[str], te_y: np.ndarray, encoder: Any) -> dict[str, Any]:
    """KNNClassifier at its defaults, its vote alone, TF-IDF + LR: accuracy and calibration error."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    out: dict[str, Any] = {}
    for name, clf in (("knn_accuracy", KNNClassifier(encoder=encoder)), ("knn_accuracy_vote_only", KNNClassifier(encoder=encoder, linear_weight=0.0))):
        start = time.perf_counter()
        proba = clf.fit(tr_t, tr_y).predict_proba(te_t)
        pred = clf.classes_[proba.argmax(axis=1)]
        out[name] = round(float(np.mean(pred == te_y)), 4)
        out[name.replace("accuracy", "ece")] = round(expected_calibration_error(proba.max(axis=1), pred == te_y), 4)
        out[name.replace("accuracy", "seconds")] = round(time.perf_counter() - start, 1)
    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
    lr = LogisticRegression(max_iter=2000, C=10.0).fit(vec.fit_transform(tr_t), tr_y)
    out["tfidf_logreg_accuracy"] = round(float(lr.score(vec.transform(te_t), te_y)), 4)
    return out


def wdc_categories(data_dir: Path, encoder: Any, log: Any) -> dict[str, Any]:
    """Second classification check: WDC titles of four product kinds as classes."""
    import random
    import re

    from sklearn.model_selection import train_test_split

    title = re.compile(r"COL title VAL (.*?)(?: COL |$)")
    texts, labels = [], []
    for kind in ("cameras", "computers", "shoes", "watches"):
        seen: dict[str, None] = {}
        for name in ("train.txt.medium", "test.txt", "valid.txt.medium"):
            path = data_dir / "er_benchmarks" / f"wdc_{kind}" / name
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                for part in line.split("\t")[:2]:
                    m = title.match(part.strip())
                    if m and m.group(1).strip():
                        seen.setdefault(m.group(1).strip())
        chosen = list(seen)
        random.Random(0).shuffle(chosen)
        texts += chosen[:2000]
        labels += [kind] * len(chosen[:2000])
    y = np.array(labels)
    train, test = train_test_split(np.arange(len(texts)), test_size=0.2, random_state=0, stratify=y)
    out = classification([texts[i] for i in train], y[train], [texts[i] for i in test], y[test], encoder)
    log(f"  WDC categories ({len(texts)} titles): {out}")
    return out


def dev_sets(data_dir: Path) -> list[tuple[str, dict[str, list[Any]], np.ndarray]]:
    """The development sets of the dedup: the PriceRunner seed-1 sample and Shopee dev."""
    offers = _data.pricerunner_offers(data_dir)
    clusters = offers.clusters
    eval_rows = whole_cluster_sample(clusters, SAMPLE_OFFERS, seed=0)
    dev_rows = whole_cluster_sample(clusters, SAMPLE_OFFERS, seed=1, exclude=set(clusters[eval_rows].tolist()))
    pr = table([offers.ids.tolist()[i] for i in dev_rows], [offers.titles[i] for i in dev_rows])
    rows = _data.shopee("dev", data_dir)
    sh = table([r["posting_id"] for r in rows], [r["title"] for r in rows])
    return [("pricerunner_dev", pr, clusters[dev_rows]), ("shopee_dev", sh, np.array([int(r["label_group"]) for r in rows]))]


def fit_calibration(data_dir: Path, encoder: Any, log: Any) -> dict[str, Any]:
    """Fit the shipped dedup calibration on the raw kNN candidate pairs of both development sets."""
    raw, same = [], []
    for name, data, labels in dev_sets(data_dir):
        scoring = PairScoring()
        loaded = load_items(data, encoder=encoder, scoring=scoring, progress=False)
        cands = self_join(loaded, k=10, floor=-10.0, scoring=scoring, raw_scores=True)
        a, b, s = cands.pairs
        raw.append(s)
        same.append(labels[a] == labels[b])
        log(f"  {name}: {len(s)} candidate pairs, {int(same[-1].sum())} duplicates")
    calibration = PairCalibration.fit(np.concatenate(raw), np.concatenate(same))
    p = calibration.apply(np.concatenate(raw))
    out = {**calibration.to_dict(), "dev_ece": round(expected_calibration_error(p, np.concatenate(same)), 4),
           "fitted_on": "kNN (k=10) candidate pairs of the PriceRunner seed-1 whole-cluster sample and the Shopee dev split; benchmarks/quality.py --fit-calibration"}  # fmt: skip
    path = Path(__file__).resolve().parent.parent / "simsearch" / "data" / "dedup_calibration.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    log(f"  wrote {path}: {out}")
    return out


def shopee(data_dir: Path, encoder: Any, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    splits = {}
    for split in ("dev", "test"):
        rows = _data.shopee(split, data_dir)
        splits[split] = (table([r["posting_id"] for r in rows], [r["title"] for r in rows]), np.array([int(r["label_group"]) for r in rows]))
    for key, lexical, grid in (("dedup", True, None), ("dedup_embedding_only", False, plain_thresholds())):
        choice = choose_threshold(*splits["dev"], thresholds=grid, encoder=encoder, lexical=lexical, progress=False)
        res = dedup_quality(*splits["test"], choice.threshold, encoder, lexical)
        res["dev_mean_f1"] = round(choice.mean_f1, 4)
        out[key] = res
        log(f"  shopee {key}: {res}")
    out["dedup_default"] = dedup_rows(*splits["test"], encoder)
    log(f"  shopee dedup at the default threshold: {out['dedup_default']}")
    return out


def abt_buy(data_dir: Path, encoder: Any, log: Any) -> dict[str, Any]:
    abt, buy, mapping = _data.leipzig_abt_buy(data_dir)
    truth: dict[str, set[str]] = {}
    for m in mapping:
        truth.setdefault(m["idAbt"], set()).add(m["idBuy"])
    out: dict[str, Any] = {}
    for key, lexical in (("retrieval", True), ("retrieval_embedding_only", False)):
        matcher = CatalogMatcher(encoder, k=5, lexical=lexical, progress=False)
        matcher.fit(table([r["id"] for r in buy], [r["name"] for r in buy]))
        result = matcher.match(table([r["id"] for r in abt], [r["name"] for r in abt]))
        rank: dict[str, int] = {}
        for a, b, k in zip(result.column("listing_id").to_pylist(), result.column("product_id").to_pylist(), result.column("rank").to_pylist()):
            if b in truth.get(a, ()):
                rank[a] = min(k, rank.get(a, k))
        n = len(truth)
        out[key] = {
            "recall@1": round(sum(1 for a in truth if rank.get(a, 99) <= 1) / n, 4),
            "recall@5": round(sum(1 for a in truth if rank.get(a, 99) <= 5) / n, 4),
        }
        log(f"  abt-buy {key}: {out[key]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=_common.DATA_DIR)
    parser.add_argument("--encoders", default="fp32,int8", help="comma-separated precisions of the default model")
    parser.add_argument("--student", type=Path, default=None, help="folder of a distilled student to measure too")
    parser.add_argument("--no-full", action="store_true", help="skip dedup of all 35,311 PriceRunner offers")
    parser.add_argument("--tasks", default="pricerunner,wdc,shopee,abt_buy",
                        help="comma-separated; pricerunner_dedup runs PriceRunner's dedup without its classification")
    parser.add_argument("--no-cache", action="store_true", help="encode every title again (default: reuse benchmarks/.cache/quality-PRECISION.sqlite)")
    parser.add_argument("--fit-calibration", action="store_true", help="refit the shipped dedup calibration and stop")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"data folder {args.data} not found (pass --data or set SIMSEARCH_DATA)")

    from simsearch.encoders import TextEncoder

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print(_common.host_line(), flush=True)

    if args.fit_calibration:
        result = fit_calibration(args.data, MemoEncoder(TextEncoder()), log)
        print(json.dumps(result))
        return
    from simsearch import EmbeddingCache

    def cache(name: str) -> Any:
        return None if args.no_cache else EmbeddingCache(_common.CACHE_DIR / f"quality-{name}.sqlite")

    encoders: list[tuple[str, Any]] = [
        (p, lambda p=p: TextEncoder(precision=p, cache=cache(p))) for p in args.encoders.split(",") if p
    ]
    if args.student is not None:
        encoders.append(("student-int8", lambda: TextEncoder(model=args.student, precision="int8")))
    tasks = set(args.tasks.split(","))
    results: dict[str, Any] = {}
    for name, make in encoders:
        log(f"== {name}")
        encoder = MemoEncoder(make())
        res: dict[str, Any] = {}
        start = time.perf_counter()
        if "pricerunner" in tasks or "pricerunner_dedup" in tasks:
            res["pricerunner"] = pricerunner(args.data, encoder, not args.no_full, log, classify="pricerunner" in tasks)
        if "wdc" in tasks:
            res["wdc"] = wdc_categories(args.data, encoder, log)
        if "shopee" in tasks:
            res["shopee"] = shopee(args.data, encoder, log)
        if "abt_buy" in tasks:
            res["abt_buy"] = abt_buy(args.data, encoder, log)
        res["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = res

    print_table(results)
    print(json.dumps({"cpu": _common.cpu_flags(), **results}))


def print_table(results: dict[str, Any]) -> None:
    rows = [
        ("PriceRunner category accuracy, KNNClassifier defaults", ("pricerunner", "knn_accuracy")),
        ("  calibration error (ECE)", ("pricerunner", "knn_ece")),
        ("  neighbours' vote only", ("pricerunner", "knn_accuracy_vote_only")),
        ("  TF-IDF + logistic regression", ("pricerunner", "tfidf_logreg_accuracy")),
        ("WDC category accuracy, KNNClassifier defaults", ("wdc", "knn_accuracy")),
        ("  neighbours' vote only", ("wdc", "knn_accuracy_vote_only")),
        ("  TF-IDF + logistic regression", ("wdc", "tfidf_logreg_accuracy")),
        ("PriceRunner dedup mean F1, 6.6k sample", ("pricerunner", "dedup", "mean_f1")),
        ("  pairwise precision / recall", ("pricerunner", "dedup", "precision"), ("pricerunner", "dedup", "recall")),
        ("  embedding only", ("pricerunner", "dedup_embedding_only", "mean_f1")),
        ("  at the default threshold: mean F1", ("pricerunner", "dedup_default", "mean_f1")),
        ("  at the default: pairwise precision / recall", ("pricerunner", "dedup_default", "precision"), ("pricerunner", "dedup_default", "recall")),
        ("  pair-score calibration error (ECE)", ("pricerunner", "dedup_default", "pair_ece")),
        ("PriceRunner dedup mean F1, all offers", ("pricerunner", "dedup_all_offers", "mean_f1")),
        ("  pairwise precision / recall", ("pricerunner", "dedup_all_offers", "precision"), ("pricerunner", "dedup_all_offers", "recall")),
        ("  at the default threshold", ("pricerunner", "dedup_default_all_offers", "mean_f1")),
        ("  at the default: precision / recall", ("pricerunner", "dedup_default_all_offers", "precision"), ("pricerunner", "dedup_default_all_offers", "recall")),
        ("Shopee test dedup mean F1", ("shopee", "dedup", "mean_f1")),
        ("  pairwise precision / recall", ("shopee", "dedup", "precision"), ("shopee", "dedup", "recall")),
        ("  embedding only", ("shopee", "dedup_embedding_only", "mean_f1")),
        ("  at the default threshold: mean F1", ("shopee", "dedup_default", "mean_f1")),
        ("  at the default: pairwise precision / recall", ("shopee", "dedup_default", "precision"), ("shopee", "dedup_default", "recall")),
        ("  pair-score calibration error (ECE)", ("shopee", "dedup_default", "pair_ece")),
        ("Abt-Buy recall@1 / @5", ("abt_buy", "retrieval", "recall@1"), ("abt_buy", "retrieval", "recall@5")),
        ("  embedding only", ("abt_buy", "retrieval_embedding_only", "recall@1"), ("abt_buy", "retrieval_embedding_only", "recall@5")),
    ]

    def get(res: dict[str, Any], path: tuple[str, ...]) -> str:
        for key in path:
            if not isinstance(res, dict) or key not in res:
                return "-"
            res = res[key]
        return f"{res:.3f}"

    names = list(results)
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, *paths in rows:
        print(f"| {label} | " + " | ".join(" / ".join(get(results[n], p) for p in paths) for n in names) + " |")


if __name__ == "__main__":
    main()
