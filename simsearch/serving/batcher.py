"""Adaptive batching: gather work from many threads into shared model calls.

One worker thread serves a bounded queue. A batch closes when it holds
``max_batch_size`` items or when its wait runs out, whichever comes first.
The wait adapts to load:

- **Alone, no wait.** The batcher counts how many arrivals find other
  requests still in the service (queued or being computed). When most find
  it empty (one client waiting for each answer before it asks again, or
  sparse traffic), nobody is coming to share the batch and it closes at
  once: waiting would only add latency. A closed loop of one client looks
  busy by arrival gaps alone (the next request comes one round trip after
  the last), which is why overlap is counted rather than the gap.
- **While requests stream in, wait for the next one**, at most twice the
  mean gap between arrivals, and in all at most ``max_wait_ms``: the batch
  closes when the stream pauses, not when a fixed timer fires.
- **Under load, no wait**: the worker is busy while requests pile up, so a
  full batch is waiting when it comes back.
- **Bounded by the deadline**: a batch holds no more items than the
  measured seconds per item allow before the earliest deadline among them,
  so at high load a batch is as large as the deadline lets it be, not larger.

Given ``key`` (the service passes each text's length), a batch gathers
requests of similar key around the oldest one: the encoder pads a model run
to its longest text, so texts of one length cost less together than a mix.
The oldest request always goes first, so none waits behind newer ones for
long. (Clipper's adaptive batching, Crankshaw et al., NSDI 2017, bounds the
batch by a latency budget in the same spirit.)

Every request may carry a deadline (``time.monotonic()`` seconds). A request
that the queue ahead of it would hold past its deadline (at the measured
seconds per item) is refused at once with :class:`QueueFull`; one whose
deadline has passed when its batch is formed is dropped without being
computed; one that finishes past its deadline is answered with
:class:`DeadlineExceeded` instead of its result.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from simsearch._validation import check_positive_int
from simsearch.errors import ClosedError, DeadlineExceeded, QueueFull  # defined there; importable from here as before

# Weight of the newest observation in the running means (arrival gap, batch time).
_EWMA = 0.2
# Admission control plans for the queue to drain this much slower than the
# running mean: model-call times spread widely on a shared machine, and a
# request refused now (429) costs the client less than one dropped later (504).
_DRAIN_SLACK = 1.5
# A batch waits for company only when at least this share of recent arrivals
# found other requests in the service; below it, requests come one at a time.
_OVERLAP = 0.5
# While waiting, the batch closes when no request arrives within this many mean gaps.
_PAUSE = 2.0
# Requests looked at when gathering a batch of similar keys, in batches' worth.
_WINDOW = 4


@dataclass
class BatchStats:
    """What one model call did (passed to ``on_batch``)."""

    size: int
    requests: int
    waited_s: float
    compute_s: float


@dataclass
class _Request:
    items: Sequence[Any]
    deadline: float | None
    future: Future
    enqueued: float = field(default_factory=time.monotonic)
    key: float = 0.0


class AdaptiveBatcher:
    """Batch items submitted from many threads into calls of ``fn``.

    Parameters
    ----------
    fn : callable
        ``fn(items) -> results`` where ``results[i]`` answers ``items[i]``
        (a list or an array whose rows are the answers). Called from the
        worker thread only, one batch at a time.
    max_batch_size : int, default=32
        Most items per call. Whole requests are batched: a request larger than
        this runs alone.
    max_wait_ms : float, default=5.0
        Longest time a batch waits for more requests. ``0`` never waits
        (batches still form from requests that queued while the worker was busy).
    max_queue : int, default=1024
        Most items waiting. :meth:`submit` raises :class:`QueueFull` beyond it.
    on_batch : callable or None, default=None
        Called with a :class:`BatchStats` after each call of ``fn``, from the
        worker thread (for metrics).
    name : str, default="simsearch-batcher"
        Name of the worker thread.
    key : callable or None, default=None
        ``key(item) -> float``, e.g. ``len`` of a text: a batch gathers
        requests whose largest keys are close to the oldest request's.
        ``None``: first come, first batched.

    Examples
    --------
    >>> b = AdaptiveBatcher(lambda xs: [x * 2 for x in xs], max_batch_size=8)
    >>> b.submit([1, 2, 3]).result()
    [2, 4, 6]
    >>> b.close()
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "simsearch-batcher",
        key: Callable[[Any], float] | None = None,
    ) -> None:
        self.max_batch_size = check_positive_int(max_batch_size, "max_batch_size")
        self.max_queue = check_positive_int(max_queue, "max_queue")
        if not (isinstance(max_wait_ms, (int, float)) and math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be a finite number >= 0, got {max_wait_ms!r}")
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self._fn = fn
        self._on_batch = on_batch
        self._key = key
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._depth = 0  # items in _queue
        self._closed = False
        # Running means: gap between arrivals (starts "idle"), share of
        # arrivals that found other requests in the service, seconds per item.
        self._gap_s = math.inf
        self._last_arrival = -math.inf
        self._overlap = 0.0
        self._item_s = 0.0
        self._outstanding = 0  # requests queued or being computed
        self._arrivals = 0
        self.last_wait_s = 0.0
        self.batches = 0
        self.dropped = 0
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callers
    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch being computed)."""
        return self._depth

    def submit(self, items: Sequence[Any], deadline: float | None = None) -> Future:
        """Queue ``items``; returns a future of their results (same order, same length).

        Parameters
        ----------
        items : sequence
            Work items, e.g. texts.
        deadline : float or None, default=None
            ``time.monotonic()`` time after which the result is no longer
            wanted; ``None`` waits as long as it takes.

        Returns
        -------
        concurrent.futures.Future
            Resolves to ``fn``'s answers for ``items``, or raises
            :class:`DeadlineExceeded`, or whatever ``fn`` raised.

        Raises
        ------
        QueueFull
            If the queue cannot take ``len(items)`` more items, or if, at the
            measured speed, the items already waiting would keep these past
            ``deadline``.
        ValueError
            If ``items`` holds more than ``max_queue`` items (it could never fit).
        ClosedError
            If the batcher is closed (a ``RuntimeError``).
        """
        n = len(items)
        future: Future = Future()
        if n == 0:
            future.set_result(items[:0] if hasattr(items, "__getitem__") else [])
            return future
        if n > self.max_queue:
            raise ValueError(f"a request of {n} items can never fit in a queue of {self.max_queue}; split it")
        key = float(max(map(self._key, items))) if self._key is not None else 0.0
        with self._cond:
            if self._closed:
                raise ClosedError("the batcher is closed")
            if self._depth + n > self.max_queue:
                raise QueueFull(
                    f"queue full: {self._depth} items waiting, room for {self.max_queue}; retry later",
                    self._retry_after(),
                )
            now = time.monotonic()
            # Admission control: work that the queue ahead of it would hold
            # past its deadline is refused now (429) rather than dropped later (504).
            drain = (self._depth + n) * self._item_s * _DRAIN_SLACK
            if deadline is not None and self._depth and now + drain > deadline:
                raise QueueFull(
                    f"queue full for this deadline: {self._depth} items waiting take about {drain * 1000:.0f} ms, "
                    f"the request has {max(0.0, deadline - now) * 1000:.0f} ms; retry later",
                    self._retry_after(),
                )
            gap = now - self._last_arrival
            self._gap_s = gap if math.isinf(self._gap_s) else (1 - _EWMA) * self._gap_s + _EWMA * gap
            self._overlap = (1 - _EWMA) * self._overlap + _EWMA * (self._outstanding > 0)
            self._last_arrival = now
            self._queue.append(_Request(items, deadline, future, now, key))
            self._depth += n
            self._outstanding += 1
            self._arrivals += 1
            self._cond.notify()
        return future

    def close(self) -> None:
        """Stop taking requests, finish the queued ones, and join the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join()

    def wait_budget(self) -> float:
        """Most seconds the next batch will wait for more requests (0 when it should go at once).

        0 when the batch is full, when most recent arrivals found the service
        empty (nobody is coming to share the batch), or when the mean gap
        between arrivals is at least ``max_wait_ms``; otherwise the expected
        time to fill the batch (mean gap times free places), at most
        ``max_wait_ms``. The wait also ends early when the stream of arrivals
        pauses for more than twice the mean gap.
        """
        with self._cond:
            return self._wait_budget_locked()

    # ------------------------------------------------------------------ worker
    def _wait_budget_locked(self) -> float:
        free = self.max_batch_size - self._depth
        if free <= 0 or self._overlap < _OVERLAP or self._gap_s >= self.max_wait_s:
            return 0.0
        return min(self.max_wait_s, self._gap_s * free)

    def _retry_after(self) -> int:
        # Time to drain the queue at the measured speed, rounded up to whole seconds.
        return max(1, math.ceil(self._depth * self._item_s))

    def _take_batch(self) -> tuple[list[_Request], float] | None:
        """Block until a batch is ready; ``None`` once closed and drained."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            started = time.monotonic()
            earliest = min((r.deadline for r in self._queue if r.deadline is not None), default=math.inf)
            close_at = min(started + self._wait_budget_locked(), earliest)
            while self._depth < self.max_batch_size and not self._closed:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                arrivals = self._arrivals
                self._cond.wait(min(remaining, _PAUSE * self._gap_s))
                if self._arrivals == arrivals:
                    break  # the stream paused: nobody else is coming soon
            batch = self._select_locked(time.monotonic())
            waited = time.monotonic() - started
            self.last_wait_s = waited
            return batch, waited

    def _select_locked(self, now: float) -> list[_Request]:
        """Take the oldest request and the queued ones that fit beside it, nearest in key first.

        A request joins only if the batch, at the measured seconds per item,
        still ends before every deadline in it: at high load the batch is as
        large as the deadlines allow.
        """
        first = self._queue.popleft()
        batch, size = [first], len(first.items)
        ends_by = math.inf if first.deadline is None else first.deadline
        window = list(itertools.islice(self._queue, _WINDOW * self.max_batch_size))
        order = sorted(range(len(window)), key=lambda i: abs(window[i].key - first.key)) if self._key else range(len(window))
        taken: set[int] = set()
        for i in order:
            if size >= self.max_batch_size:
                break
            request = window[i]
            n = len(request.items)
            due = ends_by if request.deadline is None else min(ends_by, request.deadline)
            if size + n > self.max_batch_size or now + (size + n) * self._item_s > due:
                continue
            batch.append(request)
            taken.add(i)
            size += n
            ends_by = due
        if taken:
            rest = [r for i, r in enumerate(window) if i not in taken]
            for _ in range(len(window)):
                self._queue.popleft()
            self._queue.extendleft(reversed(rest))
        self._depth -= size
        return batch

    def _finish(self, requests: int) -> None:
        # Before answering: a caller that asks again on its answer must find
        # the service empty, or one client would look like two.
        with self._cond:
            self._outstanding -= requests

    def _run(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, waited = taken
            now = time.monotonic()
            live: list[_Request] = []
            late: list[_Request] = []
            for request in batch:
                if not request.future.set_running_or_notify_cancel():
                    continue  # the caller gave up and cancelled it
                if request.deadline is not None and now > request.deadline:
                    late.append(request)
                    continue
                live.append(request)
            self._finish(len(batch) - len(live))
            for request in late:
                self.dropped += 1
                late_ms = (now - request.enqueued) * 1000
                request.future.set_exception(
                    DeadlineExceeded(f"deadline passed after {late_ms:.1f} ms in the queue; the request was dropped unprocessed")
                )
            if not live:
                continue
            items = [item for request in live for item in request.items]
            start = time.monotonic()
            try:
                results = self._fn(items)
            except BaseException as err:  # handed to every caller of the batch
                self._finish(len(live))
                for request in live:
                    request.future.set_exception(err)
                continue
            done = time.monotonic()
            compute = done - start
            per_item = compute / len(items)
            self._item_s = per_item if self._item_s == 0.0 else (1 - _EWMA) * self._item_s + _EWMA * per_item
            self.batches += 1
            self._finish(len(live))
            offset = 0
            for request in live:
                n = len(request.items)
                if request.deadline is not None and done > request.deadline:
                    self.dropped += 1
                    request.future.set_exception(
                        DeadlineExceeded(
                            f"deadline passed while computing ({(done - request.enqueued) * 1000:.1f} ms after submission); "
                            "the result was dropped"
                        )
                    )
                else:
                    request.future.set_result(results[offset : offset + n])
                offset += n
            if self._on_batch is not None:
                self._on_batch(BatchStats(size=len(items), requests=len(live), waited_s=waited, compute_s=compute))
