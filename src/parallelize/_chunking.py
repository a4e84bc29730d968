"""Chunk sizing: pure functions, no processes.

Items travel in chunks so that the fixed cost of a round trip to a worker (pickling, a pipe write,
a wake-up: tens of microseconds) is spread over many tiny items, while long or uneven items still
travel a few at a time so that every worker stays busy until the end.

The automatic size aims for a chunk that takes about ``target`` seconds in a worker (by default
``TARGET_SECONDS``; remote engines give their own), measured from the chunks that came back; it
never gives one worker more than its share of what is left, down to ``floor`` seconds of work
(``FLOOR_SECONDS``), so the tail of a map is balanced.
"""

from __future__ import annotations

import math

# A chunk of ~100 ms keeps the per-chunk cost (tens of microseconds of the caller's CPU, which
# competes with the workers for the same cores) a small fraction of the work; docs/benchmarks.md
# has the measurements behind it. The tail is balanced separately, by ``balanced_size`` and
# ``FLOOR_SECONDS``.
TARGET_SECONDS = 0.1
# Growth per measured chunk: trust a new measurement quickly, but not a single noisy one blindly.
MAX_GROWTH = 16
# Above this many items a chunk's pickle grows past a few MB without any gain in throughput.
MAX_CHUNK = 65536
# Each worker should get at least this many chunks of what is left, for load balance at the end.
SHARES_PER_WORKER = 2
# The tail is not split into chunks holding less work than this: a round trip to a worker costs
# more than the imbalance such a chunk could leave.
FLOOR_SECONDS = 0.001


def balanced_size(remaining: int, workers: int) -> int:
    """The largest chunk that leaves every worker ``SHARES_PER_WORKER`` shares of what is left.

    >>> balanced_size(1000, 2)
    250
    >>> balanced_size(3, 4)
    1
    """
    return max(1, math.ceil(remaining / (workers * SHARES_PER_WORKER)))


class ChunkSizer:
    """Chooses the size of the next chunk: fixed when the user gave one, else adaptive.

    >>> s = ChunkSizer(workers=2, fixed=None)
    >>> s.next_size(remaining=None)
    1
    >>> s.record(items=1, seconds=1e-6)   # 1 us per item: grow, at most MAX_GROWTH times
    >>> s.next_size(remaining=None)
    16
    >>> s.record(items=16, seconds=1.6)   # 100 ms per item: one item per chunk
    >>> s.next_size(remaining=None)
    1
    >>> s.record(items=16, seconds=16e-6)  # 1 us per item again: at most 16x more
    >>> s.next_size(remaining=40)         # 40 us of work left: not split to balance it
    16
    >>> ChunkSizer(workers=2, fixed=100).next_size(remaining=10)
    100
    """

    __slots__ = ("_fixed", "_floor", "_floor_seconds", "_size", "_target", "_workers")

    def __init__(
        self,
        *,
        workers: int,
        fixed: int | None,
        target: float | None = None,
        floor: float | None = None,
    ):
        self._workers = workers
        self._fixed = fixed
        # Seconds of work a chunk should hold, and at the least, to balance the tail (None: the
        # defaults, for local workers).
        self._target = TARGET_SECONDS if target is None else target
        self._floor_seconds = FLOOR_SECONDS if floor is None else floor
        self._size = 1
        self._floor = 1  # the smallest chunk worth a round trip, from the last measurement

    def next_size(self, remaining: int | None) -> int:
        """Items for the next chunk; ``remaining`` is how many are left when that is known."""
        if self._fixed is not None:
            return self._fixed
        if remaining is None:
            return self._size
        return min(self._size, max(balanced_size(remaining, self._workers), self._floor))

    def record(self, *, items: int, seconds: float) -> None:
        """Learn from a chunk of ``items`` that took ``seconds`` in a worker."""
        if self._fixed is not None or items <= 0:
            return
        per_item = max(seconds / items, 1e-9)
        wanted = max(1, int(self._target / per_item))
        self._size = min(wanted, self._size * MAX_GROWTH, MAX_CHUNK)
        self._floor = max(1, int(self._floor_seconds / per_item))
