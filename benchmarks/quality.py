"""Quality of kNN classification, dedup and matching on the real product data.

    python benchmarks/quality.py [--data ../shared/data] [--encoders fp32,int8] [--student DIR] [--no-full]

For each encoder (``TextEncoder(precision="fp32")``, ``TextEncoder(precision="int8")``
and, with ``--student``, a distilled student folder) it measures:

- **PriceRunner kNN accuracy**: category of each offer on a fixed 80/20 split
  grouped by ``Cluster ID`` (GroupShuffleSplit, seed 0), ``KNNClassifier(k=10)``
  with the default lexical weight, beside the embedding alone and a TF-IDF +
  logistic-regression baseline trained in the same run.
- **PriceRunner dedup**: ``find_duplicates`` against ``Cluster ID``, as mean
  per-offer F1 plus pairwise precision and recall, on a 6.6k-offer sample of
  whole clusters (seed 0, as the issue's anchor), with the threshold chosen by
  ``choose_threshold`` on a disjoint sample of whole clusters (seed 1); then on
  all 35,311 offers at that threshold (skip with ``--no-full``).
- **Shopee subset dedup**: threshold from ``dev.csv``, reported on ``test.csv``.
- **Abt-Buy retrieval**: ``CatalogMatcher`` over the 1,092 Buy names, each of the
  1,081 Abt names matched; recall@1 and @5 against the Leipzig perfect mapping.

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


def plain_thresholds() -> np.ndarray:
    return np.round(np.arange(0.6, 0.981, 0.02), 4)


def pricerunner(data_dir: Path, encoder: Any, full: bool, log: Any) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupShuffleSplit

    offers = _data.pricerunner_offers(data_dir)
    titles, ids, clusters, category = offers.titles, offers.ids.tolist(), offers.clusters, offers.categories
    out: dict[str, Any] = {}

    start = time.perf_counter()
    encoder.encode(titles, progress=False)  # fill the memo once
    log(f"  encoded {len(titles)} PriceRunner titles in {time.perf_counter() - start:.0f} s")

    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0).split(titles, category, clusters))
    tr_t, te_t = [titles[i] for i in train], [titles[i] for i in test]
    for name, lw in (("knn_accuracy", 0.5), ("knn_accuracy_embedding_only", 0.0)):
        clf = KNNClassifier(k=10, encoder=encoder, lexical_weight=lw).fit(tr_t, category[train])
        out[name] = round(float(clf.score(te_t, category[test])), 4)
    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
    lr = LogisticRegression(max_iter=2000, C=10.0).fit(vec.fit_transform(tr_t), category[train])
    out["tfidf_logreg_accuracy"] = round(float(lr.score(vec.transform(te_t), category[test])), 4)
    log(f"  kNN {out['knn_accuracy']} (embedding only {out['knn_accuracy_embedding_only']}), TF-IDF+LR {out['tfidf_logreg_accuracy']}")

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
        if full and lexical:
            start = time.perf_counter()
            res_full = dedup_quality(table(ids, titles), clusters, choice.threshold, encoder, lexical)
            res_full["seconds"] = round(time.perf_counter() - start, 1)
            out[key + "_all_offers"] = res_full
            log(f"  {key} on all {len(ids)} offers: {res_full}")
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
    parser.add_argument("--tasks", default="pricerunner,shopee,abt_buy")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"data folder {args.data} not found (pass --data or set SIMSEARCH_DATA)")

    from simsearch.encoders import TextEncoder

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    print(_common.host_line(), flush=True)

    encoders: list[tuple[str, Any]] = [(p, lambda p=p: TextEncoder(precision=p)) for p in args.encoders.split(",") if p]
    if args.student is not None:
        encoders.append(("student-int8", lambda: TextEncoder(model=args.student, precision="int8")))
    tasks = set(args.tasks.split(","))
    results: dict[str, Any] = {}
    for name, make in encoders:
        log(f"== {name}")
        encoder = MemoEncoder(make())
        res: dict[str, Any] = {}
        start = time.perf_counter()
        if "pricerunner" in tasks:
            res["pricerunner"] = pricerunner(args.data, encoder, not args.no_full, log)
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
        ("PriceRunner kNN accuracy (k=10)", ("pricerunner", "knn_accuracy")),
        ("  same, embedding only", ("pricerunner", "knn_accuracy_embedding_only")),
        ("  TF-IDF + logistic regression", ("pricerunner", "tfidf_logreg_accuracy")),
        ("PriceRunner dedup mean F1, 6.6k sample", ("pricerunner", "dedup", "mean_f1")),
        ("  pairwise precision / recall", ("pricerunner", "dedup", "precision"), ("pricerunner", "dedup", "recall")),
        ("  embedding only", ("pricerunner", "dedup_embedding_only", "mean_f1")),
        ("PriceRunner dedup mean F1, all offers", ("pricerunner", "dedup_all_offers", "mean_f1")),
        ("  pairwise precision / recall", ("pricerunner", "dedup_all_offers", "precision"), ("pricerunner", "dedup_all_offers", "recall")),
        ("Shopee test dedup mean F1", ("shopee", "dedup", "mean_f1")),
        ("  pairwise precision / recall", ("shopee", "dedup", "precision"), ("shopee", "dedup", "recall")),
        ("  embedding only", ("shopee", "dedup_embedding_only", "mean_f1")),
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
