"""The Ray engine on a real local Ray (two CPUs, 127.0.0.1): the same
neighbours as one Index, save and load, and what happens when an actor dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs ray: pip install 'simsearch[ray]'")

import simsearch  # noqa: E402
from simsearch.sharding import ShardedIndex, ShardUnavailableError  # noqa: E402

from _helpers import blobs, brute_force  # noqa: E402

# Ray Data's DataContext sets deprecated options of its own when it is created (Ray 2.60)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

DIM = 16


@pytest.fixture(scope="module", autouse=True)
def _ray_for_this_module(local_ray: None) -> None:
    """Every test here runs on the local Ray of conftest.py's ``local_ray``."""


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    both, _ = blobs(2050, DIM, 12, seed=7, spread=3.0, noise=1.0)
    return both[:2000], both[2000:]


@pytest.fixture(scope="module")
def built(data: tuple[np.ndarray, np.ndarray]) -> Iterator[ShardedIndex]:
    x, _ = data
    index = ShardedIndex(DIM, 4, engine="ray", metric="l2", dtype="float32", num_threads=2)
    index.add(x)
    yield index
    index.close()


def test_same_neighbours_as_one_index(built: ShardedIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    assert len(built.shard_engine.actors) == 4 and len(built) == len(x)  # type: ignore[attr-defined]
    assert built.shard_sizes.min() > 0
    one = simsearch.Index(DIM, metric="l2", dtype="float32", num_threads=1)
    one.add(x)
    found, scores = built.search(q, k=10, ef=len(x))
    ref_ids, ref_scores = one.search(q, k=10, ef=len(x))
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(found, brute_force(x, q, 10, "l2").astype(np.uint64))
    # a batch above the object-store threshold travels as one shared ref
    big = np.repeat(q, 60, axis=0)
    np.testing.assert_array_equal(built.search(big, k=10, ef=len(x)).ids, np.repeat(ref_ids, 60, axis=0))
    # reads routed to the right actors
    np.testing.assert_array_equal(built.get_vectors([3, 1999]), x[[3, 1999]])
    assert 1999 in built and 2000 not in built


def test_local_and_ray_engines_agree(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, q = data
    local = ShardedIndex(DIM, 2, partition="kmeans", metric="l2", M=8, num_threads=2)
    remote = ShardedIndex(
        DIM, 2, partition="kmeans", metric="l2", M=8, num_threads=2, engine="ray", engine_options={"shards_per_actor": 2}
    )
    try:
        for index in (local, remote):
            index.add(x, attributes={"c": np.arange(len(x)) % 3})
            index.remove([0, 1, 2])
        a, b = local.search(q, k=5, n_probe=1), remote.search(q, k=5, n_probe=1)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.shards_answered, b.shards_answered)
        np.testing.assert_array_equal(local.search(q, k=5, filter={"c": 2}).ids, remote.search(q, k=5, filter={"c": 2}).ids)
        # the shard's own error reaches the caller with its type and words
        with pytest.raises(ValueError, match="attribute 'c' has length 1"):
            remote.add(x[:2], attributes={"c": [1]})
        with pytest.raises(KeyError, match="unknown id 0"):
            remote.get_vectors([0])
    finally:
        remote.close()


def test_save_load_round_trip(built: ShardedIndex, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    _, q = data
    before = built.search(q, k=10)
    built.save(tmp_path / "idx")
    # any saved index opens on either engine, with any number of shards per actor
    local = ShardedIndex.load(tmp_path / "idx")
    np.testing.assert_array_equal(local.search(q, k=10).ids, before.ids)
    loaded = ShardedIndex.load(tmp_path / "idx", engine="ray", engine_options={"shards_per_actor": 2})
    try:
        assert len(loaded.shard_engine.actors) == 2 and len(loaded) == len(built)  # type: ignore[attr-defined]
        after = loaded.search(q, k=10)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_array_equal(after.scores, before.scores)
        # a corrupt shard is named when loading on Ray too
        raw = bytearray((tmp_path / "idx" / "shard-0003.simsearch").read_bytes())
        raw[-5] ^= 0x55
        (tmp_path / "idx" / "shard-0003.simsearch").write_bytes(bytes(raw))
        with pytest.raises(ValueError, match="shard 3 file 'shard-0003.simsearch'.*corrupt"):
            ShardedIndex.load(tmp_path / "idx", engine="ray")
    finally:
        loaded.close()


def test_dead_actor_restarts_with_acknowledged_writes(data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    x, q = data
    index = ShardedIndex(
        DIM, 4, engine="ray", metric="l2", dtype="float32", num_threads=2,
        engine_options={"shards_per_actor": 2, "workdir": tmp_path},
    )  # fmt: skip
    engine = index.shard_engine
    try:
        index.add(x[:1500])
        index.remove(np.arange(0, 100))
        index.add(x[1500:])  # acknowledged: must survive
        expected = index.search(q, k=10, ef=len(x))
        # 1. Ray kills the actor and restarts it: its shards reload their last saved state
        victim = engine.actor_of(1)
        ray.kill(victim, no_restart=False)
        after = index.search(q, k=10, ef=len(x))  # reads wait out the restart
        np.testing.assert_array_equal(after.ids, expected.ids)
        assert ray.get(victim.was_restarted.remote())
        assert len(index) == len(x) - 100 and 50 not in index and 1999 in index
        # 2. the process dies (SIGKILL): the same
        os.kill(ray.get(engine.actor_of(3).pid.remote()), signal.SIGKILL)
        np.testing.assert_array_equal(index.search(q, k=10, ef=len(x)).ids, expected.ids)
        # 3. an actor gone for good: a clear error, or the other shards' answer when asked for
        ray.kill(engine.actor_of(0), no_restart=True)
        with pytest.raises(ShardUnavailableError, match="shards 0, 1 are unreachable.*allow_partial=True"):
            index.search(q, k=10)
        partial = index.search(q, k=10, ef=len(x), allow_partial=True)
        assert partial.shards_answered.tolist() == [False, False, True, True]
        live = np.arange(100, len(x))
        held = live[simsearch.sharding.hash_shard(live, 4) >= 2]
        truth = held[brute_force(x[held], q, 10, "l2")]
        np.testing.assert_array_equal(partial.ids, truth.astype(np.uint64))
        with pytest.raises(ShardUnavailableError, match="Writes are not retried"):
            index.add(x[:50] + 0.5)
    finally:
        index.close()
    assert not any(tmp_path.iterdir())  # close() removed the actors' working copies


def test_durable_shard_files_switch_atomically(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    """The restart path itself, in this process: state file, generations, an emptied shard."""
    from simsearch.sharding.ray import _DurableShard

    x, _ = data
    params = {"metric": "l2", "dtype": "float32"}
    work = str(tmp_path / "shard-0000.simsearch")
    shard = _DurableShard(work, DIM, params, None, False, 1)
    shard.add(x[:10], np.arange(10, dtype=np.uint64))
    shard.add(x[10:20], np.arange(10, 20, dtype=np.uint64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0000.simsearch.2", "shard-0000.simsearch.state"]
    again = _DurableShard(work, DIM, params, None, False, 1)  # what a restarted actor does
    assert again.size() == 20 and again.generation == 2
    again.remove(np.arange(20, dtype=np.uint64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-0000.simsearch.state"]
    assert _DurableShard(work, DIM, params, None, False, 1).size() == 0


def test_ray_engine_options_checked() -> None:
    with pytest.raises(ValueError, match="max_restarts must be an integer >= -1"):
        ShardedIndex(DIM, 2, engine="ray", engine_options={"max_restarts": -5})
    with pytest.raises(ValueError, match="shards_per_actor must be positive"):
        ShardedIndex(DIM, 2, engine="ray", engine_options={"shards_per_actor": 0})
    with pytest.raises(TypeError, match="unexpected keyword argument 'shard_per_actor'"):
        ShardedIndex(DIM, 2, engine="ray", engine_options={"shard_per_actor": 2})


def test_ray_index_is_a_deprecated_alias(built: ShardedIndex, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """simsearch.ray.RayIndex still builds and loads, with a DeprecationWarning naming the replacement."""
    import simsearch.ray
    import simsearch.sharding.ray

    assert simsearch.ray.RayIndex is simsearch.sharding.ray.RayIndex
    assert simsearch.ray.RayEngine is simsearch.sharding.ray.RayEngine
    x, q = data
    built.save(tmp_path / "idx")
    with pytest.deprecated_call(match=r'use ShardedIndex.load\(\.\.\., engine="ray"'):
        loaded = simsearch.ray.RayIndex.load(tmp_path / "idx", shards_per_actor=2)
    try:
        assert isinstance(loaded, ShardedIndex) and loaded.engine == "ray" and len(loaded.actors) == 2
        assert loaded.actor_of(3) is loaded.actors[1]
        np.testing.assert_array_equal(loaded.search(q, k=10).ids, built.search(q, k=10).ids)
    finally:
        loaded.close()
    with pytest.deprecated_call(match=r'use ShardedIndex\(\.\.\., engine="ray"'):
        new = simsearch.ray.RayIndex(DIM, 2, metric="l2", shards_per_actor=2)
    try:
        new.add(x[:100])
        assert len(new) == 100 and len(new.actors) == 1
    finally:
        new.close()


@pytest.mark.slow  # Ray Data starts its own workers: the slowest test here
def test_cli_dedup_engine_ray_matches_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str], sample: pa.Table) -> None:
    """`simsearch dedup --engine ray`: Ray Data encodes, two Ray actors hold the shards, the self-join runs shard by shard."""
    from simsearch._tables import read_table, write_table
    from simsearch.cli import main

    offers = sample.slice(0, 60)
    write_table(offers, tmp_path / "offers.parquet")
    # the one-process command is the reference (and puts the exported model in the cache the workers read)
    code = main([
        "-q", "dedup", str(tmp_path / "offers.parquet"), "--out", str(tmp_path / "local.parquet"),
        "--groups", str(tmp_path / "local_groups.parquet"),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    code = main([
        # no --workers: the default leaves a CPU to Ray Data's readers (all of them for encoders hung it)
        "-q", "dedup", str(tmp_path / "offers.parquet"), "--engine", "ray", "--shards", "2",
        "--out", str(tmp_path / "pairs.parquet"), "--groups", str(tmp_path / "groups.parquet"),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    local = read_table(tmp_path / "local.parquet")
    assert local.num_rows > 5
    assert read_table(tmp_path / "pairs.parquet").equals(local)
    assert read_table(tmp_path / "groups.parquet").equals(read_table(tmp_path / "local_groups.parquet"))


def test_cli_index_build_engine_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`simsearch index build --engine ray` around the encoding step (faked here; real in the dedup test above)."""
    from simsearch import cli
    from simsearch._tables import read_table, write_table
    from simsearch.applications import ray_jobs
    from simsearch.index.folder import open_folder

    titles = [f"offer {i}" for i in range(300)]
    write_table(pa.table({"id": np.arange(300) * 10, "title": titles}), tmp_path / "items.parquet")
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def fake_encode(path: str, **kwargs: object) -> tuple[pa.Array, list[str], np.ndarray, dict[str, str]]:
        table = read_table(path)
        return table.column("id").combine_chunks(), table.column("title").to_pylist(), vectors, {"model": "fake", "fingerprint": "f"}

    monkeypatch.setattr(ray_jobs, "encode_table", fake_encode)
    code = cli.main(["-q", "index", "build", str(tmp_path / "items.parquet"), "--out", str(tmp_path / "idx"), "--engine", "ray", "--shards", "3"])
    assert code == 0, capsys.readouterr().err
    index, items, meta = open_folder(tmp_path / "idx", open_sharded=ShardedIndex.load)
    assert isinstance(index, ShardedIndex) and index.n_shards == 3 and len(index) == 300
    assert (meta["model"], meta["count"], meta["dim"], meta["index"]) == ("fake", 300, DIM, "sharded")
    assert items.column("id").to_pylist() == list(range(0, 3000, 10))
    found, scores = index.search(vectors, k=1)
    np.testing.assert_array_equal(found[:, 0], np.arange(300))  # row i is id i
    assert np.all(scores[:, 0] > 0.99)


def test_ray_shards_share_one_quantizer(data: tuple[np.ndarray, np.ndarray]) -> None:
    # the int8 shards in the actors get the ranges trained once on the first batch, as local ones do
    x, _ = data
    index = ShardedIndex(DIM, 2, engine="ray", metric="l2", num_threads=2)
    try:
        index.add(x)
        alone = simsearch.Index(DIM, metric="l2", num_threads=1)
        alone.add(x)
        for shared in index.shard_engine.run([(s, "quantizer", ()) for s in range(2)]):
            assert shared is not None and all(np.array_equal(a, b) for a, b in zip(shared, alone.quantizer))
    finally:
        index.close()
