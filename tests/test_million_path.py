"""find_duplicates at scale, at small sizes: the input used in place, normalized in chunks, the same answers.

References: the rows normalized by numpy in one step, find_duplicates on a
normalized copy of the same vectors, tracemalloc's count of the bytes that
numpy allocates during the call (the native index's memory is not in it).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from simsearch import find_duplicates
from simsearch.applications import candidates
from simsearch.applications._items import as_vectors
from simsearch.applications.candidates import UNIT_TOLERANCE, load_items, unit_vectors
from simsearch.applications.lexical import PairScoring

from _helpers import duplicate_groups, normalize


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return normalize(x).astype(np.float32)


def test_unit_float32_rows_are_used_in_place_read_only():
    x = unit_rows(300, 16)
    before = x.copy()
    v = unit_vectors(x, "data")
    assert np.shares_memory(v, x)
    assert not v.flags.writeable
    assert x.flags.writeable  # the caller's array keeps its flags
    np.testing.assert_array_equal(v, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_other_rows_are_normalized_into_a_new_array(dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((257, 7)) * rng.uniform(0.1, 10, (257, 1))).astype(dtype)
    x[5] = 0.0
    before = x.copy()
    v = unit_vectors(x, "data")
    assert v.dtype == np.float32 and not np.shares_memory(v, x)
    np.testing.assert_array_equal(x, before)  # the input is not touched
    np.testing.assert_allclose(np.delete(v, 5, 0), normalize(np.delete(x, 5, 0)), rtol=2e-6, atol=1e-7)
    assert not v[5].any()  # a zero row stays zero
    np.testing.assert_array_equal(v, as_vectors(x, "data"))  # the same bits as the copying path


def test_one_row_that_is_not_unit_makes_a_copy_like_as_vectors(monkeypatch):
    monkeypatch.setattr(candidates, "_NORM_CHUNK", 4)  # the odd row is in the last chunk
    x = unit_rows(10, 5)
    x[9] *= 2.0
    before = x.copy()
    v = unit_vectors(x, "data")
    assert not np.shares_memory(v, x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(v, as_vectors(x, "data"))


def test_the_tolerance_separates_unit_rows_from_scaled_ones():
    x = unit_rows(50, 384)
    assert np.shares_memory(unit_vectors(x, "data"), x)
    scaled = x * np.float32(1 + 10 * UNIT_TOLERANCE)
    assert not np.shares_memory(unit_vectors(scaled, "data"), scaled)


def test_non_contiguous_input_is_converted_once_and_normalized():
    x = unit_rows(40, 12)
    strided = np.asfortranarray(x * 3)
    v = unit_vectors(strided, "data")
    np.testing.assert_allclose(v, x, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(v, as_vectors(strided, "data"))


@pytest.mark.parametrize(("bad", "error", "words"), [
    (np.array([[1.0, np.nan]], dtype=np.float32), ValueError, "NaN"),
    (np.ones(4, dtype=np.float32), ValueError, "1-D"),
    (np.ones((3, 4), dtype=np.int64), TypeError, "dtype int64"),
])  # fmt: skip
def test_bad_vectors_raise_named_errors(bad, error, words):
    with pytest.raises(error, match=words):
        unit_vectors(bad, "data")
    with pytest.raises(error, match=words):
        find_duplicates(bad, progress=False)


def test_load_items_copies_unless_told_not_to():
    x = unit_rows(20, 8)
    assert not np.shares_memory(load_items(x, scoring=PairScoring()).items.vectors, x)
    assert np.shares_memory(load_items(x, scoring=PairScoring(), copy=False).items.vectors, x)


def test_find_duplicates_does_not_change_its_input_and_matches_a_normalized_copy():
    x, _ = duplicate_groups(n_groups=40, size=3, dim=24, noise=0.05, seed=3)
    unit = normalize(x).astype(np.float32)
    before = unit.copy()
    got = find_duplicates(unit, threshold=0.9, k=4, progress=False)
    np.testing.assert_array_equal(unit, before)
    scaled = find_duplicates(unit * np.float32(5), threshold=0.9, k=4, progress=False)  # normalized in a copy
    assert got.pairs.num_rows > 0
    # The same pairs with the same scores to float32 rounding (near ties may swap places in the order).
    a, b = by_pair(got.pairs), by_pair(scaled.pairs)
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[key] for key in a], [b[key] for key in a], atol=2e-6)
    assert got.groups.equals(scaled.groups)


def by_pair(pairs) -> dict[tuple[int, int, bool], float]:
    rows = zip(*(pairs.column(c).to_pylist() for c in ("id_a", "id_b", "same_group", "score")))
    return {(a, b, same): score for a, b, same, score in rows}


def test_find_duplicates_allocates_no_copy_of_unit_float32_input(monkeypatch):
    monkeypatch.setattr(candidates, "_NORM_CHUNK", 1024)  # the norm check's temporaries: 1024 rows
    x = unit_rows(20_000, 64, seed=4)  # 5 MB
    find_duplicates(x[:50], progress=False)  # imports and one-time allocations outside the measurement
    tracemalloc.start()
    try:
        # Each batch gathers both rows of its batch_size * k pairs: 0.1 x.nbytes here.
        find_duplicates(x, k=5, batch_size=200, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A normalized copy alone would be x.nbytes; what is left is per-batch work.
    assert peak < 0.3 * x.nbytes
