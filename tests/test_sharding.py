"""simsearch.ShardedIndex with the local engine, against references: brute
force, one Index on the same data, the shards' own answers, and the same
index after save and load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import simsearch
from simsearch._validation import NO_ID
from simsearch.errors import CorruptFileError, FormatVersionError
from simsearch.sharding import FORMAT_VERSION, MANIFEST, ShardedIndex, ShardedSearchResult, hash_shard

from _helpers import blobs, brute_force, recall, require_data

DIM = 24


def clustered(n: int, dim: int = DIM, seed: int = 0, n_clusters: int = 16) -> np.ndarray:
    """Points around well separated centres, float32 (n, dim)."""
    return blobs(n, dim, n_clusters, seed=seed, spread=3.0, noise=1.0)[0]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(3000, seed=1), clustered(60, seed=2)


# ---------------------------------------------------------------------- routing
def test_hash_shard_is_pinned_and_even() -> None:
    # saved indexes route by these values: a change here would orphan their ids
    assert hash_shard(np.arange(8), 4).tolist() == hash_shard(np.arange(8, dtype=np.uint64), 4).tolist()
    some = [0, 1, 2, 3, 2**40, 2**64 - 2]
    assert hash_shard(np.array(some, dtype=np.uint64), 7).tolist() == _splitmix_reference(some, 7)
    counts = np.bincount(hash_shard(np.arange(40_000), 8), minlength=8)
    assert counts.min() > 0.9 * 5000 and counts.max() < 1.1 * 5000


def _splitmix_reference(ids: list[int], n: int) -> list[int]:
    """splitmix64's finalizer in plain Python integers, the published constants."""
    out = []
    mask = 2**64 - 1
    for z in ids:
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) % n)
    return out


# ---------------------------------------------------------------------- exact merge
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_hash_exact_merge_equals_one_float32_index(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    x, q = data
    k = 10
    # ef at the shard size makes each float32 (hnswlib) shard exhaustive, so
    # the merged answer must be the true top-k, as one index with the same ef gives
    one = simsearch.Index(DIM, metric=metric, dtype="float32", num_threads=1)
    one.add(x)
    sharded = ShardedIndex(DIM, 4, metric=metric, dtype="float32", num_threads=2)
    sharded.add(x)
    found, scores = sharded.search(q, k=k, ef=len(x))
    ref_ids, ref_scores = one.search(q, k=k, ef=len(x))
    truth = brute_force(x, q, k, metric)
    np.testing.assert_array_equal(found, truth.astype(np.uint64))
    if metric != "ip":  # HNSW under inner product is not exhaustive even at ef = n; brute force is the reference there
        np.testing.assert_array_equal(found, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # best first, in the metric's direction
    assert np.all(np.diff(scores, axis=1) >= -1e-6) if metric == "l2" else np.all(np.diff(scores, axis=1) <= 1e-6)
    sharded.close()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_merge_is_the_top_k_of_the_shards_answers(data: tuple[np.ndarray, np.ndarray], metric: str) -> None:
    """With approximate int8 shards, the merge must still be the union's exact top-k."""
    x, q = data
    k = 7
    sharded = ShardedIndex(DIM, 3, metric=metric, M=8, ef_construction=40, num_threads=2)
    sharded.add(x)
    found, scores = sharded.search(q, k=k, ef=16)
    answers = [shard.index.search(q, k, 16) for shard in sharded.shard_engine.shards]  # type: ignore[attr-defined]
    all_ids = np.concatenate([a[0] for a in answers], axis=1)
    all_scores = np.concatenate([a[1] for a in answers], axis=1).astype(np.float64)
    key = all_scores if metric == "l2" else -all_scores
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(found, np.take_along_axis(all_ids, order, axis=1))
    np.testing.assert_array_equal(scores, np.take_along_axis(all_scores, order, axis=1).astype(np.float32))


def test_padding_when_fewer_than_k() -> None:
    x = clustered(5, seed=3)
    sharded = ShardedIndex(DIM, 4, num_threads=1)
    assert len(sharded.search(x[:1], k=3).ids[0]) == 3  # empty index: all padding
    assert np.all(sharded.search(x[:1], k=3).ids == NO_ID)
    sharded.add(x)
    found, scores = sharded.search(x[:2], k=8)
    assert found.shape == (2, 8) and found.dtype == np.uint64 and scores.dtype == np.float32
    assert np.all(np.sort(found[:, :5], axis=1) == np.arange(5, dtype=np.uint64))
    assert np.all(found[:, 5:] == NO_ID) and np.all(np.isnan(scores[:, 5:]))
    empty_ids, empty_scores = sharded.search(np.zeros((0, DIM), np.float32), k=4)
    assert empty_ids.shape == (0, 4) and empty_scores.shape == (0, 4)


# ---------------------------------------------------------------------- kmeans
def test_kmeans_full_probe_equals_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    sharded = ShardedIndex(DIM, 4, partition="kmeans", metric="l2", dtype="float32", num_threads=2)
    sharded.add(x)
    assert sharded.centroids_ is not None and sharded.centroids_.shape == (4, DIM)
    sizes = sharded.shard_sizes
    assert sizes.sum() == len(x) and sizes.min() > 0
    found, _ = sharded.search(q, k=10, ef=len(x), n_probe=4)
    np.testing.assert_array_equal(found, brute_force(x, q, 10, "l2").astype(np.uint64))
    np.testing.assert_array_equal(found, sharded.search(q, k=10, ef=len(x)).ids)  # default n_probe = n_shards


def test_kmeans_routes_by_nearest_centroid(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    sharded = ShardedIndex(DIM, 4, partition="kmeans", metric="l2", dtype="float32", num_threads=1)
    ids = sharded.add(x)
    c = sharded.centroids_
    assert c is not None
    nearest = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    for s, shard in enumerate(sharded.shard_engine.shards):  # type: ignore[attr-defined]
        held = shard.index.contains(ids)
        np.testing.assert_array_equal(held, nearest == s)


def test_kmeans_partial_probe_recall() -> None:
    both = clustered(4100, seed=4, n_clusters=32)  # queries from the data's own clusters
    x, q = both[:4000], both[4000:]
    sharded = ShardedIndex(DIM, 8, partition="kmeans", metric="l2", dtype="float32", num_threads=2)
    sharded.add(x)
    truth = brute_force(x, q, 10, "l2")
    r2 = recall(sharded.search(q, k=10, ef=200, n_probe=2).ids.astype(np.int64), truth)
    r8 = recall(sharded.search(q, k=10, ef=200, n_probe=8).ids.astype(np.int64), truth)
    assert r8 > 0.99
    assert r2 >= 0.9, r2
    answered = sharded.search(q[:1], k=10, n_probe=2).shards_answered
    assert answered.sum() == 2  # one query probes exactly two shards


def test_kmeans_cosine_routes_by_direction(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    sharded = ShardedIndex(DIM, 4, partition="kmeans", metric="cosine", dtype="float32", num_threads=1)
    sharded.add(x)
    # scaled copies of the queries probe the same shards, so find the same neighbours
    a = sharded.search(q, k=5, ef=200, n_probe=1).ids
    b = sharded.search(7.5 * q, k=5, ef=200, n_probe=1).ids
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------- routing of reads and writes
@pytest.mark.parametrize("partition", ["hash", "kmeans"])
def test_remove_contains_get_vectors_len(data: tuple[np.ndarray, np.ndarray], partition: str) -> None:
    x, q = data
    sharded = ShardedIndex(DIM, 4, partition=partition, metric="l2", dtype="float32", num_threads=2)
    ids = sharded.add(x, ids=np.arange(1000, 1000 + len(x)))
    assert len(sharded) == len(x) and int(sharded.shard_sizes.sum()) == len(x)
    assert 1000 in sharded and 999 not in sharded and "x" not in sharded
    np.testing.assert_array_equal(sharded.get_vectors(ids[[5, 2999, 0]]), x[[5, 2999, 0]])
    gone = ids[::3]
    sharded.remove(gone)
    assert len(sharded) == len(x) - len(gone)
    assert not sharded.contains(gone).any() and sharded.contains(ids[1::3]).all()
    found = sharded.search(q, k=20, ef=len(x)).ids
    assert not np.isin(found, gone).any()
    keep = np.setdiff1d(np.arange(len(x)), np.arange(0, len(x), 3))
    truth = ids[keep[brute_force(x[keep], q, 20, "l2")]]
    np.testing.assert_array_equal(found, truth)
    with pytest.raises(KeyError, match="unknown id 1000"):
        sharded.get_vectors([1001, 1000])
    # automatic ids continue past every explicit id, across shards
    more = sharded.add(x[:3])
    assert more.tolist() == [1000 + len(x), 1001 + len(x), 1002 + len(x)]


def test_ids_lists_every_shard(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    sharded = ShardedIndex(DIM, 3, num_threads=1)
    ids = sharded.add(x[:500], ids=np.arange(500) * 7)
    np.testing.assert_array_equal(np.sort(sharded.ids()), np.sort(ids))
    owner = hash_shard(ids, 3)
    for s in range(3):
        np.testing.assert_array_equal(np.sort(sharded.shard_ids(s)), np.sort(ids[owner == s]))
    with pytest.raises(ValueError, match=r"shard must be an integer in \[0, 3\), got 3"):
        sharded.shard_ids(3)


def test_filter_and_attributes_pass_through(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    category = np.arange(len(x)) % 10
    sharded = ShardedIndex(DIM, 4, metric="l2", num_threads=2)
    sharded.add(x, attributes={"category": category})
    found, _ = sharded.search(q, k=10, ef=200, filter={"category": [3, 7]})
    assert np.isin(category[found.astype(np.int64)], [3, 7]).all()
    allowed = np.flatnonzero(np.isin(category, [3, 7]))
    truth = allowed[brute_force(x[allowed], q, 10, "l2")]
    assert recall(found.astype(np.int64), truth) >= 0.9
    # an id filter goes only to the shards owning the ids
    few = np.array([11, 500, 1234, 2999])
    res = sharded.search(q, k=10, filter=few)
    assert set(res.ids[0].tolist()) == {11, 500, 1234, 2999, int(NO_ID)}
    owners = set(hash_shard(few, 4).tolist())
    assert res.shards_answered.tolist() == [s in owners for s in range(4)]
    with pytest.raises(ValueError, match="native backend"):
        ShardedIndex(DIM, 2, dtype="float32").search(q, filter={"category": 3})
    with pytest.raises(ValueError, match="attribute 'category' has length 2"):
        sharded.add(x[:3], attributes={"category": [1, 2]})
    assert len(sharded) == len(x)


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("partition", ["hash", "kmeans"])
def test_save_load_round_trip(data: tuple[np.ndarray, np.ndarray], tmp_path: Path, partition: str) -> None:
    x, q = data
    sharded = ShardedIndex(DIM, 4, partition=partition, num_threads=2, M=12)
    sharded.add(x, attributes={"c": np.arange(len(x)) % 4})
    sharded.remove([1, 2, 3])
    before = sharded.search(q, k=10, n_probe=2 if partition == "kmeans" else None)
    before_filtered = sharded.search(q, k=10, filter={"c": 1})
    path = tmp_path / "idx"
    sharded.save(path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["n_shards"] == 4
    assert [e["count"] for e in manifest["shards"]] == sharded.shard_sizes.tolist()
    for mmap in (False, True):
        loaded = ShardedIndex.load(path, mmap=mmap, num_threads=2)
        assert (loaded.partition, loaded.metric, len(loaded)) == (partition, "cosine", len(x) - 3)
        after = loaded.search(q, k=10, n_probe=2 if partition == "kmeans" else None)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.scores, before.scores)
        np.testing.assert_array_equal(loaded.search(q, k=10, filter={"c": 1}).ids, before_filtered.ids)
        assert 1 not in loaded and 4 in loaded
        assert loaded.add(x[:1]).tolist() == [len(x)]  # automatic ids carry on
        loaded.close()
    # saving again over a saved index replaces it; anything else is refused
    sharded.remove([4])
    sharded.save(path)
    assert len(ShardedIndex.load(path)) == len(x) - 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a saved ShardedIndex"):
        sharded.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_empty_shards_round_trip(tmp_path: Path) -> None:
    sharded = ShardedIndex(DIM, 6, num_threads=1)
    sharded.add(clustered(2, seed=9))  # at most two shards hold anything
    sharded.save(tmp_path / "idx")
    loaded = ShardedIndex.load(tmp_path / "idx")
    assert len(loaded) == 2 and loaded.shard_sizes.sum() == 2


def _saved(tmp_path: Path, data: tuple[np.ndarray, np.ndarray], partition: str = "hash") -> Path:
    x, _ = data
    sharded = ShardedIndex(DIM, 3, partition=partition, num_threads=1, M=8, ef_construction=40)
    sharded.add(x[:600])
    path = tmp_path / "idx"
    sharded.save(path)
    return path


def test_missing_shard_reported_by_name(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data)
    (path / "shard-0001.simsearch").unlink()
    with pytest.raises(CorruptFileError, match=r"shard 1 file 'shard-0001\.simsearch' is missing"):
        ShardedIndex.load(path)


def test_corrupt_shard_reported_by_name(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data)
    file = path / "shard-0002.simsearch"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match=r"shard 2 file 'shard-0002\.simsearch' .* is corrupt"):
        ShardedIndex.load(path)
    # without the manifest's checksum, the shard's own section checksums still catch it, naming the shard
    with pytest.raises(CorruptFileError, match="shard-0002"):
        ShardedIndex.load(path, verify=False)


def test_corrupt_centroids_reported(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data, partition="kmeans")
    c = np.load(path / "centroids.npy")
    np.save(path / "centroids.npy", c + 1)
    with pytest.raises(CorruptFileError, match="centroids file 'centroids.npy' .* is corrupt"):
        ShardedIndex.load(path)


def _edit_manifest(path: Path, **changes: object) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def test_newer_manifest_refused(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data)
    _edit_manifest(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(FormatVersionError, match=f"format_version {FORMAT_VERSION + 1}.*newer simsearch: upgrade"):
        ShardedIndex.load(path)


def test_foreign_manifest_refused(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data)
    _edit_manifest(path, format="someone.else")
    with pytest.raises(CorruptFileError, match="not a ShardedIndex manifest .format 'someone.else'"):
        ShardedIndex.load(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CorruptFileError, match="ShardedIndex manifest .* is not valid JSON"):
        ShardedIndex.load(path)
    (path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="is not a JSON object"):
        ShardedIndex.load(path)
    (path / MANIFEST).write_text(json.dumps({"format": "simsearch.ShardedIndex", "format_version": 1, "n_shards": 1, "shards": [{}]}))
    with pytest.raises(CorruptFileError, match=r"it lacks \['dim', 'partition'.*'shards\[0\]\.file'"):
        ShardedIndex.load(path)
    (path / MANIFEST).write_text(json.dumps({"format": "simsearch.ShardedIndex", "format_version": "1"}))
    with pytest.raises(CorruptFileError, match="no valid format_version"):
        ShardedIndex.load(path)
    with pytest.raises(CorruptFileError, match="no manifest.json; it is not a saved ShardedIndex"):
        ShardedIndex.load(tmp_path)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"shards": "all of them"}, "'shards' is not a list of objects"),
        ({"n_shards": 4}, "lists 3 shards but n_shards is 4"),
        ({"index_params": [1]}, "'index_params' is not an object"),
        ({"centroids": {"sha256": "0"}}, "bad 'centroids' entry"),
    ],
)
def test_inconsistent_manifest_refused(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], changes: dict[str, object], words: str
) -> None:
    path = _saved(tmp_path, data)
    _edit_manifest(path, **changes)
    with pytest.raises(CorruptFileError, match=words):
        ShardedIndex.load(path)


def test_shard_count_mismatch_refused(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["shards"][1]["count"] += 1
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="shard 1 file 'shard-0001.simsearch' .* holds .* entries, the manifest says"):
        ShardedIndex.load(path)


def test_manifest_layout_is_the_saved_format(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    """Folders saved before and after the move to simsearch/sharding/ are the same format: pin its fields."""
    path = _saved(tmp_path, data, partition="kmeans")
    manifest = json.loads((path / MANIFEST).read_text())
    assert list(manifest) == [
        "format", "format_version", "dim", "metric", "partition", "n_shards", "next_id", "seed",
        "kmeans_train_size", "index_params", "centroids", "shards",
    ]  # fmt: skip
    assert (manifest["format"], manifest["format_version"]) == ("simsearch.ShardedIndex", 1)
    assert manifest["centroids"]["file"] == "centroids.npy"
    assert [sorted(e) for e in manifest["shards"]] == [["count", "file", "sha256"]] * 3
    assert sorted(p.name for p in path.iterdir()) == ["centroids.npy", MANIFEST] + [f"shard-000{s}.simsearch" for s in range(3)]
    # a manifest as the previous writer laid it out (indent 2, no final newline) reads the same
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2))
    assert len(ShardedIndex.load(path)) == 600


def test_shard_file_outside_the_directory_refused(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    path = _saved(tmp_path, data)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["shards"][0]["file"] = "../elsewhere.simsearch"
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="not a plain file name"):
        ShardedIndex.load(path)


# ---------------------------------------------------------------------- bad input
def test_bad_input_raises_and_loses_nothing(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    sharded = ShardedIndex(DIM, 4, num_threads=2)
    ids = sharded.add(x[:1000])
    before = sharded.search(q, k=5)
    bad = x[1000:1010].copy()
    bad[4, 3] = np.nan
    with pytest.raises(ValueError, match="vectors has dimension 23, the index has 24"):
        sharded.add(x[:10, :23])
    with pytest.raises(ValueError, match="vectors contains NaN"):
        sharded.add(bad)
    with pytest.raises(TypeError, match="expected floating point"):
        sharded.add(np.ones((2, DIM), dtype=np.int64))
    with pytest.raises(ValueError, match="already in the index"):
        sharded.add(x[1000:1003], ids=[5000, 5001, int(ids[17])])
    with pytest.raises(ValueError, match="duplicate id 7000"):
        sharded.add(x[1000:1003], ids=[7000, 7000, 7001])
    with pytest.raises(ValueError, match="zero norm"):
        sharded.add(np.zeros((1, DIM), np.float32))
    with pytest.raises(KeyError, match="unknown id 123456"):
        sharded.remove([int(ids[0]), 123456])
    with pytest.raises(ValueError, match="queries has dimension 5"):
        sharded.search(np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="n_probe applies to partition='kmeans'"):
        sharded.search(q, n_probe=2)
    with pytest.raises(ValueError, match="k must be positive"):
        sharded.search(q, k=0)
    assert len(sharded) == 1000 and int(ids[0]) in sharded and 5000 not in sharded
    after = sharded.search(q, k=5)
    np.testing.assert_array_equal(after.ids, before.ids)


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="partition must be one of"):
        ShardedIndex(DIM, 2, partition="range")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_shards must be positive"):
        ShardedIndex(DIM, 0)
    with pytest.raises(ValueError, match="metric must be one of"):
        ShardedIndex(DIM, 2, metric="hamming")
    with pytest.raises(ValueError, match="engine_options apply to engine='ray'"):
        ShardedIndex(DIM, 2, engine_options={"max_restarts": 1})
    km = ShardedIndex(DIM, 8, partition="kmeans")
    with pytest.raises(ValueError, match="at least n_shards=8 training vectors"):
        km.add(clustered(5))
    assert len(km) == 0 and km.centroids_ is None
    with pytest.raises(ValueError, match="n_probe must be between 1 and n_shards=8"):
        km.search(clustered(1), n_probe=9)


# ---------------------------------------------------------------------- real data
def test_bigann10k_sharded_recall_matches_one_index() -> None:
    folder = require_data("bigann10k")
    base = np.load(folder / "base.npy").astype(np.float32)
    queries = np.load(folder / "queries.npy").astype(np.float32)
    truth = np.load(folder / "groundtruth.npy")[:, :10].astype(np.int64)
    one = simsearch.Index(128, metric="l2", num_threads=2)
    one.add(base)
    sharded = ShardedIndex(128, 4, metric="l2", num_threads=2)
    sharded.add(base)
    r_one = recall(one.search(queries, k=10, ef=64)[0].astype(np.int64), truth)
    r_sharded = recall(sharded.search(queries, k=10, ef=64).ids.astype(np.int64), truth)
    assert r_sharded >= r_one - 0.01, (r_sharded, r_one)
    assert r_sharded > 0.9


def test_ray_engine_without_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    monkeypatch.delitem(sys.modules, "simsearch.ray", raising=False)
    monkeypatch.delitem(sys.modules, "simsearch.sharding.ray", raising=False)
    with pytest.raises(ImportError, match=r"install it with: pip install 'simsearch\[ray\]'"):
        ShardedIndex(DIM, 2, engine="ray")


def test_local_index_never_imports_the_ray_engine() -> None:
    """The engine is found through the registry; the in-process index names no Ray module."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from simsearch.sharding import ShardedIndex; "
        "i = ShardedIndex(8, 2, num_threads=1); i.add(np.eye(8, dtype=np.float32)); i.search(np.eye(8, dtype=np.float32), k=2); "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'simsearch.ray', 'simsearch.sharding.ray'))))"
    )
    from _helpers import TESTS_DIR, child_env  # the installed simsearch, not the checkout's source

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=child_env(), cwd=TESTS_DIR).stdout
    assert out.strip() == "[]"


def test_unknown_engine_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"engine must be one of \['local', 'ray'\], got 'dask'"):
        ShardedIndex(DIM, 2, engine="dask")


def test_search_result_old_name_warns() -> None:
    import simsearch.sharding

    with pytest.deprecated_call(match="use simsearch.sharding.ShardedSearchResult"):
        alias = simsearch.sharding.SearchResult
    assert alias is ShardedSearchResult
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        simsearch.sharding.Nothing  # noqa: B018


# ---------------------------------------------------------------------- one shared quantizer
def _shard_indexes(sharded: ShardedIndex) -> list[simsearch.Index]:
    return [shard.index for shard in sharded.shard_engine.shards]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def recall_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20,000 clustered 64-d vectors, 300 queries from the same clusters, and their exact top-10 (cosine)."""
    both = blobs(20_300, 64, 100, seed=11, spread=1.0, noise=0.6, dtype=np.float32)[0]
    x, q = both[:20_000], both[20_000:]
    return x, q, brute_force(x, q, 10, "cosine")


def test_hash_shards_find_what_one_index_finds(recall_set: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    # issue 15: within 0.01 of one index at ef 64 and 0.005 at ef 256; shards that trained
    # their own quantizers merged int8 scores on different scales and lost more
    x, q, truth = recall_set
    params = {"M": 16, "ef_construction": 100, "num_threads": 2}
    one = simsearch.Index(x.shape[1], **params)
    one.add(x)
    sharded = ShardedIndex(x.shape[1], 4, **params)
    sharded.add(x)
    for ef, tol in ((64, 0.01), (256, 0.005)):
        r_one = recall(one.search(q, k=10, ef=ef)[0].astype(np.int64), truth)
        r_sharded = recall(sharded.search(q, k=10, ef=ef).ids.astype(np.int64), truth)
        assert r_sharded >= r_one - tol, (ef, r_sharded, r_one)
    sharded.close()


def test_shards_share_one_final_quantizer(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, _ = data
    sharded = ShardedIndex(DIM, 4, metric="l2", num_threads=2)
    sharded.add(x)
    # the ranges one index learns from the same (whole) first batch
    alone = simsearch.Index(DIM, metric="l2", num_threads=2)
    alone.add(x)
    for index in _shard_indexes(sharded):
        assert index.quantizer_final
        for got, want in zip(index.quantizer, alone.quantizer):
            assert got.dtype == np.float32 and np.array_equal(got, want)
    sharded.save(tmp_path / "s")
    loaded = ShardedIndex.load(tmp_path / "s")
    for index in _shard_indexes(loaded):
        assert index.quantizer_final and all(np.array_equal(a, b) for a, b in zip(index.quantizer, alone.quantizer))
    sharded.close()
    loaded.close()


def test_empty_shards_take_the_shared_quantizer_at_load(tmp_path: Path) -> None:
    x = clustered(2, seed=4)
    sharded = ShardedIndex(DIM, 4, num_threads=1, train_size=2)  # two rows are enough to train on here
    sharded.add(x, ids=[0, 1])
    assert (sharded.shard_sizes == 0).sum() >= 2
    shared = _shard_indexes(sharded)[0].quantizer
    sharded.save(tmp_path / "s")
    loaded = ShardedIndex.load(tmp_path / "s")
    for index in _shard_indexes(loaded):
        assert index.quantizer_final and all(np.array_equal(a, b) for a, b in zip(index.quantizer, shared))
    loaded.add(clustered(50, seed=5))  # the empty shards keep the shared ranges as they fill
    for index in _shard_indexes(loaded):
        assert all(np.array_equal(a, b) for a, b in zip(index.quantizer, shared))
    sharded.close()
    loaded.close()


def test_a_first_add_too_small_to_train_on_leaves_each_shard_its_own() -> None:
    sharded = ShardedIndex(DIM, 2, num_threads=1)  # train_size 20,000: a first add of 50 rows is too few
    sharded.add(clustered(50, seed=7))
    assert not any(index.quantizer_final for index in _shard_indexes(sharded))
    sharded.close()


def test_first_batch_sample_is_seeded_and_bounded() -> None:
    x = clustered(500, seed=6)
    a = ShardedIndex(DIM, 2, num_threads=1, train_size=100, seed=3)
    b = ShardedIndex(DIM, 2, num_threads=1, train_size=100, seed=3)
    a.add(x)
    b.add(x)
    qa, qb = _shard_indexes(a)[0].quantizer, _shard_indexes(b)[0].quantizer
    assert all(np.array_equal(u, v) for u, v in zip(qa, qb))
    a.close()
    b.close()
