"""Fixtures shared by the test modules: a seeded generator, the model cache, the real
encoder, the bundled PriceRunner sample and an index folder built from it.

Plain helper functions (synthetic data, brute-force references, the shared-data
location) are in ``_helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator seeded with 0, new for each test."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$SIMSEARCH_CACHE`` for the session: the bundled model is exported once, for every test that encodes."""
    cache = tmp_path_factory.getbasetemp() / "simsearch-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMSEARCH_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def encoder(model_cache: Path):
    """``simsearch.TextEncoder()`` with its defaults (the bundled all-MiniLM-L6-v2), one for the session."""
    from simsearch import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def sample() -> pa.Table:
    """The PriceRunner sample bundled with the package (``simsearch/data/pricerunner_sample.csv``):
    offers with ``id``, ``title``, ``merchant_id``, ``cluster_id``, ``cluster_label``, ``category``."""
    from simsearch._tables import read_table
    from simsearch.cli import demo_sample_path

    return read_table(demo_sample_path())


@pytest.fixture(scope="session")
def sample_index(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index folder of the sample, built by ``simsearch index build``, shared by the session:
    a test that writes to it works on a copy."""
    from simsearch.cli import demo_sample_path, main

    folder = tmp_path_factory.mktemp("sample-index") / "index"
    assert main(["-q", "index", "build", str(demo_sample_path()), "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray (2 CPUs) whose workers import the simsearch this process imports; shut down after the module."""
    import ray
    import simsearch

    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    # Ray puts the driver's working directory on the workers' sys.path: from a
    # source checkout that would shadow the installed simsearch (and its
    # compiled extension) with the bare sources, so start Ray elsewhere.
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-cwd"))
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
        # the workers import simsearch from this checkout, as the test does
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(simsearch.__file__).resolve().parents[1])}},
    )  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()
        os.chdir(here)
