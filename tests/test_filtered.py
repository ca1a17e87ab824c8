"""Filtered search (attributes and id lists, evaluated in C++) and compaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import simsearch
from simsearch._validation import NO_ID

from _helpers import brute_force, recall


def _data(n: int = 8000, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, dim))
    x = centers[rng.integers(0, 40, n)] + 0.7 * rng.normal(size=(n, dim))
    q = centers[rng.integers(0, 40, 100)] + 0.7 * rng.normal(size=(100, dim))
    return x.astype(np.float32), q.astype(np.float32)


@pytest.fixture(scope="module")
def catalog() -> tuple[simsearch.Index, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    x, q = _data()
    rng = np.random.default_rng(1)
    attrs = {
        "category": rng.integers(0, 1000, len(x)),  # 0.1% per value
        "brand": rng.integers(0, 10, len(x)),  # 10% per value
    }
    index = simsearch.Index(32, num_threads=2)
    index.add(x, attributes=attrs)
    return index, x, q, attrs


@pytest.mark.parametrize(
    "flt",
    [
        {"brand": 3},  # 10%
        {"brand": [1, 2, 3, 4, 5]},  # 50%
        {"category": list(range(10))},  # 1%
        {"category": 7},  # 0.1%
        {"brand": [3, 4], "category": list(range(0, 1000, 3))},  # AND: ~6.7%
    ],
)
@pytest.mark.parametrize("mode", ["auto", "walk", "scan"])
def test_filtered_recall_against_exact(catalog, flt: dict, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    index, x, q, attrs = catalog
    # Force each strategy: a zero walk cost makes every walk look free (the
    # 2% floor still scans below it); a brute fraction of 1 always scans.
    if mode == "walk":
        monkeypatch.setattr(index, "filter_walk_cost", 0.0)
    elif mode == "scan":
        monkeypatch.setattr(index, "filter_brute_fraction", 1.01)
    mask = np.ones(len(x), bool)
    for name, values in flt.items():
        mask &= np.isin(attrs[name], np.atleast_1d(values))
    allowed = np.flatnonzero(mask)
    k = min(10, allowed.size)
    ids, scores = index.search(q, k=10, filter=flt)
    got = ids[:, :k].astype(np.int64)
    assert np.isin(got, allowed).all()  # only allowed items come back
    assert (ids[:, :k] != NO_ID).all()  # k results whenever k items pass
    if allowed.size < 10:
        assert (ids[:, allowed.size :] == NO_ID).all()
    assert recall(got, allowed[brute_force(x[allowed], q, k, "cosine")]) >= 0.95


@pytest.mark.parametrize("walk_cost", [0.0, 16.0])
def test_filter_by_id_list(catalog, walk_cost: float, monkeypatch: pytest.MonkeyPatch) -> None:
    index, x, q, _ = catalog
    monkeypatch.setattr(index, "filter_walk_cost", walk_cost)
    allowed = np.arange(0, len(x), 7)
    ids, _ = index.search(q, k=10, filter=np.concatenate([allowed, [10**12]]))  # unknown ids are ignored
    assert np.isin(ids, allowed).all()
    assert recall(ids.astype(np.int64), allowed[brute_force(x[allowed], q, 10, "cosine")]) >= 0.95


def test_filter_nothing_passes_gives_padding(catalog) -> None:
    index, _, q, _ = catalog
    ids, scores = index.search(q[:3], k=5, filter={"category": 5000})
    assert (ids == NO_ID).all() and np.isnan(scores).all()
    ids, _ = index.search(q[:3], k=5, filter=[])
    assert (ids == NO_ID).all()


def test_filter_skips_removed_and_missing(tmp_path: Path) -> None:
    x, q = _data(2000)
    index = simsearch.Index(32)
    index.add(x[:1000], attributes={"shop": np.full(1000, 4)})
    index.add(x[1000:])  # no attribute: never matches a condition
    index.remove(np.arange(0, 1000, 2))
    ids, _ = index.search(q, k=20, filter={"shop": 4})
    got = ids[ids != NO_ID].astype(np.int64)
    assert got.size == q.shape[0] * 20
    assert (got < 1000).all() and (got % 2 == 1).all()
    index.save(tmp_path / "ix")
    loaded = simsearch.Index.load(tmp_path / "ix")
    assert loaded.attribute_names == ["shop"]
    np.testing.assert_array_equal(loaded.search(q, k=20, filter={"shop": 4})[0], ids)


def test_attributes_added_later_and_slot_reuse() -> None:
    x, q = _data(1500)
    index = simsearch.Index(32)
    index.add(x[:500])
    index.add(x[500:1000], attributes={"color": np.arange(500) % 3})
    index.remove(np.arange(500, 700))
    index.add(x[1000:1200], attributes={"color": np.full(200, 1)})  # takes freed slots
    ids, _ = index.search(q, k=10, filter={"color": 1})
    got = ids.astype(np.int64)
    ok = ((got >= 700) & (got < 1000) & ((got - 500) % 3 == 1)) | ((got >= 1000) & (got < 1200))
    assert ok.all()


@pytest.mark.parametrize("brute_fraction", [0.02, 1.01])
def test_filters_follow_adds_removes_and_reuse_between_searches(brute_fraction: float) -> None:
    # The posting lists behind filters are built on first use: every search
    # here follows a change, so stale lists would return wrong or missing items.
    x, q = _data(1200)
    index = simsearch.Index(32)
    index.filter_brute_fraction = brute_fraction
    colors = np.arange(1200) % 4
    live: dict[int, int] = {}

    def check() -> None:
        for color in range(5):
            allowed = np.array(sorted(i for i, c in live.items() if c == color), dtype=np.int64)
            ids, _ = index.search(q[:20], k=10, filter={"color": color})
            got = ids.astype(np.int64)
            k = min(10, allowed.size)
            assert np.isin(got[:, :k], allowed).all()
            assert (ids[:, :k] != NO_ID).all() and (ids[:, k:] == NO_ID).all()

    index.add(x[:600], attributes={"color": colors[:600]})
    live.update(zip(range(600), colors[:600].tolist()))
    check()
    index.remove(np.arange(0, 600, 4))  # every color-0 item
    for i in range(0, 600, 4):
        del live[i]
    check()
    index.add(x[600:750], ids=np.arange(600, 750), attributes={"color": np.full(150, 4)})  # reuses freed slots
    live.update(dict.fromkeys(range(600, 750), 4))
    check()


@pytest.mark.parametrize(
    ("attributes", "error", "match"),
    [
        ({"category": np.zeros(5, np.int64)}, ValueError, "length 5, expected 10"),
        ({"category": np.zeros(10, np.float32)}, TypeError, "small integers"),
        ({"category": np.array(["a"] * 10)}, TypeError, "map strings to ints"),
        ({"category": np.full(10, -(2**31))}, ValueError, "outside"),
        ({"": np.zeros(10, int)}, ValueError, "non-empty"),
        ([("category", np.zeros(10, int))], TypeError, "mapping"),
    ],
)
def test_bad_attributes_change_nothing(attributes: object, error: type, match: str) -> None:
    x, _ = _data(30)
    index = simsearch.Index(32)
    index.add(x[:20], attributes={"category": np.zeros(20, int)})
    with pytest.raises(error, match=match):
        index.add(x[20:30], attributes=attributes)  # type: ignore[arg-type]
    assert len(index) == 20


def test_bad_filters(catalog) -> None:
    index, _, q, _ = catalog
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        index.search(q, filter={"colour": 1})
    with pytest.raises(TypeError, match="small integers"):
        index.search(q, filter={"brand": "acme"})
    with pytest.raises(ValueError, match="empty mapping"):
        index.search(q, filter={})
    with pytest.raises(ValueError, match="native backend"):
        simsearch.Index(32, backend="hnswlib").search(q, filter=[1])


def test_compact_gives_memory_back_and_keeps_recall() -> None:
    x, q = _data(8000)
    attrs = {"brand": np.arange(8000) % 10}
    index = simsearch.Index(32, num_threads=2, train_size=2000)
    index.add(x, attributes=attrs)
    before = index.memory_bytes
    removed = np.arange(0, 8000, 2)
    index.remove(removed)
    vec_before = index.get_vectors([1, 7999])
    index.compact()
    assert index.memory_bytes <= 0.6 * before
    assert len(index) == 4000 and index._impl.core.n_slots == 4000
    kept = np.arange(1, 8000, 2)
    assert not index.contains(removed).any() and index.contains(kept).all()
    fresh = simsearch.Index(32, num_threads=2, train_size=2000)
    fresh.add(x[kept], ids=kept)
    truth = kept[brute_force(x[kept], q, 10, "cosine")]
    r_compact = recall(index.search(q, k=10, ef=100)[0].astype(np.int64), truth)
    r_fresh = recall(fresh.search(q, k=10, ef=100)[0].astype(np.int64), truth)
    assert r_compact >= r_fresh - 0.02
    ids, _ = index.search(q, k=10, filter={"brand": 3})
    assert np.isin(ids, kept[(kept % 10) == 3]).all()  # attributes survived
    np.testing.assert_array_equal(index.get_vectors([1, 7999]), vec_before)  # codes survive exactly
    assert index.add(x[:1]).tolist() == [7999 + 1]  # auto ids continue past every id ever used
