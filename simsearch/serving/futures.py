"""Small combinators over :class:`concurrent.futures.Future`, for the service's non-blocking calls."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

# A caller waits this long past its timeout for the batcher to answer first.
GRACE_S = 0.05
# Work being computed when the timeout passes is awaited at least this long
# more before the caller gives up on a model call that does not return.
HUNG_S = 1.0


def done(value: Any) -> Future:
    """A future that already holds ``value``."""
    future: Future = Future()
    future.set_result(value)
    return future


class _Chained(Future):
    """The future of :func:`chain`: it can be cancelled only while its inner future can.

    So ``cancel()`` answers what a caller whose timeout ran out needs to
    know: ``True``, the work was still waiting and will never run; ``False``,
    it is running (or done) and its result is on the way.
    """

    def __init__(self, inner: Future) -> None:
        super().__init__()
        self._inner = inner

    def cancel(self) -> bool:
        if not self._inner.cancel():
            return False
        return super().cancel()


def chain(inner: Future, then: Callable[[Any], Any]) -> Future:
    """A future of ``then(inner.result())``; cancelling it cancels ``inner``, and fails once ``inner`` runs."""
    outer = _Chained(inner)

    def relay(f: Future) -> None:
        if f.cancelled():
            outer.cancel()
            return
        err = f.exception()
        if err is not None:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(err)
            return
        try:
            value = then(f.result())
        except BaseException as e:
            if outer.set_running_or_notify_cancel():
                outer.set_exception(e)
            return
        if outer.set_running_or_notify_cancel():
            outer.set_result(value)

    inner.add_done_callback(relay)
    return outer


def wait(future: Future, seconds: float | None, give_up: Callable[[Future, float], None], hung: Callable[[float], BaseException]) -> Any:
    """The result of ``future``, waiting ``seconds`` (``None``: for ever) and then deciding.

    When ``seconds`` (plus :data:`GRACE_S`) pass, ``give_up(future, seconds)``
    is called: it raises if the work could still be cancelled (it was
    queued), and returns if the work is running; then the result is awaited
    ``max(seconds, HUNG_S)`` more, after which ``hung(seconds)`` is raised.
    """
    if seconds is None:
        return future.result()
    try:
        return future.result(seconds + GRACE_S)
    except FutureTimeout:
        pass
    give_up(future, seconds)
    try:
        return future.result(max(seconds, HUNG_S))
    except FutureTimeout:
        raise hung(seconds) from None


async def wait_async(
    future: Future, seconds: float | None, give_up: Callable[[Future, float], None], hung: Callable[[float], BaseException]
) -> Any:
    """:func:`wait` for an asyncio event loop (the future itself is never cancelled by the wait)."""
    import asyncio

    if future.done() and not future.cancelled():
        return future.result()  # e.g. a cache hit: no trip through the event loop
    wrapped = asyncio.wrap_future(future)
    if seconds is None:
        return await wrapped
    # asyncio.wait, unlike wait_for, leaves the future alone when it times out.
    finished, _ = await asyncio.wait({wrapped}, timeout=seconds + GRACE_S)
    if not finished:
        give_up(future, seconds)
        finished, _ = await asyncio.wait({wrapped}, timeout=max(seconds, HUNG_S))
        if not finished:
            wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody reads it now
            raise hung(seconds)
    return wrapped.result()
