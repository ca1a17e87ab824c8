"""simsearch.Service in-process: deadlines, backpressure, the cache, durable writes, search effort.

The batcher has its own tests (``test_batcher.py``); these run the real
default encoder over an index folder built from the bundled sample, and a
random encoder over a random index where the exact answer is known.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from simsearch.cache import EmbeddingCache
from simsearch.serving import (
    DeadlineExceeded,
    DuplicateIdError,
    QueueFull,
    Service,
)
from simsearch.errors import ClosedError, SimsearchError, UnknownIdError
from simsearch.serving import store


def abandon(service: Service) -> None:
    """Drop a service as a crash would: no snapshot, the log left as it is."""
    service.batcher.close()
    service.catalog._wal.close()


def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.002)


# -- errors ---------------------------------------------------------------------


def test_serving_errors_come_from_simsearch_errors():
    from simsearch.serving import batcher, service

    # The old import paths name the very classes of simsearch.errors.
    assert batcher.QueueFull is QueueFull and batcher.DeadlineExceeded is DeadlineExceeded
    assert service.DuplicateIdError is DuplicateIdError
    for cls in (QueueFull, DeadlineExceeded, DuplicateIdError, ClosedError, UnknownIdError):
        assert issubclass(cls, SimsearchError)
    # ... and keep the builtin bases callers catch.
    assert issubclass(DeadlineExceeded, TimeoutError) and issubclass(DuplicateIdError, ValueError)
    assert issubclass(ClosedError, RuntimeError) and issubclass(UnknownIdError, KeyError)


# -- the service, real encoder ---------------------------------------------


@pytest.fixture(scope="module")
def encoder(model_cache):
    from simsearch import TextEncoder

    return TextEncoder(precision="int8")  # the precision `simsearch index build` uses by default


@pytest.fixture()
def folder(sample_index: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(sample_index, copy)
    return copy


@pytest.fixture(scope="module")
def sample_titles(sample_index: Path) -> dict[int, str]:
    table = pq.read_table(sample_index / store.ITEMS_FILE)
    return dict(zip(table.column("id").to_pylist(), table.column("title").to_pylist()))


def test_service_is_exported_lazily():
    import simsearch

    assert simsearch.Service is Service


def test_search_finds_the_item_by_its_title(folder, encoder, sample_titles):
    item_id, title = next(iter(sample_titles.items()))
    with Service.open(folder, encoder) as service:
        result = service.search([title, "apple iphone"], k=3)
        assert len(result.hits) == 2 and len(result.hits[0]) == 3
        assert result.hits[0][0].id == item_id and result.hits[0][0].title == title
        assert result.index_version == 0
        by_vector = service.search(encoder.encode([title]), k=1)
        assert by_vector.hits[0][0].id == item_id
        matched = service.match([title], k=2)
        assert matched.hits[0][0].is_match is True
        assert matched.hits[0][1].is_match == (matched.hits[0][1].score >= service.match_threshold)


def test_concurrent_searches_share_encoder_batches(folder, encoder):
    sizes = []
    with Service.open(folder, encoder, max_batch_size=64, max_wait_ms=5, on_batch=lambda s: sizes.append(s.size)) as service:
        barrier = threading.Barrier(24)
        errors = []

        def call(i: int) -> None:
            barrier.wait()
            try:
                service.search([f"wireless headphones model {i}"], k=1)
            except Exception as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert sum(sizes) == 24
    assert len(sizes) < 24 and max(sizes) > 1


def test_bad_input_is_refused_with_its_reason(folder, encoder):
    with Service.open(folder, encoder) as service:
        empty = service.embed([])
        assert empty.vectors.shape == (0, 384) and empty.missing.shape == (0,)
        assert service.search(np.empty((0, 384), dtype=np.float32)).hits == []
        with pytest.raises(ValueError, match="empty"):
            service.search(["  "])
        with pytest.raises(ValueError, match="k must be between 1 and 1000"):
            service.search(["tv"], k=0)
        with pytest.raises(ValueError, match="dimension 3"):
            service.search(np.ones((1, 3), dtype=np.float32))
        with pytest.raises(ValueError, match="zero vector"):
            service.search(np.zeros((1, 384), dtype=np.float32))
        with pytest.raises(TypeError, match="single str"):
            service.search("tv")
        with pytest.raises(TypeError, match="must be an int"):
            service.add(["x"], ["a title"])
        with pytest.raises(DuplicateIdError, match="already in the index"):
            service.add([next(iter(service.catalog._key_of))], ["a title"])
        with pytest.raises(UnknownIdError, match="unknown id 123456789"):
            service.remove([123456789])


class SlowEncoder:
    """Stands in for the encoder in the deadline tests: a model call that takes ``delay`` seconds (50 ms)."""

    def __init__(self, real, delay: float = 0.05) -> None:
        self.real, self.dim, self.name, self.fingerprint = real, real.dim, real.name, real.fingerprint
        self.delay, self.calls = delay, 0

    def encode(self, texts, batch_size=None, progress=None):
        self.calls += 1
        time.sleep(self.delay)
        return self.real.encode(texts, progress=False)


def test_timeout_shorter_than_its_own_compute_raises_deadline_exceeded_at_once(folder, encoder):
    slow = SlowEncoder(encoder)
    with Service.open(folder, slow, max_batch_size=1) as service:
        service.embed(["measure the speed"])
        with pytest.raises(DeadlineExceeded, match="give more time"):
            service.embed(["a", "b"], timeout=0.001)
        assert service.stats()["deadline_exceeded"] == 1
        assert slow.calls == 1  # refused before any work was spent on it
        assert service.embed(["still serving"]).vectors.shape == (1, 384)


def test_call_still_queued_when_its_timeout_passes_is_shed_with_queue_full(folder, encoder):
    with Service.open(folder, SlowEncoder(encoder, delay=0.3), max_batch_size=1) as service:
        running = service.submit_embed(["running"])  # the speed is not known yet: the next call is admitted
        wait_for(lambda: service.batcher.depth == 0, "the worker to take the first request")
        with pytest.raises(QueueFull, match="shed|still queued") as info:
            service.embed(["queued behind it"], timeout=0.05)
        assert info.value.retry_after >= 1
        assert running.result(30).vectors.shape == (1, 384)
        assert service.stats()["shed"] == 1 and service.stats()["deadline_exceeded"] == 0


def test_call_being_computed_when_its_timeout_passes_gets_its_result(folder, encoder):
    with Service.open(folder, SlowEncoder(encoder, delay=0.3), max_batch_size=1) as service:
        start = time.monotonic()
        result = service.embed(["computing"], timeout=0.05)  # the work is done: answered, a little late
        assert time.monotonic() - start >= 0.3
        np.testing.assert_allclose(result.vectors, encoder.encode(["computing"]), atol=1e-6)
        assert service.stats()["late"] == 1 and service.stats()["deadline_exceeded"] == 0


def test_wait_async_sheds_queued_work_and_awaits_work_being_computed(folder, encoder):
    import asyncio

    with Service.open(folder, SlowEncoder(encoder, delay=0.3), max_batch_size=1) as service:
        running = service.submit_embed(["running"])
        wait_for(lambda: service.batcher.depth == 0, "the worker to take the first request")
        queued = service.submit_embed(["queued"], timeout=0.05)

        async def both() -> np.ndarray:
            with pytest.raises(QueueFull, match="shed|still queued"):
                await service.wait_async(queued, 0.05)
            return (await service.wait_async(running, 0.05)).vectors

        assert asyncio.run(both()).shape == (1, 384)
        assert service.stats()["shed"] == 1 and service.stats()["deadline_exceeded"] == 0


def test_full_queue_raises_queue_full(folder, encoder):
    with Service.open(folder, SlowEncoder(encoder), max_batch_size=1, max_queue=2) as service:
        service.submit_embed(["one"])  # taken by the worker
        wait_for(lambda: service.batcher.depth == 0, "the worker to take the first request")
        service.submit_embed(["two", "three"])
        with pytest.raises(QueueFull):
            service.embed(["four"])
        assert service.stats()["queue_full"] == 1


def test_cache_answers_repeats_without_encoding(folder, encoder):
    cache = EmbeddingCache(":memory:")
    sizes = []
    with Service.open(folder, encoder, cache=cache, on_batch=lambda s: sizes.append(s.size)) as service:
        first = service.embed(["sony bravia 55 inch", "canon eos 80d"])
        again = service.embed(["canon eos 80d", "sony bravia 55 inch"])
    assert sizes == [2]
    np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
    assert cache.hits == 2 and cache.misses == 2


def test_cache_on_miss_async_answers_at_once_and_fills_later(folder, encoder):
    cache = EmbeddingCache(":memory:")
    with Service.open(folder, encoder, cache=cache, on_miss="async") as service:
        texts = ["lg oled65c8 65 inch", "samsung galaxy s9 64gb"]
        first = service.embed(texts)
        assert first.missing.tolist() == [True, True]
        assert np.isnan(first.vectors).all()
        wait_for(lambda: service.stats()["async_pending"] == 0, "the background encode")
        second = service.embed(texts)
        assert second.missing.tolist() == [False, False]
        np.testing.assert_allclose(second.vectors, encoder.encode(texts), atol=0.05)
        # A search never gets NaN vectors: it waits for its misses.
        assert service.search(["apple ipad air 2 wifi"], k=1).hits[0]


def test_async_on_miss_needs_a_cache(folder, encoder):
    with pytest.raises(ValueError, match="needs a cache"):
        Service.open(folder, encoder, on_miss="async")


def test_acknowledged_writes_survive_a_crash(folder, encoder):
    service = Service.open(folder, encoder)
    assert service.add([900001, 900002], ["zz durable widget alpha", "zz durable gadget beta"]).index_version == 1
    assert service.remove([900002]).index_version == 2
    # No close(): the process "dies" with the writes only in the log.
    assert (folder / store.WAL_FILE).stat().st_size > 16
    reopened = Service.open(folder, encoder)
    assert reopened.index_version == 2
    assert reopened.search(["zz durable widget alpha"], k=1).hits[0][0].id == 900001
    with pytest.raises(KeyError):
        reopened.remove([900002])
    reopened.close()  # folds the log into the folder
    assert (folder / store.WAL_FILE).stat().st_size == 16
    # The folder stays readable by the CLI: items.parquet row i is index key i.
    table = pq.read_table(folder / store.ITEMS_FILE)
    assert table.column("id").to_pylist()[-2:] == [900001, 900002]
    again = Service.open(folder, encoder)
    assert again.index_version == 2 and len(again) == 302
    again.close()
    abandon(service)


def test_crash_after_snapshot_before_log_truncation_replays_idempotently(folder, encoder):
    service = Service.open(folder, encoder)
    service.add([920001, 920002], ["zz snapshot crash one", "zz snapshot crash two"])
    service.remove([920001])
    # The snapshot is written, then the process dies before the log is emptied.
    ids, titles = service.catalog.rows()
    meta = {**service.catalog.meta, "count": len(service), "version": service.index_version}
    store.write_snapshot(folder, service.index, ids, titles, meta)
    abandon(service)
    reopened = Service.open(folder, encoder)
    assert reopened.index_version == 2 and len(reopened) == 302
    assert 920002 in reopened.catalog and 920001 not in reopened.catalog
    reopened.close()


def test_torn_log_tail_is_dropped(folder, encoder):
    service = Service.open(folder, encoder)
    service.add([910001], ["zz torn tail survivor"])
    abandon(service)
    with open(folder / store.WAL_FILE, "ab") as f:
        f.write(b"SWR1\x10\x00\x00")  # a record cut short by the crash
    reopened = Service.open(folder, encoder)
    assert reopened.index_version == 1
    assert 910001 in reopened.catalog
    reopened.add([910002], ["zz written after the torn tail"])
    abandon(reopened)
    third = Service.open(folder, encoder)
    assert third.index_version == 2
    third.close()


def test_writes_after_close_raise_closed_error(folder, encoder):
    service = Service.open(folder, encoder)
    some_id = next(iter(service.catalog._key_of))
    service.close()
    with pytest.raises(ClosedError, match="closed"):
        service.add([930001], ["zz written after close"])
    with pytest.raises(ClosedError, match="closed"):
        service.remove([some_id])
    service.close()  # closing twice is harmless
    again = Service.open(folder, encoder)
    assert 930001 not in again.catalog and some_id in again.catalog
    again.close()


def test_log_of_another_kind_is_refused(folder, encoder):
    (folder / store.WAL_FILE).write_bytes(b"not a log at all")
    with pytest.raises(ValueError, match="not a simsearch write-ahead log"):
        Service.open(folder, encoder)


def test_folder_of_another_model_is_refused(folder, encoder):
    class Other:
        dim, name, fingerprint = 384, "other-model", "0" * 64

    with pytest.raises(ValueError, match="built with model"):
        Service.open(folder, Other())


# -- search effort (ef) ----------------------------------------------------------


class RandomEncoder:
    """An encoder of fixed random unit vectors, for searches whose exact answer is known."""

    dim, name, fingerprint = 32, "random-32", "0" * 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size=None, progress=None):
        self.calls += 1
        rng = np.random.default_rng([len(t) for t in texts])
        v = rng.standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def random_catalog():
    from simsearch import Index

    rng = np.random.default_rng(7)
    base = rng.standard_normal((4000, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = rng.standard_normal((100, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = Index(32, metric="ip", M=8, ef_construction=40)
    index.add(base, ids=np.arange(len(base), dtype=np.uint64))
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    return index, queries, truth


def recall(result, truth) -> float:
    found = [{h.id for h in row} for row in result.hits]
    return float(np.mean([len(f & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def test_ef_changes_the_effort_of_search_and_match(random_catalog):
    index, queries, truth = random_catalog
    with Service(RandomEncoder(), index) as service:
        low, high = service.search(queries, k=10, ef=10), service.search(queries, k=10, ef=400)
        assert recall(low, truth) < recall(high, truth)
        assert recall(high, truth) >= 0.95
        matched = service.match_vectors(queries, k=10, ef=400)
        assert [[h.id for h in row] for row in matched.hits] == [[h.id for h in row] for row in high.hits]
        assert service.match(["a listing"], k=3, ef=10).hits[0]


def test_ef_defaults_to_the_index_own(random_catalog):
    index, queries, _ = random_catalog
    with Service(RandomEncoder(), index) as service:
        before = index.ef
        try:
            index.ef = 400
            by_default = service.search(queries, k=10)
        finally:
            index.ef = before
        explicit = service.search(queries, k=10, ef=400)
    assert [[h.id for h in row] for row in by_default.hits] == [[h.id for h in row] for row in explicit.hits]


@pytest.mark.parametrize("ef, error, words", [(0, ValueError, "ef must be positive"), (2**31, ValueError, "too large"), (2.5, TypeError, "ef must be an integer")])
def test_bad_ef_is_refused_before_any_text_is_encoded(random_catalog, ef, error, words):
    encoder = RandomEncoder()
    with Service(encoder, random_catalog[0]) as service:
        with pytest.raises(error, match=words):
            service.search(["a query"], ef=ef)
        with pytest.raises(error, match=words):
            service.match(["a listing"], ef=ef)
        with pytest.raises(error, match=words):
            service.search(random_catalog[1][:1], ef=ef)
    assert encoder.calls == 0
