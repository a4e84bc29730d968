"""``apmap`` and ``aimap``: maps to ``await`` and to ``async for``, never blocking the event loop.

A map runs as a one-request session (:mod:`parallelize._core.session`) whose scheduler has a
thread of its own, on the warm workers ``pmap`` uses; results reach the event loop through
``call_soon_threadsafe``. Cancelling the awaiting task (or leaving ``async for`` through an
exception or ``aclose()``) halts the session, which stops that map's running items at once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, overload

from ._api import prepare
from ._core.feed import Request
from ._core.job import Job
from ._core.policy import ErrorPolicy
from ._core.progress import open_bar
from ._core.scheduler import ahead_items
from ._core.session import Session
from ._options import Options

if TYPE_CHECKING:
    from ._mapoptions import MapOptions

R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")


def _stopped() -> asyncio.CancelledError:
    return asyncio.CancelledError("the awaiting task was cancelled")


class _Run:
    """One async map: its session, its request, and where results land in the event loop."""

    def __init__(self, job: Job, *, ahead: int | None):
        self.loop = asyncio.get_running_loop()
        options = job.options
        self.policy = ErrorPolicy(options.on_error)
        self.ordered = options.ordered
        self.bar = open_bar(options.progress, job.total)
        self.session = Session(options, "parallelize-async", private=False, fn=job.fn, bar=self.bar)
        self.request = Request(
            job.fn, job.items, star=job.star, chunk=options.chunksize,
            results=self._results, finish=self._finish, ahead=ahead,
        )  # fmt: skip
        self.arrived: collections.deque[tuple[int, list[Any]] | BaseException | None] = (
            collections.deque()
        )
        self.signal = asyncio.Event()
        self.done = False

    def start(self) -> None:
        self.session.put(self.request)

    def stop(self) -> None:
        """Stop the map now (its running items too), unless it has ended."""
        if not self.done:
            self.session.halt(_stopped())

    # -- the session's thread --

    def _results(self, position: int, values: list[Any], failed: bool) -> None:
        self.bar.update(len(values))
        self._send((position, values))

    def _finish(self, error: BaseException | None) -> None:
        self.bar.close()
        self.session.close()  # its one request is over: the session ends
        self._send(error)

    def _send(self, what: tuple[int, list[Any]] | BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(self._arrive, what)
        except RuntimeError:  # the event loop is closed: nobody waits for it any more
            self.session.halt(_stopped())

    # -- the event loop --

    def _arrive(self, what: tuple[int, list[Any]] | BaseException | None) -> None:
        self.arrived.append(what)
        self.signal.set()

    async def next_arrival(self) -> tuple[int, list[Any]] | BaseException | None:
        """The next batch (position, values), or the end: None, or the error that ended it."""
        while not self.arrived:
            self.signal.clear()
            await self.signal.wait()
        what = self.arrived.popleft()
        if not isinstance(what, tuple):
            self.done = True
        return what


def _job(fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], options: Any, where: str,
         *, stream: bool) -> Job:  # fmt: skip
    job = prepare(fn, iterables, Options.from_kwargs(options, where), stream=stream)
    if job.options.checkpoint is not None:
        raise ValueError(
            f"checkpoint= is not supported by {where}() yet; run the map with pmap or imap "
            "(in a thread: await asyncio.to_thread(pmap, fn, items, checkpoint=...))"
        )
    return job


async def run_list_async(job: Job) -> list[Any]:
    """Run a job to completion without blocking the event loop; its results as ``pmap``'s."""
    run = _Run(job, ahead=None)
    run.start()
    received: list[tuple[int, list[Any]]] = []
    try:
        while True:
            what = await run.next_arrival()
            if what is None:
                break
            if not isinstance(what, tuple):
                raise what
            position, batch = what
            received.append((position, run.policy.values(batch, True)))
    finally:
        run.stop()  # cancelled, or the first failure raised: the rest stops now
    if run.ordered:
        received.sort(key=lambda pair: pair[0])
    results = [value for _, batch in received for value in batch]
    run.policy.finish(results)
    return results


async def run_stream_async(job: Job) -> AsyncIterator[Any]:
    """Run a job lazily for ``async for``, reading no further ahead of the consumer than
    ``max_ahead`` items (by default a few chunks per worker)."""
    run = _Run(job, ahead=ahead_items(job.options, job.options.workers))
    run.start()
    early: dict[int, list[Any]] = {}
    next_position = 0
    try:
        while True:
            what = await run.next_arrival()
            if what is None:
                break
            if not isinstance(what, tuple):
                raise what
            position, batch = what
            if run.ordered:
                early[position] = batch
                while (ready := early.pop(next_position, None)) is not None:
                    next_position += len(ready)
                    for value in run.policy.stream(ready, True):
                        yield value
                    _consumed(run, len(ready))
            else:
                for value in run.policy.stream(batch, True):
                    yield value
                _consumed(run, len(batch))
    finally:
        run.stop()
    run.policy.finish(None)


def _consumed(run: _Run, count: int) -> None:
    feed = run.request.feed
    if feed is not None:
        feed.consumed(run.request, count)


@overload
async def apmap(
    fn: Callable[[T1], R], items: Iterable[T1], /, **options: Unpack[MapOptions]
) -> list[R]: ...
@overload
async def apmap(
    fn: Callable[[T1, T2], R],
    items1: Iterable[T1],
    items2: Iterable[T2],
    /,
    **options: Unpack[MapOptions],
) -> list[R]: ...
@overload
async def apmap(
    fn: Callable[..., R],
    items1: Iterable[Any],
    items2: Iterable[Any],
    items3: Iterable[Any],
    /,
    *more: Iterable[Any],
    **options: Unpack[MapOptions],
) -> list[R]: ...
async def apmap(fn: Callable[..., R], /, *iterables: Iterable[Any], **options: Any) -> list[R]:
    """``pmap`` for ``await``: the list of results, the event loop free meanwhile.

    Every ``pmap`` option works. Cancelling the awaiting task stops the map's running items.

    >>> import asyncio
    >>> asyncio.run(apmap(abs, [-1, 2], backend="thread"))
    [1, 2]
    """
    return await run_list_async(_job(fn, iterables, options, "apmap", stream=False))


@overload
def aimap(
    fn: Callable[[T1], R], items: Iterable[T1], /, **options: Unpack[MapOptions]
) -> AsyncIterator[R]: ...
@overload
def aimap(
    fn: Callable[[T1, T2], R],
    items1: Iterable[T1],
    items2: Iterable[T2],
    /,
    **options: Unpack[MapOptions],
) -> AsyncIterator[R]: ...
@overload
def aimap(
    fn: Callable[..., R],
    items1: Iterable[Any],
    items2: Iterable[Any],
    items3: Iterable[Any],
    /,
    *more: Iterable[Any],
    **options: Unpack[MapOptions],
) -> AsyncIterator[R]: ...
def aimap(fn: Callable[..., R], /, *iterables: Iterable[Any], **options: Any) -> AsyncIterator[R]:
    """``imap`` for ``async for``: results as they are ready, the event loop free meanwhile.

    Every ``imap`` option works. Bad arguments raise here, before the first ``await``.
    Cancelling the consuming task, or closing the iterator (``aclose()``), stops the map's
    running items.
    """
    return run_stream_async(_job(fn, iterables, options, "aimap", stream=True))
