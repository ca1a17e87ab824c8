"""Small combinators over :class:`concurrent.futures.Future`, for the service's non-blocking calls."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable


def done(value: Any) -> Future:
    """A future that already holds ``value``."""
    future: Future = Future()
    future.set_result(value)
    return future


def chain(inner: Future, then: Callable[[Any], Any]) -> Future:
    """A future of ``then(inner.result())``; cancelling it cancels ``inner``."""
    outer: Future = Future()

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
    outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
    return outer
