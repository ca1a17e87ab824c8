"""The hnswlib and faiss backends against brute force, and their file container."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from simsearch import _fileio
from simsearch._validation import NO_ID
from simsearch.index.backends import FaissBackend, HnswlibBackend

from _helpers import blobs, brute_force, recall

MISSING = NO_ID
BACKENDS = [HnswlibBackend, FaissBackend]
METRICS = ["cosine", "ip", "l2"]
DIM = 24


def clustered(n: int, seed: int, normalize: bool) -> np.ndarray:
    """Points around 16 random centres, float32 (n, DIM)."""
    x, _ = blobs(n, DIM, 16, seed=seed, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x


def exact_scores(base: np.ndarray, queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    picked = base[rows]
    if metric == "l2":
        return ((picked - queries[:, None, :]) ** 2).sum(-1)
    return np.einsum("qkd,qd->qk", picked, queries)


def id_of(row: np.ndarray) -> np.ndarray:
    """Ids that are not row numbers, so a mix-up between the two shows."""
    return (np.asarray(row, dtype=np.uint64) * np.uint64(7919)) + np.uint64(2**40)


def row_of(ids: np.ndarray) -> np.ndarray:
    return ((ids - np.uint64(2**40)) // np.uint64(7919)).astype(np.int64)


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend_cls(request: pytest.FixtureRequest) -> type:
    return request.param


def build(backend_cls: type, metric: str, n: int = 2000, seed: int = 0):
    base = clustered(n, seed, normalize=metric == "cosine")
    index = backend_cls(DIM, metric, 16, 64)
    # Two batches: faiss trains on the first, hnswlib grows past its first capacity.
    # One thread: faiss's OpenMP threads crawl on a busy machine (threads are tested below).
    index.add(base[: n // 2], id_of(np.arange(n // 2)), 1)
    index.add(base[n // 2 :], id_of(np.arange(n // 2, n)), 1)
    return index, base


@pytest.mark.parametrize("metric", METRICS)
def test_recall_against_brute_force(backend_cls: type, metric: str) -> None:
    index, base = build(backend_cls, metric)
    queries = clustered(100, seed=1, normalize=metric == "cosine")
    ids, scores = index.search(queries, 10, 128, 1)
    assert ids.shape == scores.shape == (100, 10)
    assert ids.dtype == np.uint64 and scores.dtype == np.float32
    truth = brute_force(base, queries, 10, metric)
    found = row_of(ids)
    assert recall(found, truth) >= 0.9
    # Scores are the metric's values for the returned vectors, best first;
    # faiss scores its decoded 8-bit codes, which get_vectors returns.
    stored = index.get_vectors(ids.reshape(-1)).reshape(100, 10, DIM)
    if metric == "l2":
        want = ((stored - queries[:, None, :]) ** 2).sum(-1)
    else:
        want = np.einsum("qkd,qd->qk", stored, queries)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
    if backend_cls is HnswlibBackend:
        np.testing.assert_allclose(scores, exact_scores(base, queries, found, metric), atol=1e-4)
    steps = np.diff(scores, axis=1)
    assert np.all(steps >= 0) if metric == "l2" else np.all(steps <= 0)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_rows_pad_when_k_exceeds_the_index(backend_cls: type, n: int) -> None:
    index = backend_cls(DIM, "cosine", 16, 100)
    base = clustered(max(n, 1), seed=2, normalize=True)[:n]
    index.add(base, id_of(np.arange(n)), 1)
    ids, scores = index.search(clustered(3, seed=3, normalize=True), 8, 32, 1)
    assert ids.shape == scores.shape == (3, 8)
    assert np.all(ids[:, n:] == MISSING) and np.all(np.isnan(scores[:, n:]))
    assert np.all(ids[:, :n] != MISSING) and not np.isnan(scores[:, :n]).any()
    for row in ids[:, :n]:
        assert sorted(row_of(row)) == list(range(n))


def test_empty_query_batch(backend_cls: type) -> None:
    index, _ = build(backend_cls, "ip", n=200)
    ids, scores = index.search(np.empty((0, DIM), np.float32), 4, 16, 1)
    assert ids.shape == scores.shape == (0, 4)


def test_contains_len_and_remove(backend_cls: type) -> None:
    index, base = build(backend_cls, "cosine", n=1000)
    assert len(index) == 1000
    gone = id_of(np.arange(0, 1000, 2))
    index.remove(gone)
    assert len(index) == 500
    np.testing.assert_array_equal(index.contains(gone), np.zeros(500, bool))
    np.testing.assert_array_equal(index.contains(id_of(np.arange(1, 1000, 2))), np.ones(500, bool))
    assert not index.contains(np.array([MISSING - np.uint64(1)], np.uint64))[0]
    # Query with the removed points themselves: their own vectors are nearest.
    ids, _ = index.search(base[::2], 20, 64, 1)
    assert not np.isin(ids, gone).any()
    assert (ids != MISSING).all()


def test_search_after_removing_almost_everything(backend_cls: type) -> None:
    index, base = build(backend_cls, "l2", n=60)
    index.remove(id_of(np.arange(55)))
    ids, scores = index.search(base[:10], 10, 32, 1)
    assert not np.isin(ids, id_of(np.arange(55))).any()
    assert np.all(ids[:, 5:] == MISSING) and np.all(np.isnan(scores[:, 5:]))
    assert np.all(np.sort(row_of(ids[:, :5]), axis=1) == np.arange(55, 60))


def test_readding_a_removed_id_and_removing_it_again(backend_cls: type) -> None:
    index, base = build(backend_cls, "cosine", n=300)
    index.remove(id_of(np.arange(10)))
    fresh = clustered(11, seed=4, normalize=True)
    index.add(fresh[:1], id_of([5]), 1)  # same id, new vector
    index.add(fresh[1:], id_of(np.arange(1000, 1010)), 1)  # fills freed slots
    assert len(index) == 301
    ids, _ = index.search(fresh[:1], 1, 32, 1)
    assert ids[0, 0] == id_of([5])[0]
    index.remove(id_of([5]))
    assert not index.contains(id_of([5]))[0]
    ids, _ = index.search(np.vstack([fresh[:1], base[:10]]), 30, 64, 1)
    assert not np.isin(ids, id_of(np.arange(10))).any()


def test_get_vectors(backend_cls: type) -> None:
    index, base = build(backend_cls, "ip", n=500)
    rows = np.array([249, 0, 120, 3])  # in the first batch, which faiss trained on
    got = index.get_vectors(id_of(rows))
    assert got.shape == (4, DIM) and got.dtype == np.float32
    if backend_cls is HnswlibBackend:
        np.testing.assert_array_equal(got, base[rows])
    else:  # decoded 8-bit codes: within one step of each dimension's range
        step = (base.max(0) - base.min(0)) / 255
        assert np.all(np.abs(got - base[rows]) <= step + 1e-6)
    assert index.get_vectors(np.empty(0, np.uint64)).shape == (0, DIM)


def test_add_and_search_on_two_threads(backend_cls: type) -> None:
    base = clustered(400, seed=6, normalize=False)
    index = backend_cls(DIM, "l2", 8, 32)
    index.add(base, id_of(np.arange(400)), 2)
    ids, scores = index.search(base[:20], 1, 32, 2)
    np.testing.assert_array_equal(ids[:, 0], id_of(np.arange(20)))


def test_memory_grows_with_the_index(backend_cls: type) -> None:
    small, _ = build(backend_cls, "cosine", n=1000)
    large, _ = build(backend_cls, "cosine", n=4000)
    per_vector = large.memory_bytes() / 4000
    # At least the vector payload: 1 byte a dimension for SQ8, 4 for float32.
    assert per_vector >= DIM * (4 if backend_cls is HnswlibBackend else 1)
    assert large.memory_bytes() > small.memory_bytes()


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("metric", METRICS)
def test_save_load_round_trip(backend_cls: type, metric: str, mmap: bool, tmp_path) -> None:
    index, base = build(backend_cls, metric, n=1500)
    index.remove(id_of(np.arange(0, 1500, 5)))
    queries = clustered(50, seed=5, normalize=metric == "cosine")
    before = index.search(queries, 10, 48, 1)
    path = str(tmp_path / "index.simsearch")
    index.save(path)
    with open(path, "rb") as f:
        assert f.read(8) == _fileio.MAGIC
    loaded = backend_cls.load(path, mmap=mmap)
    assert len(loaded) == len(index) == 1200
    after = loaded.search(queries, 10, 48, 1)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    some = id_of(np.arange(1, 1500, 5))
    np.testing.assert_array_equal(loaded.get_vectors(some), index.get_vectors(some))
    # A loaded index keeps working.
    loaded.add(base[:1], id_of([0]), 1)
    loaded.remove(id_of([1]))
    assert len(loaded) == 1200
    np.testing.assert_array_equal(loaded.contains(id_of([0, 1])), [True, False])
    np.testing.assert_allclose(loaded.get_vectors(id_of([0])), base[:1], atol=0.05)


def test_save_replaces_atomically(backend_cls: type, tmp_path) -> None:
    index, _ = build(backend_cls, "l2", n=300)
    path = tmp_path / "index.bin"
    path.write_bytes(b"old content")
    index.save(str(path))
    assert backend_cls.load(str(path)).contains(id_of([7]))[0]
    assert os.listdir(tmp_path) == ["index.bin"]  # no temporary file left behind


@pytest.fixture
def saved(tmp_path) -> str:
    index, _ = build(HnswlibBackend, "cosine", n=300)
    path = str(tmp_path / "index.bin")
    index.save(path)
    return path


def test_load_rejects_a_foreign_file(backend_cls: type, tmp_path) -> None:
    path = tmp_path / "foreign.npy"
    np.save(path, np.zeros(10))
    with pytest.raises(ValueError, match="not a simsearch index file"):
        backend_cls.load(str(path))
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="not a simsearch index file"):
        backend_cls.load(str(tmp_path / "empty"))


def test_load_rejects_a_corrupt_section(saved: str) -> None:
    header, _ = _fileio.read_container(saved)
    section = next(s for s in header["sections"] if s["name"] == "hnswlib")
    with open(saved, "r+b") as f:
        f.seek(section["offset"] + section["length"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(ValueError, match="corrupt.*section 'hnswlib' checksum mismatch"):
        HnswlibBackend.load(saved)


def test_load_rejects_a_corrupt_header(saved: str) -> None:
    with open(saved, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ValueError, match="corrupt.*header checksum mismatch"):
        HnswlibBackend.load(saved)


@pytest.mark.parametrize("keep", [12, 200, -1])
def test_load_rejects_a_truncated_file(saved: str, keep: int) -> None:
    with open(saved, "rb") as f:
        data = f.read()
    with open(saved, "wb") as f:
        f.write(data[:keep])
    with pytest.raises(ValueError, match="corrupt.*truncated"):
        HnswlibBackend.load(saved)


def test_load_rejects_a_newer_version(saved: str) -> None:
    with open(saved, "rb") as f:
        data = f.read()
    magic, length, _, reserved = struct.unpack_from("<8sQII", data)
    header = json.loads(data[24 : 24 + length])
    header["format_version"] = _fileio.FORMAT_VERSION + 1
    blob = json.dumps(header, sort_keys=True).encode()
    assert len(blob) == length  # same digit count: the sections do not move
    import zlib

    with open(saved, "wb") as f:
        f.write(struct.pack("<8sQII", magic, length, zlib.crc32(blob), reserved))
        f.write(blob)
        f.write(data[24 + length :])
    with pytest.raises(ValueError, match=f"version {_fileio.FORMAT_VERSION + 1}.*up to {_fileio.FORMAT_VERSION}"):
        HnswlibBackend.load(saved)


def test_load_rejects_another_backends_file(saved: str) -> None:
    with pytest.raises(ValueError, match="holds a 'hnswlib' index, not a 'faiss' one"):
        FaissBackend.load(saved)


def test_container_round_trip(tmp_path) -> None:
    sections = {
        "floats": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ids": np.array([0, NO_ID], dtype=np.uint64),
        "flags": np.array([True, False, True]),
        "empty": np.empty((0, 5), dtype=np.int16),
        "blob": b"\x00\x01raw bytes",
    }
    path = tmp_path / "c.bin"
    _fileio.write_container(path, {"backend": "test", "dim": 4}, sections)
    for mmap in (False, True):
        header, got = _fileio.read_container(path, mmap=mmap)
        assert header["backend"] == "test" and header["format_version"] == _fileio.FORMAT_VERSION
        assert set(got) == set(sections)
        for name, want in sections.items():
            if isinstance(want, bytes):
                want = np.frombuffer(want, np.uint8)
            assert got[name].dtype == want.dtype and got[name].shape == want.shape
            np.testing.assert_array_equal(got[name], want)
        for entry in header["sections"]:
            assert entry["offset"] % _fileio.ALIGNMENT == 0
        assert isinstance(got["floats"], np.memmap) == mmap


def test_container_refuses_what_it_cannot_store(tmp_path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        _fileio.write_container(tmp_path / "a", {"sections": []}, {})
    with pytest.raises(TypeError, match="dtype object"):
        _fileio.write_container(tmp_path / "b", {}, {"x": np.array([{}, None], dtype=object)})
    with pytest.raises(TypeError, match="JSON"):
        _fileio.write_container(tmp_path / "c", {"dim": np.float32(1)}, {})
    assert os.listdir(tmp_path) == []


def test_missing_id_is_a_deprecated_alias_of_no_id() -> None:
    from simsearch.index import backends

    with pytest.warns(DeprecationWarning, match="NO_ID"):
        assert backends.MISSING_ID == NO_ID


@pytest.mark.parametrize("metric", METRICS)
def test_ef_next_id_and_ids_round_trip(backend_cls: type, metric: str, tmp_path) -> None:
    index = backend_cls(DIM, metric, 16, 64, ef=123)
    base = clustered(300, seed=8, normalize=False)
    index.add(base, id_of(np.arange(300)), 1)
    index.remove(id_of([299]))  # the largest id ever added is gone, its successor is not reused
    index.save(str(tmp_path / "ix"))
    loaded = backend_cls.load(str(tmp_path / "ix"))
    assert loaded.ef == 123
    assert loaded.next_auto_id == index.next_auto_id == int(id_of([299])[0]) + 1
    np.testing.assert_array_equal(loaded.ids(), np.sort(id_of(np.arange(299))))


def test_files_without_ef_or_next_id_get_the_defaults(backend_cls: type, tmp_path) -> None:
    index, _ = build(backend_cls, "l2", n=200)
    index.remove(id_of([199]))
    index.save(str(tmp_path / "new"))
    header, sections = _fileio.read_container(str(tmp_path / "new"))
    old = {k: v for k, v in header.items() if k not in ("format_version", "sections", "ef", "next_id")}
    _fileio.write_container(tmp_path / "old", old, sections)  # what simsearch wrote before it stored them
    loaded = backend_cls.load(str(tmp_path / "old"))
    assert loaded.ef == 64
    # past every id the file names: hnswlib remembers removed ids, faiss its tombstoned slots
    assert loaded.next_auto_id == int(id_of([199])[0]) + 1


def test_cosine_backends_normalize_and_refuse_zero_vectors(backend_cls: type) -> None:
    index = backend_cls(DIM, "cosine", 16, 64)
    base = clustered(300, seed=9, normalize=False) * 5
    index.add(base, id_of(np.arange(300)), 1)
    _, scores = index.search(base[:5], 1, 32, 1)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.02)  # cosine of each vector with itself
    with pytest.raises(ValueError, match="row 1 has norm 0"):
        index.add(np.vstack([base[:1], np.zeros((1, DIM), np.float32)]), id_of([500, 501]), 1)
