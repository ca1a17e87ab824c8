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
  planning speed (below) allows before the earliest deadline among them,
  so at high load a batch is as large as the deadline lets it be, not larger.

Given ``key`` (the service passes each text's length), a batch gathers
requests of similar key around the oldest one: the encoder pads a model run
to its longest text, so texts of one length cost less together than a mix.
The oldest request always goes first, so none waits behind newer ones for
long. (Clipper's adaptive batching, Crankshaw et al., NSDI 2017, bounds the
batch by a latency budget in the same spirit.)

Deadlines and overload
----------------------
Every request may carry a deadline (``time.monotonic()`` seconds). The
batcher keeps two speeds: the running mean of seconds per item, and a
**planning speed**, the slowest seconds per item of recent batches (a
maximum that decays by half every ``_SLOW_HALF_LIFE`` seconds, never below
the mean), raised further while the batch being computed overruns it (its
elapsed time per item is then a lower bound of the current speed). On a
shared machine model-call times spread widely and the machine can slow down
several times over within a second; the mean of the last moment is what
made admitted requests miss their deadlines, so everything that decides
whether a request can still be served plans with the pessimistic speed:

1. **Admission** (:meth:`submit`). A request that would wait behind other
   work is admitted only if the work ahead of it and its own items, at the
   planning speed, end within ``1 - _HEADROOM`` (75%) of the time it has
   left; otherwise :class:`QueueFull` at once (HTTP 429 with
   ``Retry-After``). The headroom absorbs a slow-down after admission.
2. **Batch formation.** A queued request that could no longer finish
   before its deadline (less a margin of ``_FINISH_MARGIN`` of its budget
   for the answer's way back) even if it went into this batch, at
   ``_BATCH_SLACK`` (2) times the planning speed, is shed then, before any
   work is spent on it, with :class:`QueueFull` too: the server fell
   behind, which is overload (load shedding, a 429), not a failure of the
   request. A request joins a batch only if the whole batch ends in time at
   that speed: on a loaded machine the worker can lose the CPU for a whole
   batch, and the slack is cheap because a batch is short beside a deadline.
3. **Finished late.** A request whose batch ends past its deadline anyway
   (the machine slowed down during that one batch) gets its result: the
   work is done and the caller is still waiting; dropping it would turn a
   slightly late answer into an error and waste the work. The headroom is
   what keeps such answers rare (counted in :attr:`late`).

:class:`DeadlineExceeded` is kept for one case only: a deadline shorter than
the request's own compute at the mean speed, even with nothing ahead of it
(raised by :meth:`submit`, before any work is spent). That is not overload: an idle server misses it too, and a retry would fail the
same way, so a 429 inviting the client to retry would be untrue; the error
says to give more time. A request that arrives to an empty batcher (nothing
queued or running) is never refused or shed for the planning speed alone: it
is computed at once, since no other work delays it.
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
# The planning speed (slowest recent seconds per item) halves its excess over
# the mean every this many seconds: one slow batch keeps admission careful for
# a few seconds, not for good.
_SLOW_HALF_LIFE = 2.0
# Admission plans for the request to finish within (1 - _HEADROOM) of the time
# it has left: room for the machine to slow down after it was admitted.
_HEADROOM = 0.25
# At batch formation a request must finish this share of its budget before its
# deadline: the answer still has to be serialised and sent.
_FINISH_MARGIN = 0.2
# A batch is formed for running this many times slower than the planning
# speed: on a loaded machine the worker can lose the CPU for a whole batch.
_BATCH_SLACK = 2.0
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
    alone: bool = False  # nothing was queued or running when it arrived

    def due(self) -> float:
        """Latest time its batch may end: the deadline less the margin for the way back."""
        if self.deadline is None:
            return math.inf
        return self.deadline - _FINISH_MARGIN * max(0.0, self.deadline - self.enqueued)


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

    Attributes
    ----------
    batches : int
        Calls of ``fn`` so far.
    shed : int
        Requests refused with :class:`QueueFull` after they had queued (at
        batch formation), because they could no longer finish in time.
    late : int
        Requests answered with their result past their deadline.

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
        # Planning speed: the slowest recent seconds per item, and when it was last raised.
        self._slow_s = 0.0
        self._slow_at = 0.0
        # The batch being computed: its items and when it started.
        self._running = 0
        self._running_since = 0.0
        self._outstanding = 0  # requests queued or being computed
        self._arrivals = 0
        self.last_wait_s = 0.0
        self.batches = 0
        self.shed = 0
        self.late = 0
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
            Resolves to ``fn``'s answers for ``items`` (also when they are
            ready a little past ``deadline``), or raises :class:`QueueFull`
            if the request was shed from the queue because it could no
            longer finish in time, or whatever ``fn`` raised.

        Raises
        ------
        QueueFull
            If the queue cannot take ``len(items)`` more items, or if, at the
            planning speed, the work already waiting or running would keep
            these past ``deadline`` (less the headroom).
        DeadlineExceeded
            If ``deadline`` has passed, or is shorter than these items take
            to compute at the measured mean speed with nothing ahead of them
            (no retry can meet it; give more time).
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
                    self._retry_after_locked(time.monotonic()),
                )
            now = time.monotonic()
            busy = self._depth > 0 or self._running > 0
            if deadline is not None:
                self._admit_locked(n, deadline, now, busy)
            gap = now - self._last_arrival
            self._gap_s = gap if math.isinf(self._gap_s) else (1 - _EWMA) * self._gap_s + _EWMA * gap
            self._overlap = (1 - _EWMA) * self._overlap + _EWMA * (self._outstanding > 0)
            self._last_arrival = now
            self._queue.append(_Request(items, deadline, future, now, key, alone=not busy))
            self._depth += n
            self._outstanding += 1
            self._arrivals += 1
            self._cond.notify()
        return future

    def retry_after(self) -> int:
        """Seconds until the work now queued and running has likely drained, at the planning speed (at least 1)."""
        with self._cond:
            return self._retry_after_locked(time.monotonic())

    @property
    def item_s(self) -> float:
        """Mean seconds per item of recent batches (0 before the first batch)."""
        return self._item_s

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

    # ------------------------------------------------------------------ planning
    def _plan_item_s_locked(self, now: float) -> float:
        decay = 0.5 ** (max(0.0, now - self._slow_at) / _SLOW_HALF_LIFE)
        plan = max(self._item_s, self._item_s + (self._slow_s - self._item_s) * decay)
        if self._running:
            # A batch running past its plan shows the machine has slowed down now.
            plan = max(plan, (now - self._running_since) / self._running)
        return plan

    def _ahead_s_locked(self, now: float, item_s: float) -> float:
        """Seconds of work ahead of a new arrival: the rest of the running batch and the queue."""
        running_left = max(0.0, self._running * item_s - (now - self._running_since)) if self._running else 0.0
        return running_left + self._depth * item_s

    def _admit_locked(self, n: int, deadline: float, now: float, busy: bool) -> None:
        left = deadline - now
        if left <= 0:
            raise DeadlineExceeded(f"the deadline passed {-left * 1000:.0f} ms before the request was queued")
        if n * self._item_s > left:
            # Not overload: an idle server would miss it too, and a retry fails the same way.
            raise DeadlineExceeded(
                f"a deadline of {left * 1000:.0f} ms is shorter than the {n * self._item_s * 1000:.0f} ms that "
                f"{n} items take to compute here even with nothing queued; give more time"
            )
        if not busy:
            return
        item_s = self._plan_item_s_locked(now)
        finish = self._ahead_s_locked(now, item_s) + n * item_s
        if finish > (1 - _HEADROOM) * left:
            raise QueueFull(
                f"overloaded: the {self._depth} items queued and {self._running} running would take about "
                f"{finish * 1000:.0f} ms with these, the request has {left * 1000:.0f} ms; retry later",
                self._retry_after_locked(now),
            )

    def _retry_after_locked(self, now: float) -> int:
        # Time to drain the queue at the planning speed, rounded up to whole seconds.
        return max(1, math.ceil(self._ahead_s_locked(now, self._plan_item_s_locked(now))))

    def _wait_budget_locked(self) -> float:
        free = self.max_batch_size - self._depth
        if free <= 0 or self._overlap < _OVERLAP or self._gap_s >= self.max_wait_s:
            return 0.0
        return min(self.max_wait_s, self._gap_s * free)

    # ------------------------------------------------------------------ worker
    def _take_batch(self) -> tuple[list[_Request], list[_Request], float] | None:
        """Block until a batch is ready: (batch, shed requests, seconds waited); ``None`` once closed and drained."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            started = time.monotonic()
            item_s = self._plan_item_s_locked(started)
            # Waiting for company must leave the time to compute a full batch before the earliest due time.
            earliest = min(r.due() for r in self._queue) - item_s * min(self._depth, self.max_batch_size)
            close_at = min(started + self._wait_budget_locked(), earliest)
            while self._depth < self.max_batch_size and not self._closed:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                arrivals = self._arrivals
                self._cond.wait(min(remaining, _PAUSE * self._gap_s))
                if self._arrivals == arrivals:
                    break  # the stream paused: nobody else is coming soon
            now = time.monotonic()
            batch, shed = self._select_locked(now, self._plan_item_s_locked(now))
            waited = now - started
            self.last_wait_s = waited
            if batch:
                self._running = sum(len(r.items) for r in batch)
                self._running_since = time.monotonic()
            return batch, shed, waited

    def _hopeless(self, request: _Request, now: float, item_s: float) -> bool:
        """Could not finish in time even if computed now, having been delayed by other work."""
        return not request.alone and now + _BATCH_SLACK * len(request.items) * item_s > request.due()

    def _select_locked(self, now: float, item_s: float) -> tuple[list[_Request], list[_Request]]:
        """Shed what can no longer finish in time; take the oldest request left and the ones that fit beside it, nearest in key first.

        A request joins only if the batch, at the planning speed, still ends
        before every due time in it: at high load the batch is as large as
        the deadlines allow.
        """
        shed: list[_Request] = []
        first = None
        while self._queue:
            request = self._queue.popleft()
            self._depth -= len(request.items)
            if not self._hopeless(request, now, item_s):
                first = request
                break
            shed.append(request)
        if first is None:
            return [], shed
        batch, size, ends_by = [first], len(first.items), first.due()
        window = list(itertools.islice(self._queue, _WINDOW * self.max_batch_size))
        order = sorted(range(len(window)), key=lambda i: abs(window[i].key - first.key)) if self._key else range(len(window))
        taken: set[int] = set()
        for i in order:
            request = window[i]
            if self._hopeless(request, now, item_s):
                shed.append(request)
                taken.add(i)
                self._depth -= len(request.items)
                continue
            if size >= self.max_batch_size:
                continue
            n = len(request.items)
            due = min(ends_by, request.due())
            if size + n > self.max_batch_size or now + _BATCH_SLACK * (size + n) * item_s > due:
                continue
            batch.append(request)
            taken.add(i)
            size += n
            ends_by = due
            self._depth -= n
        if taken:
            rest = [r for i, r in enumerate(window) if i not in taken]
            for _ in range(len(window)):
                self._queue.popleft()
            self._queue.extendleft(reversed(rest))
        return batch, shed

    def _finish(self, requests: int, computed: int = 0, item_s: float | None = None) -> None:
        # Before answering: a caller that asks again on its answer must find
        # the service empty, or one client would look like two.
        with self._cond:
            self._outstanding -= requests
            if computed:
                self._running = 0
            if item_s is not None:
                self._learn_locked(item_s)

    def _learn_locked(self, item_s: float) -> None:
        now = time.monotonic()
        self._item_s = item_s if self._item_s == 0.0 else (1 - _EWMA) * self._item_s + _EWMA * item_s
        plan = self._plan_item_s_locked(now) if self._slow_s else 0.0
        self._slow_s = max(item_s, self._item_s, plan)
        self._slow_at = now

    def _run(self) -> None:
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            batch, shed, waited = taken
            if shed:
                self._finish(len(shed))
                with self._cond:
                    retry = self._retry_after_locked(time.monotonic())
                for request in shed:
                    if request.future.set_running_or_notify_cancel():
                        self.shed += 1
                        request.future.set_exception(
                            QueueFull(
                                f"overloaded: shed after {(time.monotonic() - request.enqueued) * 1000:.0f} ms in the queue, "
                                "it could no longer be computed before its deadline; retry later",
                                retry,
                            )
                        )
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # the rest were cancelled by their callers
            if len(live) < len(batch):
                self._finish(len(batch) - len(live))
            if not live:
                if batch:
                    self._finish(0, computed=1)
                continue
            items = [item for request in live for item in request.items]
            start = time.monotonic()
            try:
                results = self._fn(items)
            except BaseException as err:  # handed to every caller of the batch
                self._finish(len(live), computed=1)
                for request in live:
                    request.future.set_exception(err)
                continue
            done = time.monotonic()
            compute = done - start
            self.batches += 1
            self._finish(len(live), computed=1, item_s=compute / len(items))
            offset = 0
            for request in live:
                n = len(request.items)
                if request.deadline is not None and done > request.deadline:
                    self.late += 1  # answered all the same: the work is done and the caller still waits
                request.future.set_result(results[offset : offset + n])
                offset += n
            if self._on_batch is not None:
                self._on_batch(BatchStats(size=len(items), requests=len(live), waited_s=waited, compute_s=compute))
