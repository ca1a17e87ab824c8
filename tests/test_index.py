"""simsearch.Index: recall against brute force, kernels against the scalar
reference, files, and every bad input the issue lists."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

import simsearch
from simsearch import _core, _fileio
from simsearch._validation import NO_ID
from simsearch.errors import CorruptFileError, DimensionError, DuplicateIdError, UnknownIdError
from simsearch.index.core import available_isas

from _helpers import blobs, brute_force, normalize, recall, require_data



def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Points around 50 centres, float32 (n, dim)."""
    return blobs(n, dim, 50, seed=seed)[0]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = clustered(6000, 48, seed=1)
    q = clustered(200, 48, seed=2)
    return x, q


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray]) -> simsearch.Index:
    x, _ = data
    index = simsearch.Index(48, rescore=True, num_threads=2)
    index.add(x)
    return index


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("dim", [1, 3, 63, 64, 97, 384, 4096])
def test_integer_kernel_matches_scalar(isa: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    for codes, query in [
        (rng.integers(0, 256, dim, dtype=np.uint8), rng.integers(-127, 128, dim, dtype=np.int8)),
        (np.full(dim, 255, np.uint8), np.full(dim, -127, np.int8)),  # extremes: no saturation
        (np.full(dim, 255, np.uint8), np.full(dim, 127, np.int8)),
    ]:
        expected = int(codes.astype(np.int64) @ query.astype(np.int64))
        assert _core.kernel_dot_u8s8(isa, codes, query) == expected
        assert _core.kernel_dot_u8s8("scalar", codes, query) == expected


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("dim", [1, 3, 17, 97, 384, 4096])
def test_float_kernels_match_numpy(isa: str, dim: int) -> None:
    rng = np.random.default_rng(dim)
    a, b = rng.normal(size=(2, dim)).astype(np.float32)
    assert _core.kernel_f32(isa, a, b, False) == pytest.approx(float(a.astype(np.float64) @ b), rel=1e-4, abs=1e-4)
    assert _core.kernel_f32(isa, a, b, True) == pytest.approx(float(((a - b).astype(np.float64) ** 2).sum()), rel=1e-4)


def test_isa_detection_reports_a_known_kernel() -> None:
    isas = available_isas()
    assert isas[-1] == "scalar"
    assert set(isas) <= set(_core.known_isas())
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2 " in flags and " fma " in flags:
        assert "avx2" in isas
    if " avx512_vnni " not in flags:
        assert "avx512vnni" not in isas


def test_every_kernel_returns_the_same_neighbours(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    results = {}
    for isa in available_isas():
        # one build thread: a parallel build's insertion order is not deterministic
        index = simsearch.Index(48, isa=isa, num_threads=1)
        assert index.isa == isa
        index.add(x[:3000])
        results[isa] = index.search(q, k=10, ef=64)
    ref_ids, ref_scores = results["scalar"]
    for isa, (ids, scores) in results.items():
        np.testing.assert_array_equal(ids, ref_ids, err_msg=isa)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, err_msg=isa)


def test_isa_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMSEARCH_ISA", "scalar")
    assert simsearch.Index(8).isa == "scalar"
    monkeypatch.setenv("SIMSEARCH_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        simsearch.Index(8)


def test_unsupported_isa_is_refused() -> None:
    missing = [i for i in _core.known_isas() if i not in available_isas()]
    if not missing:
        pytest.skip("this CPU runs every kernel in the build")
    with pytest.raises(ValueError, match="not supported by this CPU"):
        simsearch.Index(8, isa=missing[0])


# --------------------------------------------------------------------------- recall


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_recall_against_brute_force(metric: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    truth = brute_force(x, q, 10, metric)
    index = simsearch.Index(48, metric=metric, num_threads=2)
    index.add(x)
    ids, scores = index.search(q, k=10, ef=128)
    assert recall(ids.astype(np.int64), truth) >= 0.9
    # best first
    diffs = np.diff(scores, axis=1)
    assert np.all(diffs >= -1e-6) if metric == "l2" else np.all(diffs <= 1e-6)


def test_rescoring_reaches_float_recall(built: simsearch.Index, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    truth = brute_force(x, q, 10, "cosine")
    plain = simsearch.Index(48, num_threads=2)
    plain.add(x)
    r_plain = recall(plain.search(q, k=10, ef=256)[0].astype(np.int64), truth)
    r_rescored = recall(built.search(q, k=10, ef=256)[0].astype(np.int64), truth)
    assert r_rescored >= 0.99
    assert r_rescored >= r_plain


def test_scores_approximate_true_values(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    for metric in ("cosine", "ip", "l2"):
        index = simsearch.Index(48, metric=metric, num_threads=2)
        ids = index.add(x)
        found, scores = index.search(q[:20], k=5)
        xs = normalize(x) if metric == "cosine" else x
        qs = normalize(q[:20]) if metric == "cosine" else q[:20]
        rows = xs[found.astype(np.int64)]
        if metric == "l2":
            true = ((rows - qs[:, None, :]) ** 2).sum(-1)
            np.testing.assert_allclose(scores, true, rtol=0.05)
        else:
            true = np.einsum("qkd,qd->qk", rows, qs)
            np.testing.assert_allclose(scores, true, atol=0.02 * np.abs(true).max())
        assert ids.dtype == np.uint64


def test_exact_code_search_separates_quantization_loss(built: simsearch.Index, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    truth = brute_force(x, q, 10, "cosine")
    exact_float, _ = built.search_exact(q, k=10, use_floats=True)
    exact_codes, _ = built.search_exact(q, k=10)
    assert recall(exact_float.astype(np.int64), truth) == pytest.approx(1.0, abs=0.005)
    assert 0.9 <= recall(exact_codes.astype(np.int64), truth) < 1.0


def test_real_vectors_l2_recall() -> None:
    folder = require_data("fmnistsmall")
    base = np.load(folder / "base.npy")
    queries = np.load(folder / "queries.npy")[:200]
    gt = np.load(folder / "groundtruth.npy")[:200, :10].astype(np.int64)
    index = simsearch.Index(784, metric="l2", rescore=True, num_threads=2)
    index.add(base)
    ids, _ = index.search(queries, k=10, ef=64)
    assert recall(ids.astype(np.int64), gt) >= 0.98
    index.rescore = False
    ids, _ = index.search(queries, k=10, ef=64)
    assert recall(ids.astype(np.int64), gt) >= 0.9


def test_real_uint8_vectors() -> None:
    folder = require_data("bigann10k")
    base = np.load(folder / "base.npy")
    queries = np.load(folder / "queries.npy")
    gt = np.load(folder / "groundtruth.npy").astype(np.int64)
    index = simsearch.Index(128, metric="l2", num_threads=2)
    with pytest.raises(TypeError, match="astype"):
        index.add(base)
    index.add(base.astype(np.float32))
    ids, _ = index.search(queries.astype(np.float32), k=11, ef=64)
    # queries are base[0:100]: drop rank 0 (the query itself) on both sides
    assert np.all(ids[:, 0] == np.arange(100))
    assert recall(ids[:, 1:].astype(np.int64), gt[:, 1:11]) >= 0.9


# --------------------------------------------------------------------------- shapes and padding


def test_padding_when_k_exceeds_size() -> None:
    index = simsearch.Index(4, metric="l2")
    index.add(np.eye(4, dtype=np.float32)[:3], ids=[10, 20, 30])
    ids, scores = index.search(np.eye(4, dtype=np.float32)[:1], k=5)
    assert ids.shape == (1, 5) and scores.shape == (1, 5)
    assert ids[0, 0] == 10
    assert np.all(ids[0, 3:] == NO_ID) and np.all(np.isnan(scores[0, 3:]))
    assert set(ids[0, :3].tolist()) == {10, 20, 30}


def test_search_on_empty_index() -> None:
    index = simsearch.Index(8)
    ids, scores = index.search(np.ones((3, 8), np.float32), k=4)
    assert ids.shape == (3, 4) and np.all(ids == NO_ID) and np.all(np.isnan(scores))


def test_empty_batches() -> None:
    index = simsearch.Index(8)
    assert index.add(np.zeros((0, 8), np.float32)).shape == (0,)
    ids, scores = index.search(np.zeros((0, 8), np.float32), k=3)
    assert ids.shape == (0, 3) and scores.shape == (0, 3)
    assert len(index) == 0


def test_one_dimensional_input_is_one_vector(built: simsearch.Index, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    ids, scores = built.search(x[5], k=3)
    assert ids.shape == (1, 3) and ids[0, 0] == 5
    with pytest.raises(ValueError, match="reshape"):
        built.search(x[5][:10], k=3)


def test_conversions_give_identical_results(built: simsearch.Index, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, q = data
    ref = built.search(q[:20], k=5)
    for variant in (q[:20].astype(np.float64), np.asfortranarray(q[:20]), np.repeat(q[:20], 2, axis=0)[::2]):
        ids, scores = built.search(variant, k=5)
        np.testing.assert_array_equal(ids, ref[0])
        np.testing.assert_allclose(scores, ref[1], rtol=1e-6)
    half = built.search(q[:20].astype(np.float16), k=5)[0]
    assert recall(half.astype(np.int64), ref[0].astype(np.int64)) >= 0.8


def test_threads_do_not_change_results(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, num_threads=2)
    index.add(x[:2000])
    two = index.search(q, k=10)
    index.num_threads = 1
    one = index.search(q, k=10)
    np.testing.assert_array_equal(one[0], two[0])


# --------------------------------------------------------------------------- ids, remove, reuse


def test_auto_ids_continue_and_custom_ids(rng: np.random.Generator) -> None:
    index = simsearch.Index(8, metric="l2")
    assert index.add(rng.normal(size=(3, 8))).tolist() == [0, 1, 2]
    assert index.add(rng.normal(size=(2, 8)), ids=[100, 7]).tolist() == [100, 7]
    assert index.add(rng.normal(size=(1, 8))).tolist() == [101]
    assert 100 in index and 5 not in index and "x" not in index
    assert len(index) == 6
    assert sorted(index.ids().tolist()) == [0, 1, 2, 7, 100, 101]


def test_remove_never_returns_removed(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, num_threads=2)
    index.add(x[:3000])
    removed = np.arange(0, 3000, 2)
    index.remove(removed)
    assert len(index) == 1500
    assert not index.contains(removed).any()
    ids, _ = index.search(q, k=20, ef=100)
    assert not np.isin(ids, removed).any()
    kept = np.arange(1, 3000, 2)
    truth = kept[brute_force(x[kept], q, 10, "cosine")]
    assert recall(ids[:, :10].astype(np.int64), truth) >= 0.9


def test_removed_slots_are_reused(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, num_threads=2)
    index.add(x[:3000])
    slots = index._impl.core.n_slots
    index.remove(np.arange(1500))
    new_ids = index.add(x[3000:4500], ids=np.arange(10_000, 11_500))
    assert index._impl.core.n_slots == slots  # no growth: every new vector took a freed slot
    assert len(index) == 3000
    live = np.concatenate([np.arange(1500, 3000), np.arange(3000, 4500)])
    live_ids = np.concatenate([np.arange(1500, 3000), new_ids.astype(np.int64)])
    truth = live_ids[brute_force(x[live], q, 10, "cosine")]
    ids, _ = index.search(q, k=10, ef=128)
    assert recall(ids.astype(np.int64), truth) >= 0.9
    assert not np.isin(ids, np.arange(1500)).any()


def test_capacity_grows_in_small_batches(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, num_threads=2)
    index.add(x[0])  # one vector first: the quantizer retrains as data arrives
    for start in range(1, 3001, 250):
        index.add(x[start : start + 250])
    assert len(index) == 3001
    truth = brute_force(x[:3001], q, 10, "cosine")
    assert recall(index.search(q, k=10, ef=128)[0].astype(np.int64), truth) >= 0.9


def test_remove_unknown_id_changes_nothing(built: simsearch.Index) -> None:
    n = len(built)
    with pytest.raises(KeyError, match="unknown id 999999"):
        built.remove([0, 999_999])
    assert len(built) == n and 0 in built
    with pytest.raises(ValueError, match="duplicates"):
        built.remove([1, 1])
    assert 1 in built


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("vectors", "ids", "error", "match"),
    [
        (np.ones((2, 5), np.float32), None, ValueError, "dimension 5, the index has 8"),
        (np.ones((2, 2, 8), np.float32), None, ValueError, "3 dimensions"),
        (np.array([[np.nan] * 8], np.float32), None, ValueError, "NaN"),
        (np.array([[1.0] * 7 + [np.inf]], np.float32), None, ValueError, "inf"),
        (np.ones((2, 8), np.int64), None, TypeError, "dtype int64"),
        (np.array([["a"] * 8]), None, TypeError, "dtype"),
        (np.ones((2, 8), np.float32), [1], ValueError, "length 1, expected 2"),
        (np.ones((2, 8), np.float32), [3, 3], ValueError, "duplicate id 3"),
        (np.ones((2, 8), np.float32), [0, 4], ValueError, "id 0 is already in the index"),
        (np.ones((1, 8), np.float32), [-1], ValueError, "negative"),
        (np.ones((1, 8), np.float32), [2**64 - 1], ValueError, "reserved"),
        (np.ones((1, 8), np.float32), [1.5], TypeError, "integer ids"),
        (np.zeros((1, 8), np.float32), [9], ValueError, "zero norm"),
    ],
)
def test_bad_add_is_refused_and_changes_nothing(vectors: np.ndarray, ids: object, error: type, match: str, rng: np.random.Generator) -> None:
    index = simsearch.Index(8)
    index.add(rng.normal(size=(3, 8)))
    with pytest.raises(error, match=match):
        index.add(vectors, ids=ids)
    assert len(index) == 3 and sorted(index.ids().tolist()) == [0, 1, 2]


def test_bad_search_arguments(built: simsearch.Index, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, q = data
    for k in (0, -3):
        with pytest.raises(ValueError, match="k must be positive"):
            built.search(q, k=k)
    with pytest.raises(TypeError, match="k must be an integer"):
        built.search(q, k=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension 47, the index has 48"):
        built.search(q[:, :47])
    with pytest.raises(ValueError, match="NaN"):
        built.search(np.full((1, 48), np.nan, np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "hamming"}, "metric must be one of"),
        ({"dtype": "int4"}, "dtype must be"),
        ({"backend": "annoy"}, "backend must be one of"),
        ({"M": 1}, "M must be at least 2"),
        ({"ef_construction": 0}, "ef_construction must be positive"),
        ({"backend": "hnswlib", "dtype": "int8"}, "stores float32"),
        ({"backend": "faiss", "rescore": True}, "rescore=True needs the native backend"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        simsearch.Index(8, **kwargs)


def test_get_vectors(data: tuple[np.ndarray, np.ndarray], built: simsearch.Index) -> None:
    x, _ = data
    got = built.get_vectors([0, 5])
    np.testing.assert_allclose(got, normalize(x[[0, 5]]), rtol=1e-6)  # originals kept (rescore)
    plain = simsearch.Index(48, metric="l2")
    plain.add(x[:500])
    approx = plain.get_vectors([3])
    step = (x[:500].max(0) - x[:500].min(0)) / 255
    assert np.all(np.abs(approx[0] - x[3]) <= step / 2 + 1e-5)  # within half a quantization step
    with pytest.raises(KeyError, match="unknown id 12345"):
        built.get_vectors([12345])


def test_memory_per_vector_is_compact() -> None:
    index = simsearch.Index(384, train_size=1000)
    index.add(normalize(clustered(5000, 384)))
    assert not index._impl.core.has_floats  # quantizer frozen: the float copies are gone
    per_vector = index.memory_bytes / len(index)
    # 384 code bytes + links + label + id map; float32 alone would be 1,536
    assert per_vector < 620


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_round_trip(tmp_path: Path, built: simsearch.Index, data: tuple[np.ndarray, np.ndarray], mmap: bool) -> None:
    _, q = data
    path = tmp_path / "index.simsearch"
    built.save(path)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    loaded = simsearch.Index.load(path, mmap=mmap)
    assert (loaded.dim, loaded.metric, loaded.rescore, len(loaded)) == (48, "cosine", True, len(built))
    a, b = built.search(q, k=10), loaded.search(q, k=10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    if mmap:
        assert loaded.memory_bytes < built.memory_bytes / 3  # codes, links and originals stay in the file
    # a loaded (even mapped) index keeps working: add, remove, auto ids continue
    new = loaded.add(q[:5])
    assert new.tolist() == list(range(6000, 6005))
    loaded.remove(new[:2])
    assert len(loaded) == len(built) + 3
    ids, _ = loaded.search(q[2:5], k=1)
    assert ids[:, 0].tolist() == new[2:].tolist()


def test_save_after_removal_and_reuse(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, metric="l2", num_threads=2)
    index.add(x[:1000])
    index.remove(np.arange(100))
    index.save(tmp_path / "a")
    loaded = simsearch.Index.load(tmp_path / "a")
    assert 50 not in loaded and len(loaded) == 900
    loaded.add(x[1000:1100])
    assert loaded._impl.core.n_slots == 1000  # the freed slots survived the file


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_truncated_foreign_and_newer_files(tmp_path: Path, built: simsearch.Index) -> None:
    path = tmp_path / "ix"
    built.save(path)
    size = path.stat().st_size

    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(path.read_bytes())
    _flip_byte(corrupt, size // 2)
    with pytest.raises(ValueError, match="corrupt: section .* checksum mismatch"):
        simsearch.Index.load(corrupt)

    truncated = tmp_path / "truncated"
    truncated.write_bytes(path.read_bytes()[: size - 1000])
    with pytest.raises(ValueError, match="truncated"):
        simsearch.Index.load(truncated)

    header_only = tmp_path / "header"
    header_only.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        simsearch.Index.load(header_only)

    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 600)
    with pytest.raises(ValueError, match="not a simsearch index file"):
        simsearch.Index.load(foreign)

    newer = tmp_path / "newer"
    raw = bytearray(path.read_bytes())
    raw[8:12] = struct.pack("<I", 99)
    newer.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="format version 99, newer"):
        simsearch.Index.load(newer)

    header_flip = tmp_path / "header_flip"
    header_flip.write_bytes(path.read_bytes())
    _flip_byte(header_flip, 40)
    with pytest.raises(ValueError, match="header checksum"):
        simsearch.Index.load(header_flip)

    with pytest.raises(OSError):
        simsearch.Index.load(tmp_path / "missing")


def test_load_checks_expected_dim_and_metric(tmp_path: Path, built: simsearch.Index) -> None:
    built.save(tmp_path / "ix")
    with pytest.raises(ValueError, match="dimension 48, expected 64"):
        simsearch.Index.load(tmp_path / "ix", dim=64)
    with pytest.raises(ValueError, match="metric 'cosine', expected 'l2'"):
        simsearch.Index.load(tmp_path / "ix", metric="l2")


def test_failed_save_leaves_nothing(tmp_path: Path, built: simsearch.Index) -> None:
    with pytest.raises(OSError, match="cannot create"):
        built.save(tmp_path / "no-such-dir" / "ix")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_atomically(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    path = tmp_path / "ix"
    small = simsearch.Index(48)
    small.add(x[:10])
    small.save(path)
    big = simsearch.Index(48)
    big.add(x[:200])
    big.save(path)
    assert len(simsearch.Index.load(path)) == 200
    assert sorted(os.listdir(tmp_path)) == ["ix"]


# --------------------------------------------------------------------------- other backends behind one API


@pytest.mark.parametrize("backend", ["hnswlib", "faiss"])
def test_backends_share_the_api(tmp_path: Path, backend: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, backend=backend, num_threads=2)
    ids = index.add(x[:2000])
    assert ids.tolist() == list(range(2000))
    truth = brute_force(x[:2000], q, 10, "cosine")
    found, scores = index.search(q, k=10, ef=128)
    assert found.dtype == np.uint64 and scores.dtype == np.float32 and found.shape == (200, 10)
    assert recall(found.astype(np.int64), truth) >= 0.9
    index.remove([int(found[0, 0])])
    assert int(found[0, 0]) not in index
    with pytest.raises(KeyError):
        index.remove([10**9])
    index.save(tmp_path / "ix")
    loaded = simsearch.Index.load(tmp_path / "ix")
    assert loaded.backend == backend and len(loaded) == 1999
    np.testing.assert_array_equal(loaded.search(q, k=5, ef=128)[0], index.search(q, k=5, ef=128)[0])
    padded, _ = simsearch.Index(48, backend=backend).search(q[:1], k=3)
    assert np.all(padded == NO_ID)


def test_float32_dtype_selects_the_float_graph() -> None:
    index = simsearch.Index(8, dtype="float32")
    assert index.backend == "hnswlib" and index.dtype == "float32"


# --------------------------------------------------------------------------- typed errors, ef and ids through files


def test_errors_are_typed(tmp_path: Path, built: simsearch.Index, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, q = data
    with pytest.raises(DimensionError, match="dimension 47, the index has 48"):
        built.search(q[:, :47])
    with pytest.raises(DimensionError, match="dimension 47"):
        built.add(q[:1, :47])
    with pytest.raises(UnknownIdError, match="unknown id 999999") as info:
        built.remove([999_999])
    assert isinstance(info.value, KeyError) and str(info.value) == "unknown id 999999"
    with pytest.raises(UnknownIdError, match="unknown id 999999"):
        built.get_vectors([3, 999_999])
    with pytest.raises(DuplicateIdError, match="id 0 is already in the index"):
        built.add(q[:1], ids=[0])
    built.save(tmp_path / "ix")
    with pytest.raises(DimensionError, match="dimension 48, expected 64"):
        simsearch.Index.load(tmp_path / "ix", dim=64)
    damaged = tmp_path / "damaged"
    damaged.write_bytes((tmp_path / "ix").read_bytes()[:-1000])
    with pytest.raises(CorruptFileError, match="truncated"):
        simsearch.Index.load(damaged)
    (tmp_path / "foreign").write_bytes(b"GIF89a" + b"\0" * 100)
    with pytest.raises(CorruptFileError, match="not a simsearch index file"):
        simsearch.Index.load(tmp_path / "foreign")
    _fileio.write_container(tmp_path / "annoy", {"backend": "annoy"}, {})
    with pytest.raises(CorruptFileError, match="unknown backend 'annoy'"):
        simsearch.Index.load(tmp_path / "annoy")


@pytest.mark.parametrize("backend", ["native", "hnswlib"])
def test_absurd_k_is_refused_before_anything_is_allocated(backend: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    index = simsearch.Index(48, backend=backend)
    index.add(x[:100])
    for method in (index.search, index.search_exact) if backend == "native" else (index.search,):
        with pytest.raises(ValueError, match="too large"):
            method(q[:1], k=2**62)


@pytest.mark.parametrize("backend", ["native", "hnswlib", "faiss"])
def test_ef_is_checked_clamped_and_saved(tmp_path: Path, backend: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    with pytest.raises(TypeError, match="ef must be an integer"):
        simsearch.Index(48, backend=backend, ef=1.5)  # type: ignore[arg-type]
    index = simsearch.Index(48, backend=backend, ef=80, num_threads=1)
    assert index.ef == 80
    with pytest.raises(ValueError, match="ef must be positive"):
        index.ef = 0
    with pytest.raises(ValueError, match="too large"):
        index.search(q[:1], ef=2**40)
    index.add(x[:500])
    ids, _ = index.search(q[:5], k=60, ef=5)  # ef below k is raised to k: the rows fill up
    assert (ids != NO_ID).all()
    index.ef = 77
    index.save(tmp_path / "ix")
    loaded = simsearch.Index.load(tmp_path / "ix")
    assert loaded.ef == 77  # every backend's file stores the default search effort


@pytest.mark.parametrize("backend", ["native", "hnswlib", "faiss"])
def test_everything_saved_comes_back(tmp_path: Path, backend: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    index = simsearch.Index(48, metric="ip", backend=backend, M=12, ef_construction=50, num_threads=1)
    index.add(x[:100])
    index.remove([99])
    index.save(tmp_path / "ix")
    loaded = simsearch.Index.load(tmp_path / "ix", num_threads=1)
    fields = ("dim", "metric", "dtype", "backend", "M", "ef_construction", "rescore", "isa", "attribute_names")
    assert {f: getattr(loaded, f) for f in fields} == {f: getattr(index, f) for f in fields}
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.arange(99))
    assert loaded.add(x[100:102]).tolist() == [100, 101]  # automatic ids continue past every id used


@pytest.mark.parametrize("backend", ["hnswlib", "faiss"])
def test_native_only_features_say_so(backend: str, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, q = data
    index = simsearch.Index(48, backend=backend)
    index.add(x[:50])
    for call, words in [
        (lambda: index.search(q[:1], filter=[1]), "filter needs the native backend"),
        (lambda: index.search_exact(q[:1]), "search_exact needs the native backend"),
        (lambda: index.compact(), "compact needs the native backend"),
        (lambda: index.add(x[50:51], attributes={"shop": [1]}), "attributes need the native backend"),
        (lambda: simsearch.Index(48, backend=backend, isa="scalar"), "isa applies to the native backend only"),
    ]:
        with pytest.raises(ValueError, match=words):
            call()
    with pytest.raises(ValueError, match="rescore=True needs the native backend"):
        index.rescore = True
    assert index.attribute_names == [] and len(index) == 50


# ---------------------------------------------------------------------- given quantizer ranges
def test_quantizer_copied_from_another_index(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, q = data
    first = simsearch.Index(x.shape[1], num_threads=1)
    first.add(x)
    lo, step = first.quantizer
    assert lo.dtype == np.float32 and lo.shape == (x.shape[1],) and not lo.flags.writeable
    second = simsearch.Index(x.shape[1], num_threads=1, quantizer=first)
    assert second.quantizer_final and len(second) == 0
    second.add(x[:100])  # final: the first 100 vectors do not retrain it
    assert all(np.array_equal(a, b) for a, b in zip(second.quantizer, first.quantizer))
    second.save(str(tmp_path / "i"))
    loaded = simsearch.Index.load(str(tmp_path / "i"))
    assert loaded.quantizer_final and all(np.array_equal(a, b) for a, b in zip(loaded.quantizer, first.quantizer))
    third = simsearch.Index(x.shape[1], num_threads=1, quantizer=(lo.astype(np.float64), step))
    assert all(np.array_equal(a, b) for a, b in zip(third.quantizer, first.quantizer))


def test_given_quantizer_checked_at_the_boundary() -> None:
    dim = 8
    lo, step = np.zeros(dim, np.float32), np.full(dim, 0.01, np.float32)
    with pytest.raises(DimensionError, match=r"quantizer lo has shape \(7,\), expected \(8,\)"):
        simsearch.Index(dim, quantizer=(lo[:7], step))
    with pytest.raises(ValueError, match="quantizer step contains NaN"):
        simsearch.Index(dim, quantizer=(lo, np.full(dim, np.nan, np.float32)))
    with pytest.raises(ValueError, match="quantizer step must be positive, got 0.0"):
        simsearch.Index(dim, quantizer=(lo, np.zeros(dim, np.float32)))
    with pytest.raises(TypeError, match="quantizer lo has dtype int64"):
        simsearch.Index(dim, quantizer=(np.zeros(dim, np.int64), step))
    with pytest.raises(ValueError, match="native backend"):
        simsearch.Index(dim, backend="hnswlib", quantizer=(lo, step))
    with pytest.raises(ValueError, match="'hnswlib' index given has no int8 quantizer"):
        simsearch.Index(dim, quantizer=simsearch.Index(dim, backend="hnswlib"))
    full = simsearch.Index(dim, num_threads=1)
    full.add(np.ones((3, dim), np.float32))
    with pytest.raises(ValueError, match="needs an empty index"):
        full.set_quantizer(lo, step)
