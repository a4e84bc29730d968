"""``MapStats``: what one map did and where its time went, with a diagnosis in plain words.

The scheduler measures (:mod:`parallelize._core.stats`); this module only holds the figures,
reads them (:func:`diagnose`) and shows them (``str()``, :meth:`MapStats.to_dict`,
:meth:`MapStats.plot`). Worker time is split three ways, per worker from its first chunk on:
``compute_s`` (inside the user's function), ``overhead_s`` (a chunk was the worker's but not
computing: pickling, the pipe, the scheduler's turn) and ``idle_s`` (the worker had no chunk: it
waited for input, or, for ``tail_s`` of it, after the last chunk was handed out, for the other
workers to finish theirs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Overhead above this share of the busy time, with items this short, is worth batching.
OVERHEAD_SHARE: Final = 0.5
SHORT_ITEM_S: Final = 1e-3
# One item taking this share of the wall time (and at least this long) held the map up.
SLOW_ITEM_SHARE: Final = 0.25
SLOW_ITEM_MIN_S: Final = 0.05
# Workers idle this share of their time were starved of input.
IDLE_SHARE: Final = 0.3
# Start-up taking this share of a map's wall time (and at least this long) is worth avoiding.
STARTUP_SHARE: Final = 0.5
STARTUP_MIN_S: Final = 0.05
# This many bytes crossing between the caller and the workers is worth not moving.
BIG_BYTES: Final = 1 << 30

# The figures, in the order reports and to_dict() show them.
FIELDS: Final = (
    "function",
    "backend",
    "items",
    "chunks",
    "workers",
    "workers_used",
    "wall_s",
    "compute_s",
    "overhead_s",
    "idle_s",
    "tail_s",
    "startup_s",
    "bytes_pickled",
    "bytes_shared",
    "retries",
    "replacements",
    "crashes",
    "timeouts",
    "slowest",
)


class MapStats:
    """What one map did and where its time went.

    Collected with ``parallelize.collect_stats()`` or printed with ``stats=True``. ``workers`` is
    how many the map had, ``workers_used`` how many of them ran items. ``slowest`` is
    the input index and seconds of the slowest item (None when no item finished);
    ``diagnosis`` lists findings in plain words, each with what to do about it; ``timeline``
    holds each chunk as ``(worker, start_s, end_s, compute_s)``, times from the map's start.
    """

    __slots__ = (*FIELDS, "diagnosis", "timeline")

    function: str
    backend: str
    items: int
    chunks: int
    workers: int
    workers_used: int
    wall_s: float
    compute_s: float
    overhead_s: float
    idle_s: float
    tail_s: float
    startup_s: float
    bytes_pickled: int
    bytes_shared: int
    retries: int
    replacements: int
    crashes: int
    timeouts: int
    slowest: tuple[int, float] | None
    diagnosis: list[str]
    timeline: list[tuple[int, float, float, float]]

    def __init__(self, *, timeline: list[tuple[int, float, float, float]], **figures: Any):
        for name in FIELDS:
            setattr(self, name, figures.pop(name))
        if figures:
            raise TypeError(f"unknown figure(s): {', '.join(sorted(figures))}")
        self.timeline = timeline
        self.diagnosis = diagnose(self)

    def to_dict(self) -> dict[str, Any]:
        """The figures, the diagnosis and the timeline as plain JSON-able values."""
        out: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        out["slowest"] = list(self.slowest) if self.slowest else None
        out["diagnosis"] = list(self.diagnosis)
        out["timeline"] = [list(chunk) for chunk in self.timeline]
        return out

    def plot(self, ax: Any = None) -> Figure:
        """Each worker's timeline as a Gantt chart: compute, overhead and idle time per chunk.

        Needs matplotlib (``pip install "parallelize[plot]"``); draws on ``ax`` if given.
        """
        from ._statsplot import plot

        return plot(self, ax)

    def __repr__(self) -> str:
        return (
            f"<MapStats {self.function}: {self.items} items, {self.workers} workers, "
            f"{self.wall_s:.3f} s>"
        )

    def __str__(self) -> str:
        worker_s = self.compute_s + self.overhead_s + self.idle_s
        lines = [
            f"map of {self.function} on {self.backend}: {self.items:,} items in "
            f"{self.chunks:,} chunks on {self.workers_used} of {self.workers} workers, "
            f"{seconds(self.wall_s)} wall",
            f"  compute  {seconds(self.compute_s):>9}  {share(self.compute_s, worker_s)}",
            f"  overhead {seconds(self.overhead_s):>9}  {share(self.overhead_s, worker_s)}",
            f"  idle     {seconds(self.idle_s):>9}  {share(self.idle_s, worker_s)}, "
            f"{seconds(self.tail_s)} of it at the end",
            f"  startup  {seconds(self.startup_s):>9}",
            f"  moved    {size(self.bytes_pickled)} pickled, {size(self.bytes_shared)} "
            "through shared memory",
        ]
        if self.slowest is not None:
            index, slowest = self.slowest
            lines.append(f"  slowest  item {index}: {seconds(slowest)}")
        if self.retries or self.crashes or self.timeouts or self.replacements:
            lines.append(
                f"  faults   {self.retries} retries, {self.crashes} crashes, "
                f"{self.timeouts} timeouts, {self.replacements} workers replaced for memory"
            )
        lines += [f"  - {finding}" for finding in self.diagnosis] or ["  - no problem found"]
        return "\n".join(lines)


def diagnose(stats: MapStats) -> list[str]:
    """Plain-language findings about a map, each with its fix; empty when nothing stands out."""
    findings = []
    busy = stats.compute_s + stats.overhead_s
    worker_s = busy + stats.idle_s
    if stats.items and busy and stats.overhead_s / busy > OVERHEAD_SHARE:
        per_item = stats.compute_s / stats.items
        if per_item < SHORT_ITEM_S:
            findings.append(
                f"items take {seconds(per_item)} each; overhead is "
                f"{stats.overhead_s / busy:.0%} of the time: batch items or raise chunksize"
            )
    if stats.slowest is not None and stats.items > 1 and stats.wall_s > 0:
        index, slowest = stats.slowest
        if slowest >= SLOW_ITEM_MIN_S and slowest / stats.wall_s >= SLOW_ITEM_SHARE:
            findings.append(
                f"the item at index {index} took {slowest / stats.wall_s:.0%} of the wall time "
                f"({seconds(slowest)}) while other workers may have waited: split it into "
                "smaller items, or put it first in the input"
            )
    if stats.workers_used < min(stats.workers, stats.items):
        findings.append(
            f"only {stats.workers_used} of the {stats.workers} workers ran items: the work was "
            "handed out before the others were ready (they were starting, or the chunks were "
            "few and large); lower chunksize=, or run the map on workers already warm"
        )
    starved = stats.idle_s - stats.tail_s
    if worker_s and starved / worker_s > IDLE_SHARE:
        findings.append(
            f"workers were idle {starved / worker_s:.0%} of the time waiting for items: the "
            "input iterator is the bottleneck (or, for imap, the loop that consumes the "
            "results): produce items faster, or do that work in the mapped function"
        )
    if worker_s and stats.tail_s / worker_s > IDLE_SHARE:
        findings.append(
            f"workers were idle {stats.tail_s / worker_s:.0%} of the time at the end, waiting "
            "for the last chunks: the work was split unevenly; lower chunksize=, or split "
            "the slowest items"
        )
    if stats.startup_s >= STARTUP_MIN_S and stats.startup_s >= STARTUP_SHARE * stats.wall_s:
        findings.append(
            f"starting the workers took {stats.startup_s / stats.wall_s:.0%} of the wall time "
            f"({seconds(stats.startup_s)}): run several maps with the same options in one "
            "program (the workers stay warm between them), or use start_method='fork'"
        )
    moved = stats.bytes_pickled + stats.bytes_shared
    if moved >= BIG_BYTES:
        findings.append(
            f"{size(moved)} of items and results crossed between the caller and the workers: "
            "return less, or write big results to disk and return their paths"
        )
    if stats.crashes:
        findings.append(
            f"workers died {stats.crashes} times: see the WorkerCrashedError for the exit "
            "code (-9 is often the out-of-memory killer: use fewer workers or less memory "
            "per item)"
        )
    if stats.timeouts:
        findings.append(
            f"{stats.timeouts} items ran past the timeout: raise timeout=, or find why "
            "those items hang"
        )
    return findings


def seconds(value: float) -> str:
    """A duration, readable: '3 us', '12.5 ms', '1.23 s'."""
    if value < 1e-3:
        return f"{value * 1e6:.3g} us"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def size(nbytes: float) -> str:
    """A size in bytes, readable: '512 B', '1.5 MB', '2 GB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    raise AssertionError("unreachable")


def share(part: float, whole: float) -> str:
    return f"({part / whole:.0%} of worker time)" if whole else ""
