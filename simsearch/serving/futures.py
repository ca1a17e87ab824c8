"""Small combinators over :class:`concurrent.futures.Future`, for the service's non-blocking calls."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable


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
