"""Measuring a map for its :class:`~parallelize._mapstats.MapStats`, and who receives them.

The scheduler calls a :class:`Recorder` (only when stats are wanted: ``stats=True``, or a
:func:`collect_stats` block open anywhere in the process) as chunks go out and come back; the
workers time each item of such a map (see ``Call.measured``). When the map ends, its stats go to
every open :func:`collect_stats` block, and to stderr with ``stats=True``.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._mapstats import MapStats

if TYPE_CHECKING:
    from .._backends.base import WorkerSet


class Printer(Protocol):
    """Where ``stats=True`` prints a report (the map's output sink, above its bar)."""

    def write(self, text: str) -> None: ...


# A map keeps at most this many chunks in its timeline (a plot of more would show nothing more).
TIMELINE_CHUNKS: Final = 100_000


class CollectedStats:
    """What ``collect_stats()`` gives: ``maps``, the stats of every map that ended inside the
    block, in the order they ended."""

    def __init__(self) -> None:
        self.maps: list[MapStats] = []

    def __repr__(self) -> str:
        return f"<CollectedStats: {len(self.maps)} maps>"


_open: list[CollectedStats] = []
_lock = threading.Lock()


@contextlib.contextmanager
def collect_stats() -> Iterator[CollectedStats]:
    """Record a :class:`~parallelize.MapStats` for every map that runs inside the block, on
    any backend and in any thread.

    >>> from parallelize import collect_stats, pmap
    >>> with collect_stats() as collected:
    ...     squares = pmap(abs, range(10), backend="thread")
    >>> collected.maps[0].items
    10
    """
    collected = CollectedStats()
    with _lock:
        _open.append(collected)
    try:
        yield collected
    finally:
        with _lock:
            _open.remove(collected)


def wanted(printed: bool) -> bool:
    """Whether a map starting now is to be measured."""
    return printed or bool(_open)


class _Line:
    """One worker's timeline so far."""

    __slots__ = ("busy", "ended", "first", "last_end", "number")

    def __init__(self, number: int, first: float):
        self.number = number  # its row: a worker that replaces another takes the other's
        self.first = first  # when it was sent its first chunk
        self.last_end: float | None = None  # when its last chunk came back
        self.busy = 0.0  # seconds it held a chunk
        self.ended: float | None = None  # when it died or retired


class Recorder:
    """The figures of one map, as the scheduler reports its events."""

    def __init__(self, fn: Any, backend: str) -> None:
        self.started = time.perf_counter()
        if isinstance(fn, str):  # a session's name: a Pool's or an Executor's calls
            self._function = fn
        else:
            self._function = getattr(fn, "__qualname__", None) or type(fn).__name__
        self._backend = backend
        self._pool: WorkerSet[Any] | None = None
        self._bytes = (0, 0)
        self._lines: dict[object, _Line] = {}
        self._rows = 0  # rows handed out so far
        self._free_rows: list[int] = []  # the rows of workers that are gone
        self._first_sent: float | None = None
        self._last_sent = self.started
        self._timeline: list[tuple[int, float, float, float]] = []
        self.items = 0
        self.chunks = 0
        self.compute = 0.0
        self.idle = 0.0  # workers' idle time before the last chunk went out
        self.slowest: tuple[int, float] | None = None
        self.retries = 0
        self.replacements = 0  # workers replaced for going over max_worker_memory
        self.crashes = 0
        self.timeouts = 0

    def attach(self, pool: WorkerSet[Any]) -> None:
        """The map's workers: what they have moved so far is not this map's."""
        self._pool = pool
        self._bytes = (pool.bytes_pickled, pool.bytes_shared)

    def sent(self, worker: object, idle: bool) -> float:
        """A chunk went to ``worker`` (which held none, if ``idle``); the time it was sent."""
        now = time.perf_counter()
        if self._first_sent is None:
            self._first_sent = now
        self._last_sent = now
        line = self._lines.get(worker)
        if line is None:
            if self._free_rows:
                row = heapq.heappop(self._free_rows)
            else:
                row, self._rows = self._rows, self._rows + 1
            line = self._lines[worker] = _Line(row, now)
        elif idle and line.last_end is not None:
            self.idle += now - line.last_end
        return now

    def done(
        self, worker: object, sent_at: float, seconds: float, measured: Any, items: int
    ) -> None:
        """A chunk sent at ``sent_at`` came back: ``seconds`` of compute, and what the worker
        measured (slowest item, retries, timeouts)."""
        now = time.perf_counter()
        line = self._lines[worker]
        begin = sent_at if line.last_end is None else max(sent_at, line.last_end)
        line.busy += now - begin
        line.last_end = now
        self.chunks += 1
        self.compute += seconds
        if len(self._timeline) < TIMELINE_CHUNKS:
            start = self.started
            self._timeline.append((line.number, begin - start, now - start, seconds))
        if measured is not None:
            index, slowest, retried, timed_out = measured
            if items and (self.slowest is None or slowest > self.slowest[1]):
                self.slowest = (index, slowest)
            self.retries += retried
            self.timeouts += timed_out

    def gone(self, worker: object) -> None:
        """The worker died, was stopped or retired: its time ends here, and its row goes to
        whichever worker takes its place."""
        line = self._lines.get(worker)
        if line is not None and line.ended is None:
            line.ended = time.perf_counter()
            heapq.heappush(self._free_rows, line.number)

    def finish(self) -> MapStats:
        """The map has ended: its stats."""
        end = time.perf_counter()
        busy = sum(line.busy for line in self._lines.values())
        # Idle: each worker's time from its first chunk to the end, less the time it held one;
        # the tail is the part after the last chunk went out.
        lines = self._lines.values()
        idle = sum(max(0.0, (line.ended or end) - line.first - line.busy) for line in lines)
        idle = max(idle, self.idle)
        pickled = shared = 0
        if self._pool is not None:
            pickled = self._pool.bytes_pickled - self._bytes[0]
            shared = self._pool.bytes_shared - self._bytes[1]
        first = self._first_sent if self._first_sent is not None else end
        return MapStats(
            function=self._function,
            backend=self._backend,
            items=self.items,
            chunks=self.chunks,
            workers=self._pool.size if self._pool is not None else 0,
            workers_used=self._rows,
            wall_s=end - self.started,
            compute_s=self.compute,
            overhead_s=max(0.0, busy - self.compute),
            idle_s=idle,
            tail_s=max(0.0, idle - self.idle),
            startup_s=first - self.started,
            bytes_pickled=pickled,
            bytes_shared=shared,
            retries=self.retries,
            replacements=self.replacements,
            crashes=self.crashes,
            timeouts=self.timeouts,
            slowest=self.slowest,
            timeline=self._timeline,
        )


def report(stats: MapStats, printer: Printer | None) -> None:
    """Hand a finished map's stats to every open :func:`collect_stats` block, and print them
    with ``printer`` (``stats=True``)."""
    with _lock:
        for collected in _open:
            collected.maps.append(stats)
    if printer is not None:
        printer.write(f"{stats}\n")
