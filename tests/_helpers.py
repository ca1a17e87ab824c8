"""Plain helpers that several test modules import: shared data, synthetic data, references.

Fixtures live in ``conftest.py``; these are functions a test calls with its
own arguments. pytest puts ``tests/`` on ``sys.path``, so a test module says
``from _helpers import blobs, brute_force, recall``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

#: The shared data folder: ``$SIMSEARCH_DATA``, else ``../shared/data`` beside the checkout.
DATA = Path(os.environ.get("SIMSEARCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def require_data(relpath: str) -> Path:
    """The path of ``relpath`` under :data:`DATA`; skips the calling test when it is absent.

    Parameters
    ----------
    relpath : str
        A file or folder inside the shared data folder, e.g. ``"bigann10k/base.npy"``.

    Returns
    -------
    path : pathlib.Path
    """
    path = DATA / relpath
    if not path.exists():
        pytest.skip(f"{relpath} not found at {path} (set SIMSEARCH_DATA to the shared data folder)")
    return path


def data_rows(relpath: str, encoding: str = "utf-8") -> list[dict[str, str]]:
    """The rows of a CSV file of the shared data, as dicts keyed by its header; skips when absent."""
    with open(require_data(relpath), newline="", encoding=encoding) as f:
        return list(csv.DictReader(f))


# -- synthetic data ------------------------------------------------------------


def blobs(
    n: int, dim: int, n_clusters: int, *, seed: int = 0, spread: float = 1.0, noise: float = 0.6, dtype: type[np.floating] = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Points around ``n_clusters`` Gaussian centres, with the centre each one was drawn from.

    Parameters
    ----------
    n, dim, n_clusters : int
    seed : int
    spread : float
        Standard deviation of the centres.
    noise : float
        Standard deviation of the points around their centre.
    dtype : numpy dtype, default float64
        Precision of the arithmetic before the float32 result (the draws are the same).

    Returns
    -------
    x : ndarray of shape (n, dim), float32
    labels : ndarray of shape (n,), int64
        The centre of each row.
    """
    rng = np.random.default_rng(seed)
    centres = spread * rng.standard_normal((n_clusters, dim)).astype(dtype)
    labels = rng.integers(0, n_clusters, n)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(dtype)
    return x.astype(np.float32), labels


def duplicate_groups(n_groups: int = 20, size: int = 3, dim: int = 32, noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight groups of ``size`` near-copies of a random vector each, in shuffled order: synthetic duplicates.

    Returns
    -------
    x : ndarray of shape (n_groups * size, dim), float32
    labels : ndarray of shape (n_groups * size,), int64
        The group of each row.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, dim))
    x = np.repeat(centres, size, axis=0) + noise * rng.standard_normal((n_groups * size, dim))
    order = rng.permutation(len(x))
    return x[order].astype(np.float32), np.repeat(np.arange(n_groups), size)[order]


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in the dtype of ``x``."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def products(offers: pa.Table) -> pa.Table:
    """The products the PriceRunner sample's offers belong to: ``id`` (cluster_id) and ``title`` (cluster_label)."""
    names = dict(zip(offers.column("cluster_id").to_pylist(), offers.column("cluster_label").to_pylist()))
    return pa.table({"id": list(names), "title": list(names.values())})


# -- references ----------------------------------------------------------------


def brute_force(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Row positions of each query's exact top-k in ``x``, computed in float64.

    Parameters
    ----------
    x : ndarray of shape (n, dim)
    q : ndarray of shape (n_queries, dim)
    k : int
    metric : {"cosine", "ip", "l2"}

    Returns
    -------
    rows : ndarray of shape (n_queries, k), int64
        Best first; ties go to the lower row.
    """
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x, q = normalize(x), normalize(q)
    if metric in ("cosine", "ip"):
        key = -(q @ x.T)
    elif metric == "l2":
        key = (q**2).sum(1)[:, None] - 2 * q @ x.T + (x**2).sum(1)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return np.argsort(key, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (shape (n, k)) found in the first k columns of ``found``."""
    k = truth.shape[1]
    return float(np.mean([len(set(found[i, :k].tolist()) & set(truth[i].tolist())) / k for i in range(len(truth))]))


TESTS_DIR = Path(__file__).resolve().parent


def child_env() -> dict[str, str]:
    """os.environ for a child Python that must import the simsearch this process imports.

    ``python -c``/``-m`` put the working folder first on ``sys.path``: run children with
    ``cwd=TESTS_DIR`` (never the checkout root, whose source tree lacks the built
    extension) and this environment, whose PYTHONPATH starts with the folder holding the
    imported simsearch, then ``tests/``.
    """
    import simsearch

    env = dict(os.environ)
    root = str(Path(simsearch.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return env
