"""AdaptiveBatcher's wait and gathering policy: when a batch waits, what it gathers, how large it gets.

Timing facts are made with a batch function that blocks on an event (so
"the worker is busy" is a fact, not a race).
"""

from __future__ import annotations

import threading
import time

import pytest

from simsearch.errors import ClosedError
from simsearch.serving import AdaptiveBatcher, DeadlineExceeded, QueueFull


class Gate:
    """A batch function that records its calls and blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(list(items))
        self.entered.set()
        self.release.wait(30)
        return [s.upper() for s in items]

    def hold(self) -> None:
        self.release.clear()
        self.entered.clear()


def wait_for(condition, what: str, seconds: float = 30.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.002)


def test_one_client_asking_in_turn_never_waits_for_company():
    # A closed loop of one client: each request comes right after the last
    # answer, so arrival gaps are short, but no request ever finds another in
    # the service and waiting would only add latency.
    waits: list[float] = []
    batcher = AdaptiveBatcher(lambda xs: xs, max_batch_size=32, max_wait_ms=500, on_batch=lambda s: waits.append(s.waited_s))
    start = time.monotonic()
    for i in range(40):
        assert batcher.submit([f"q{i}"]).result(30) == [f"q{i}"]
    elapsed = time.monotonic() - start
    assert batcher.wait_budget() == 0.0
    batcher.close()
    assert max(waits) < 0.25 and elapsed < 10  # one 500 ms wait per request would take 20 s
    assert sorted(waits)[len(waits) // 2] < 0.01


def test_a_batch_gathers_texts_of_similar_length_around_the_oldest():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=3, max_wait_ms=0, key=len)
    blocker = batcher.submit(["x"])
    gate.entered.wait(30)
    texts = ["a", "b" * 50, "cc", "d" * 49, "eee", "f" * 48]
    futures = [batcher.submit([t]) for t in texts]
    gate.release.set()
    assert blocker.result(30) == ["X"]
    assert [f.result(30) for f in futures] == [[t.upper()] for t in texts]
    batcher.close()
    assert gate.calls[1:] == [["a", "cc", "eee"], ["b" * 50, "d" * 49, "f" * 48]]


def test_without_a_key_batches_go_first_come_first_served():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=3, max_wait_ms=0)
    batcher.submit(["x"])
    gate.entered.wait(30)
    texts = ["a", "b" * 50, "cc", "d" * 49]
    futures = [batcher.submit([t]) for t in texts]
    gate.release.set()
    for f in futures:
        f.result(30)
    batcher.close()
    assert gate.calls[1:] == [["a", "b" * 50, "cc"], ["d" * 49]]


def test_batch_holds_no_more_than_its_deadline_allows():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=32, max_wait_ms=0)
    first = batcher.submit(["measure"])
    gate.entered.wait(30)
    time.sleep(0.2)  # the batcher learns about 0.2 s per item
    gate.release.set()
    first.result(30)
    gate.hold()
    batcher.submit(["busy"])
    gate.entered.wait(30)
    urgent = batcher.submit(["urgent"], deadline=time.monotonic() + 1.0)
    rest = [batcher.submit([f"r{i}"]) for i in range(10)]
    gate.release.set()
    assert urgent.result(30) == ["URGENT"]
    assert [f.result(30) for f in rest] == [[f"R{i}"] for i in range(10)]
    batcher.close()
    # At >= 0.16 s an item, 1 s of deadline holds at most 6 items, not all 11.
    assert gate.calls[2][0] == "urgent" and len(gate.calls[2]) <= 7
    assert sum(len(c) for c in gate.calls[2:]) == 11


def test_concurrent_requests_share_batches():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=32, max_wait_ms=0)
    first = batcher.submit(["a"])
    gate.entered.wait(30)  # the worker is now busy with ["a"]
    futures: dict[int, object] = {}

    def call(i: int) -> None:
        futures[i] = batcher.submit([f"t{i}"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: batcher.depth == 16, "16 queued texts")
    gate.release.set()
    assert first.result(30) == ["A"]
    assert {i: f.result(30) for i, f in futures.items()} == {i: [f"T{i}"] for i in range(16)}
    batcher.close()
    # The 16 requests that queued while the worker was busy went in one call.
    assert len(gate.calls) == 2
    assert sorted(gate.calls[1]) == sorted(f"t{i}" for i in range(16))


def test_batches_respect_max_batch_size_and_keep_requests_whole():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=4, max_wait_ms=0)
    blocker = batcher.submit(["x"])
    gate.entered.wait(30)
    small = [batcher.submit([f"s{i}", f"s{i}b"]) for i in range(3)]
    large = batcher.submit([f"l{i}" for i in range(7)])
    gate.release.set()
    assert blocker.result(30) == ["X"]
    assert [f.result(30) for f in small] == [[f"S{i}", f"S{i}B"] for i in range(3)]
    assert large.result(30) == [f"L{i}" for i in range(7)]
    batcher.close()
    sizes = [len(c) for c in gate.calls]
    assert sizes == [1, 4, 2, 7]  # two 2-text requests, then one, then the 7-text request alone


def test_lone_request_is_not_held_but_a_busy_queue_waits():
    gate = Gate()
    gate.release.set()
    batcher = AdaptiveBatcher(gate, max_batch_size=32, max_wait_ms=50)
    # Idle: nothing suggests a second request is coming, so no wait.
    assert batcher.wait_budget() == 0.0
    assert batcher.submit(["one"]).result(30) == ["ONE"]
    gate.release.clear()
    gate.entered.clear()
    batcher.submit(["busy"])
    gate.entered.wait(30)
    for i in range(10):  # arrivals microseconds apart
        batcher.submit([f"q{i}"])
    assert 0.0 < batcher.wait_budget() <= 0.05
    gate.release.set()
    batcher.close()


def test_request_that_can_no_longer_finish_is_shed_unprocessed_with_retry_after():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=8, max_wait_ms=0)
    blocker = batcher.submit(["first"])
    gate.entered.wait(30)
    deadline = time.monotonic() + 0.01
    late = batcher.submit(["late"], deadline=deadline)
    on_time = batcher.submit(["patient"])
    wait_for(lambda: time.monotonic() > deadline, "the deadline to pass")
    gate.release.set()
    # Queued behind other work until it could no longer finish: overload, a 429, not a 504.
    with pytest.raises(QueueFull, match="shed after") as info:
        late.result(30)
    assert info.value.retry_after >= 1
    assert blocker.result(30) == ["FIRST"]
    assert on_time.result(30) == ["PATIENT"]
    batcher.close()
    assert all("late" not in call for call in gate.calls)
    assert batcher.shed == 1


def test_result_finished_past_the_deadline_is_answered_and_counted_late():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=8, max_wait_ms=0)
    deadline = time.monotonic() + 0.01
    future = batcher.submit(["slow"], deadline=deadline)
    gate.entered.wait(30)
    wait_for(lambda: time.monotonic() > deadline, "the deadline to pass")
    gate.release.set()
    assert future.result(30) == ["SLOW"]  # the work is done: the caller gets it
    batcher.close()
    assert batcher.late == 1 and batcher.shed == 0


def measured(gate: Gate, batcher: AdaptiveBatcher, seconds: float) -> None:
    """Let the batcher measure one item taking ``seconds``; leaves the gate held."""
    first = batcher.submit(["measure"])
    gate.entered.wait(30)
    time.sleep(seconds)
    gate.release.set()
    first.result(30)
    gate.hold()


def test_full_queue_refuses_with_retry_after():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=1, max_wait_ms=0, max_queue=3)
    running = batcher.submit(["running"])
    gate.entered.wait(30)
    queued = [batcher.submit([f"q{i}"]) for i in range(3)]
    with pytest.raises(QueueFull, match="queue full") as info:
        batcher.submit(["one too many"])
    assert info.value.retry_after >= 1
    with pytest.raises(ValueError, match="can never fit"):
        batcher.submit(["a", "b", "c", "d"])
    gate.release.set()
    assert [f.result(30) for f in queued] == [["Q0"], ["Q1"], ["Q2"]]
    assert running.result(30) == ["RUNNING"]
    batcher.close()


def test_work_the_queue_would_hold_past_its_deadline_less_headroom_is_refused_at_once():
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=1, max_wait_ms=0, max_queue=100)
    measured(gate, batcher, 0.1)  # about 0.1 s an item
    running = batcher.submit(["running"])
    gate.entered.wait(30)
    queued = [batcher.submit([f"q{i}"]) for i in range(3)]
    # About 0.5 s of work with its own item: within its 0.6 s, but not within 75% of it.
    with pytest.raises(QueueFull, match="overloaded") as info:
        batcher.submit(["hurried"], deadline=time.monotonic() + 0.6)
    assert info.value.retry_after >= 1
    patient = batcher.submit(["patient"], deadline=time.monotonic() + 600)
    gate.release.set()
    assert patient.result(30) == ["PATIENT"]
    assert [f.result(30) for f in [running, *queued]] == [["RUNNING"], ["Q0"], ["Q1"], ["Q2"]]
    batcher.close()
    assert all("hurried" not in call for call in gate.calls)


def test_deadline_shorter_than_its_own_compute_raises_deadline_exceeded_at_once():
    # Not overload: an idle batcher would miss it too, so no 429 inviting a retry.
    gate = Gate()
    batcher = AdaptiveBatcher(gate, max_batch_size=8, max_wait_ms=0)
    measured(gate, batcher, 0.1)
    with pytest.raises(DeadlineExceeded, match="give more time"):
        batcher.submit(["a", "b"], deadline=time.monotonic() + 0.05)
    with pytest.raises(DeadlineExceeded, match="deadline passed"):
        batcher.submit(["c"], deadline=time.monotonic() - 1)
    gate.release.set()
    batcher.close()
    assert gate.calls == [["measure"]]


class ChangingModel:
    """A fake model: ``item_s`` seconds an item, three times slower from ``slow_at`` on."""

    def __init__(self, item_s: float, slow_at: float) -> None:
        self.item_s, self.slow_at = item_s, slow_at

    def __call__(self, items: list[str]) -> list[str]:
        speed = self.item_s * (3 if time.monotonic() >= self.slow_at else 1)
        time.sleep(speed * len(items))
        return [s.upper() for s in items]


def test_model_slowing_down_3x_under_overload_sheds_with_429_and_keeps_every_answer_in_its_deadline():
    # Offered 300 requests/s, each with 1 s to live, to a model serving 200
    # items/s in batches of 8, and 67/s after it slows down 3x half-way.
    budget, rate, seconds = 1.0, 300.0, 2.0
    start = time.monotonic()
    model = ChangingModel(0.005, start + seconds / 2)
    batcher = AdaptiveBatcher(model, max_batch_size=8, max_wait_ms=2, max_queue=1024)
    refused: list[QueueFull] = []
    accepted: list[tuple[str, float, object]] = []  # text, deadline, future
    finished: dict[int, float] = {}
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        deadline = time.monotonic() + budget
        try:
            future = batcher.submit([f"t{i}"], deadline=deadline)
        except QueueFull as err:
            refused.append(err)
            continue
        future.add_done_callback(lambda f, i=i: finished.setdefault(i, time.monotonic()))
        accepted.append((f"t{i}", deadline, future))
    answered, shed, late = 0, 0, []
    for text, deadline, future in accepted:
        try:
            assert future.result(30) == [text.upper()]
        except QueueFull as err:  # shed from the queue: never a DeadlineExceeded
            refused.append(err)
            shed += 1
            continue
        answered += 1
        i = int(text[1:])
        if finished[i] > deadline:
            late.append(finished[i] - deadline)
    batcher.close()
    assert not late, f"{len(late)} answers past their deadline, by up to {max(late) * 1000:.0f} ms"
    assert all(err.retry_after >= 1 for err in refused)
    assert shed == batcher.shed > 0  # the slow-down caught requests admitted at the old speed
    assert answered > 0 and len(refused) > 0
    after = [f for t, d, f in accepted if d - budget > start + seconds / 2 + 0.3 and not f.exception()]
    assert after, "nothing was answered after the slow-down"


def test_batch_function_error_reaches_every_caller():
    def boom(items: list[str]) -> list[str]:
        raise RuntimeError("model crashed")

    batcher = AdaptiveBatcher(boom)
    with pytest.raises(RuntimeError, match="model crashed"):
        batcher.submit(["a"]).result(30)
    batcher.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_batch_size": 0}, "max_batch_size"), ({"max_queue": 0}, "max_queue"), ({"max_wait_ms": -1}, "max_wait_ms")],
)
def test_batcher_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveBatcher(lambda xs: xs, **kwargs)


def test_closed_batcher_refuses_with_closed_error():
    batcher = AdaptiveBatcher(lambda xs: xs)
    batcher.close()
    with pytest.raises(ClosedError, match="the batcher is closed"):
        batcher.submit(["late"])
