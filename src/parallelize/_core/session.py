"""A session: one scheduler running a feed of requests in a thread of its own, until closed.

It backs the faces that keep a pool for a program's whole run (``Pool``, ``Executor``): each of
their calls becomes a :class:`~parallelize._core.feed.Request` put into the session's feed, and
the session's thread runs them all on one set of workers of its own, in order, through the same
scheduler as every map (chunks, crashes, timeouts, retries).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._backends import get_backend
from .._options import Resolved
from . import stats
from .feed import Feed, Request
from .job import Job
from .output import Sink
from .progress import NO_BAR, Bar
from .scheduler import Scheduler


class Session:
    """Runs the requests put into it on workers of its own; started by the first request."""

    def __init__(
        self,
        options: Resolved,
        name: str,
        *,
        private: bool = True,
        fn: Callable[..., Any] | None = None,
        bar: Bar = NO_BAR,
    ):
        # Every item's error is its request's to report, so the job never stops at one.
        self._options = options.replace(on_error="return", ordered=False)
        self._stats = options.stats
        self._name = name
        self._fn = fn  # the one function its requests map, if it is one map (stats name it)
        self._sink = Sink(bar)
        self._private = private  # workers of its own (a pool's), or the warm ones a map uses
        self.feed = Feed()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, request: Request) -> None:
        """Queue a request (RuntimeError once closed); the first one starts the thread."""
        self.feed.put(request)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Run what was put, then end (and stop the workers)."""
        self.feed.close()

    def halt(self, error: BaseException) -> None:
        """Stop every worker now; requests not finished end with ``error``."""
        self.feed.halt(error)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after :meth:`close` or :meth:`halt`); whether it has."""
        with self._lock:
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _main(self) -> None:
        feed = self.feed
        error: BaseException | None = None
        recorder = None
        if stats.wanted(self._stats):  # the session's whole life, as one map
            recorder = stats.Recorder(self._fn or self._name, self._options.backend)
        try:
            backend = get_backend(self._options.backend)
            with backend.open(self._options, private=self._private) as pool:
                feed.waker = pool.wake
                if recorder is not None:
                    recorder.attach(pool)
                try:
                    job = Job(_no_function, iter(()), False, None, self._options)
                    scheduler = Scheduler(pool, job, feed, sink=self._sink, recorder=recorder)
                    for batch in scheduler.run():
                        if recorder is not None:
                            recorder.items += len(batch.values)
                        feed.deliver(batch)
                finally:
                    feed.waker = None
        except BaseException as exc:  # the scheduler's own error (an initializer failed, ...)
            error = exc
        finally:
            if feed.halted is not None:
                error = feed.halted
            if recorder is not None:
                stats.report(recorder.finish(), self._sink if self._stats else None)
            feed.fail_all(error or RuntimeError("the session ended"))


def _no_function(item: object) -> None:
    """A live job's ``fn``, never called: each request brings its own."""
