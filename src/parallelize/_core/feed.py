"""A live job's input and output: requests put by any thread, run by one scheduler.

A :class:`Request` is one call on a long-lived pool (a ``Pool.map``, an ``apply_async``, an
``Executor.submit``): a function, its argument tuples read lazily, and where its results go. The
:class:`Feed` queues requests in order, hands the scheduler chunks of the oldest one (never mixing
two requests in a chunk, so each chunk runs one function), numbers the items in the order it hands
them out, and routes each finished batch back to the requests it covers.

Only the scheduler's thread calls :meth:`Feed.take`, :meth:`Feed.wait`, :meth:`Feed.deliver` and
:meth:`Feed.fail_all`, and the request hooks run there; :meth:`Feed.put`, :meth:`Feed.close` and
:meth:`Feed.halt` may come from any thread.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from .._errors import Failure
from .._wire.protocol import Call
from .job import Batch

# Finished requests kept at the front of the routing table before it is compacted.
COMPACT_AFTER: Final = 1024


class Request:
    """One call's items, and the hooks its results arrive through (in the scheduler's thread).

    ``results(position, values, failed)`` gets the results of the items ``position, position +
    1, ...`` (:class:`Failure` objects where items failed, when ``failed``); ``finish(error)`` is
    called once, when every result was delivered (``error``: what the input raised, or None) or
    when the request ends unfinished (``error`` says why); ``begin()``, before its first item is
    taken, may return False to drop it unrun (a cancelled future): then ``finish`` is not called.
    """

    call: Call
    chunk: int | None
    ahead: int | None
    read: int
    done: int
    consumed: int
    input_done: bool
    input_error: Exception | None
    finished: bool
    cancelled: bool
    feed: Feed | None

    def __init__(
        self,
        fn: Callable[..., Any],
        args: Iterator[Any],
        *,
        star: bool,
        chunk: int | None,
        results: Callable[[int, list[Any], bool], None],
        finish: Callable[[BaseException | None], None],
        begin: Callable[[], bool] | None = None,
        ahead: int | None = None,
    ):
        # The worker runs fn(*item) when star, else fn(item); timeout and error flags are the job's.
        self.call = Call(fn, star, False, False)
        self.chunk = chunk  # the largest chunk of its items (None: as the scheduler sizes them)
        # At most this many items read and not yet consumed (the face reports consumption to
        # Feed.consumed); None: no bound.
        self.ahead = ahead
        self.consumed = 0
        self._gated = False  # the bound held it back: a consumption must wake the scheduler
        self.cancelled = False  # nothing more of it is to be run
        self.feed = None  # the feed it was put into
        self.results = results
        self._finish = finish
        self._begin = begin
        self._args = args
        self.read = 0  # items taken from args
        self.done = 0  # items whose results were delivered
        self.input_done = False
        self.input_error = None  # what args raised, after ``read`` items
        self.finished = False

    def _take(self, count: int) -> list[Any]:
        taken: list[Any] = []
        try:
            taken.extend(itertools.islice(self._args, count))
        except Exception as exc:
            self.input_error = exc
        self.read += len(taken)
        if len(taken) < count:
            self.input_done = True
            self._args = iter(())  # hold nothing of the input
        return taken

    def _end(self, error: BaseException | None) -> None:
        if not self.finished:
            self.finished = True
            finish = self._finish
            self._release()
            finish(error)

    def _release(self) -> None:
        """Hold nothing of the call once it is over: the routing table keeps finished requests
        for a while (COMPACT_AFTER), and the caller's results, arguments and callbacks must not
        live that long (the standard library's pools let go of a task once it is done)."""
        self.results = _drop
        self._finish = _drop
        self._begin = None
        self._args = iter(())


class Feed:
    """The requests of a live job, in the order they were put."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: collections.deque[Request] = collections.deque()
        self.closed = False  # nothing more may be put; the job ends once the rest is done
        self.halted: BaseException | None = None  # stop at once; the unfinished end with this
        self.waker: Callable[[], None] | None = None  # wakes the scheduler's wait for workers
        # Routing: the first index of each request taken from, in order.
        self._starts: list[int] = []
        self._owners: list[Request] = []
        self._index = 0  # the index of the next item taken
        self._finished = 0  # how many requests at the front of the table have finished

    # -- any thread --

    def put(self, request: Request) -> None:
        with self._cond:
            if self.closed or self.halted is not None:  # the faces check first, with their words
                raise RuntimeError("no more requests can be put: the feed is closed")
            request.feed = self
            self._pending.append(request)
            self._cond.notify_all()
        self._wake()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._wake()

    def consumed(self, request: Request, count: int) -> None:
        """The consumer of a bounded request took ``count`` more results."""
        with self._cond:
            request.consumed += count
            gated, request._gated = request._gated, False
            if gated:
                self._cond.notify_all()
        if gated:
            self._wake()

    def cancel(self, request: Request) -> None:
        """Run no more of ``request`` (what runs already finishes; its results are dropped)."""
        with self._cond:
            request.cancelled = True
            request.finished = True
            request._release()
            self._cond.notify_all()
        self._wake()

    def halt(self, error: BaseException) -> None:
        with self._cond:
            self.closed = True
            if self.halted is None:
                self.halted = error
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        waker = self.waker
        if waker is not None:
            waker()

    # -- the scheduler's thread --

    def has_items(self) -> bool:
        with self._cond:
            return self._room() != 0

    def _room(self) -> int:
        """How many items of the oldest request may be taken now (under the lock): 0 when there
        is none, or its bound holds it back; -1 when there is no bound."""
        while self._pending and self._pending[0].cancelled:
            self._pending.popleft()
        if not self._pending:
            return 0
        request = self._pending[0]
        if request.ahead is None:
            return -1
        room = request.ahead - (request.read - request.consumed)
        request._gated = room <= 0
        if request._gated and self.closed:  # no more may be put: it reads no more either
            self._pending.popleft()
            request.cancelled = True
            request._end(RuntimeError("the pool was shut down before this map read all its input"))
            return self._room()
        return max(room, 0)

    def wait(self) -> bool:
        """Block until there is something to take or the feed is halted: True; False once it
        is closed with nothing left to take."""
        with self._cond:
            while (
                self._room() == 0
                and self.halted is None
                and not (self.closed and not self._pending)
            ):
                self._cond.wait()
            return self._room() != 0 or self.halted is not None

    def take(self, count: int) -> tuple[list[Any], Call | None]:
        """Up to ``count`` items of the oldest request that has any, and its function."""
        while True:
            with self._cond:
                room = self._room()
                if room == 0:
                    return [], None
                if room > 0:
                    count = min(count, room)
                request = self._pending[0]
            begin = request._begin
            if begin is not None and request.read == 0 and not request.input_done and not begin():
                self._drop(request)
                request.finished = True
                request._release()
                continue
            items = request._take(count if request.chunk is None else min(count, request.chunk))
            if request.input_done:
                self._drop(request)
                if request.done == request.read:  # nothing of it out: it is over now
                    request._end(request.input_error)
            if items:
                if not self._owners or self._owners[-1] is not request:
                    self._starts.append(self._index)
                    self._owners.append(request)
                self._index += len(items)
                return items, request.call

    def _drop(self, request: Request) -> None:
        with self._cond:
            if self._pending and self._pending[0] is request:
                self._pending.popleft()

    def position(self, index: int) -> int:
        """An item's place in its own request."""
        return index - self._starts[bisect.bisect_right(self._starts, index) - 1]

    def deliver(self, batch: Batch) -> None:
        """Hand a finished batch's results to the requests its items belong to."""
        start, values = batch.start, batch.values
        end = start + len(values)
        at = bisect.bisect_right(self._starts, start) - 1
        while start < end:
            request, first = self._owners[at], self._starts[at]
            stop = min(end, self._starts[at + 1]) if at + 1 < len(self._starts) else end
            part = values[start - batch.start : stop - batch.start]
            request.done += len(part)
            failed = batch.failed and _renumber(part, first)
            request.results(start - first, part, failed)
            if request.input_done and request.done == request.read:
                request._end(request.input_error)
            start, at = stop, at + 1
        if isinstance(values, list):
            # The requests have their results: the batch (still held by the scheduler's loop
            # until its next one) must not keep them alive once the caller lets go of them.
            values.clear()
        self._compact()

    def _compact(self) -> None:
        """Forget the oldest requests once many of them in a row have finished."""
        finished = self._finished
        while finished < len(self._owners) - 1 and self._owners[finished].finished:
            finished += 1
        self._finished = finished
        if finished >= COMPACT_AFTER:
            del self._starts[:finished], self._owners[:finished]
            self._finished = 0

    def fail_all(self, error: BaseException) -> None:
        """The job ended: every request not finished ends with ``error``."""
        with self._cond:
            self.closed = True
            pending, self._pending = list(self._pending), collections.deque()
        for request in [*self._owners, *pending]:
            request._end(error)


def _drop(*args: object) -> None:
    """A finished request's hooks: what still arrives for it is dropped."""


def _renumber(values: list[Any], first: int) -> bool:
    """Give the failures among ``values`` their index in their own request; whether any."""
    found = False
    for value in values:
        if type(value) is Failure:
            value.index -= first
            found = True
    return found
