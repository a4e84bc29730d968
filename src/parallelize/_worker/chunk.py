"""Running one chunk of items: the loop every backend's worker shares.

A worker publishes what it is doing in a small :class:`Status` slot (shared memory for processes,
a list for threads and engine tasks) so the scheduler can tell, without any message, which item a
dead or stuck worker was running and since when, and can ask it to skip chunks of a cancelled
map.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, MutableSequence, Sequence
from typing import Any, Final

from .._errors import Failure
from .._wire.protocol import Call

# The slot's fields, one int64 each; only this module reads them by position.
_TASK: Final = 0  # id of the chunk being run
_INDEX: Final = 1  # input index of the item being run
_START_NS: Final = 2  # time.monotonic_ns() when that item started (kept up only when timed)
_CANCEL: Final = 3  # written by the caller: chunks with an id up to this one are to be skipped
_RETRIED: Final = 4  # the index of the chunk's item that raised and is being retried (-1: none)
_RETRIES: Final = 5  # retries spent on that item: a timeout or crash during one grants none anew
_RETRIED_ALL: Final = 6  # retries the worker has spent in all (for a map's stats)
_WAITING_NS: Final = 7  # time.monotonic_ns() since the item waits to send output (0: it does not)
SLOT_WIDTH: Final = 8
# In the task field: the worker is running its initializer (since the start field's time).
_INITIALIZING: Final = -2


# A list (threads, engine tasks, the caller) or a view of shared memory (processes).
Fields = MutableSequence[int] | memoryview


class Status:
    """One worker's status slot, over ``SLOT_WIDTH`` int64 fields (shared memory or a list)."""

    __slots__ = ("fields",)
    fields: Fields

    def __init__(self, fields: Fields | None = None):
        if fields is None:  # a fresh slot: no chunk, no item, nothing cancelled
            fields = [0, -1, -1, 0, -1, 0, 0, 0]
        self.fields = fields

    def reset(self) -> None:
        """Fresh values for a new worker. The cancel mark stays: ids only grow, so it is
        harmless."""
        fields = self.fields
        fields[_TASK], fields[_INDEX], fields[_START_NS] = -1, -1, -1
        fields[_RETRIED], fields[_RETRIES], fields[_WAITING_NS] = -1, 0, 0

    @property
    def task(self) -> int:
        """The id of the chunk the worker runs (or last ran)."""
        return self.fields[_TASK]

    @property
    def index(self) -> int:
        """The input index of the item it runs. Read it before :attr:`started_ns`: the worker
        writes them in the other order, so the pair is never an old start with a new item."""
        return self.fields[_INDEX]

    @property
    def started_ns(self) -> int:
        """When that item started (``time.monotonic_ns()``), kept up only for a timed map."""
        return self.fields[_START_NS]

    @property
    def initializing(self) -> bool:
        """Whether the worker is running its initializer (since :attr:`started_ns`)."""
        return self.fields[_TASK] == _INITIALIZING

    def begin_initializer(self) -> None:
        """The worker starts its initializer: the scheduler may time it, and names it if the
        worker dies in it."""
        fields = self.fields
        fields[_START_NS] = time.monotonic_ns()
        fields[_TASK] = _INITIALIZING

    def end_initializer(self) -> None:
        """The initializer returned."""
        self.fields[_TASK] = -1

    def running_ns(self, now: int) -> int:
        """How long the item has run by ``now`` (``time.monotonic_ns()``), not counting the
        time it waited for the caller to read its output (a stream's consumer slow to ask for
        more leaves the pipe full)."""
        fields = self.fields
        waiting = fields[_WAITING_NS]  # before the start: the worker writes them the other way
        ran = now - fields[_START_NS]
        return ran - (now - waiting) if waiting else ran

    def waits_to_send(self) -> int:
        """The worker is about to send output, which may wait for the caller: from when."""
        now = time.monotonic_ns()
        self.fields[_WAITING_NS] = now
        return now

    def sent(self, since: int) -> None:
        """The output sent (after :meth:`waits_to_send`): the wait moves the start on."""
        fields = self.fields
        fields[_START_NS] += time.monotonic_ns() - since
        fields[_WAITING_NS] = 0

    def retries_spent(self, index: int) -> int:
        """Retries the worker spent on the item at ``index`` (it raised, then ran again)."""
        fields = self.fields
        return fields[_RETRIES] if fields[_RETRIED] == index else 0

    def cancel_up_to(self, task_id: int) -> None:
        """Ask the worker to skip every chunk with an id up to ``task_id``."""
        self.fields[_CANCEL] = task_id


# What a measured chunk reports: its slowest item's index and seconds, the retries it spent, and
# the items it timed out itself (only an engine's task does).
Measured = tuple[int, float, int, int]
# A measured chunk of up to this many items times each one; a larger one (of items so short that
# the chunk sizer made it this large, or of a fixed chunksize) runs at full speed and reports its
# average item as its slowest: two clock reads per item would cost a tiny map a quarter of its
# speed.
TIMED_ITEMS: Final = 64


def run_chunk(
    call: Call, task_id: int, start: int, items: Sequence[Any], retries: int, status: Status
) -> tuple[list[Any], float, bool, Measured | None] | None:
    """Run ``items`` (input indices from ``start``): their values, the seconds it took, whether
    some values are failures (so that nobody scans a clean chunk for them), and for a
    ``measured`` call its slowest item, retries and timeouts.

    A failing item is retried up to ``retries`` times, then stands in the values as a
    :class:`Failure`; without ``keep_going`` the chunk stops there. Returns None when the
    scheduler cancelled the chunk before it ran.

    Every item's index is published (one store), so a crash is always attributed. Without a
    timeout, the loop checks for cancellation only at the start of the chunk, which keeps a tiny
    item cheap; a cancelled chunk that is already running is stopped by the scheduler after a
    grace period instead.
    """
    fields = status.fields
    fields[_RETRIED] = -1  # indices of an earlier map may come again: its count is not this one's
    fields[_TASK] = task_id
    if fields[_CANCEL] >= task_id:
        return None
    values: list[Any] = []
    began = time.perf_counter()
    if not call.measured:
        return _run(call, task_id, start, items, retries, status, values, began)
    retried = fields[_RETRIED_ALL]
    if len(items) > TIMED_ITEMS:
        outcome = _run(call, task_id, start, items, retries, status, values, began)
        if outcome is None:
            return None
        total, failed = outcome[1], outcome[2]
        slowest, seconds = start, total / len(items)
    else:
        timed = _run_timed(call, task_id, start, items, retries, status, values)
        if timed is None:
            return None
        # The items' own time, without the clock's: the chunk sizer sees what it would unmeasured.
        slowest, seconds, total = timed
        failed = any(type(value) is Failure for value in values)
    measured = (slowest, seconds, fields[_RETRIED_ALL] - retried, 0)
    return values, total, failed, measured


def _run(
    call: Call,
    task_id: int,
    start: int,
    items: Sequence[Any],
    retries: int,
    status: Status,
    values: list[Any],
    began: float,
) -> tuple[list[Any], float, bool, None] | None:
    """run_chunk's loop, at full speed."""
    fields = status.fields
    done = 0
    if not call.timed:
        fn, append = call.fn, values.append
        index = start
        try:
            # zip with a counter: cheaper per item than enumerate plus an addition.
            if call.star:
                for index, item in zip(itertools.count(start), items):
                    fields[_INDEX] = index
                    append(fn(*item))
            else:
                for index, item in zip(itertools.count(start), items):
                    fields[_INDEX] = index
                    append(fn(item))
            return values, time.perf_counter() - began, False, None
        except BaseException as exc:  # the worker must outlive anything the user raises
            done = index - start
            if _failed(call, items[done], index, retries, exc, status, values):
                return values, time.perf_counter() - began, True, None
            done += 1
    if not _run_tracked(call, task_id, start, items, done, retries, status, values):
        return None
    seconds = time.perf_counter() - began
    return values, seconds, any(type(value) is Failure for value in values), None


def _run_timed(
    call: Call,
    task_id: int,
    start: int,
    items: Sequence[Any],
    retries: int,
    status: Status,
    values: list[Any],
) -> tuple[int, float, float] | None:
    """Run ``items`` through :func:`_run_tracked` one at a time, timing each: the slowest
    item's index and seconds, and the seconds of all (None when the chunk was cancelled). Only
    a map that collects stats pays for the clock."""
    clock = time.perf_counter
    slowest, slowest_seconds, total = start, 0.0, 0.0
    for offset in range(len(items)):
        index = start + offset
        began = clock()
        if not _run_tracked(call, task_id, index, items[offset : offset + 1], 0, retries, status,
                            values):  # fmt: skip
            return None
        seconds = clock() - began
        total += seconds
        if seconds > slowest_seconds:
            slowest, slowest_seconds = index, seconds
        if type(values[-1]) is Failure and not call.keep_going:
            break
    return slowest, slowest_seconds, total


def _run_tracked(
    call: Call,
    task_id: int,
    start: int,
    items: Sequence[Any],
    done: int,
    retries: int,
    status: Status,
    values: list[Any],
) -> bool:
    """Run ``items[done:]`` checking for cancellation and keeping the start time for timeouts;
    False when the chunk was cancelled."""
    fn, star, timed, append = call.fn, call.star, call.timed, values.append
    fields = status.fields
    index = start + done
    for item in items[done:] if done else items:
        if fields[_CANCEL] >= task_id:
            return False
        # The start before the index: a scheduler that reads the index, then the start, never
        # pairs an item with an older item's start time, so it cannot time out an item just begun.
        if timed:
            fields[_START_NS] = time.monotonic_ns()
        fields[_INDEX] = index
        try:
            append(fn(*item) if star else fn(item))
        except BaseException as exc:  # the worker must outlive anything the user raises
            if _failed(call, item, index, retries, exc, status, values):
                break
        index += 1
    return True


def _failed(
    call: Call,
    item: Any,
    index: int,
    retries: int,
    error: BaseException,
    status: Status,
    values: list[Any],
) -> bool:
    """Retry a failed item and append its outcome; whether the chunk must stop there."""
    outcome = _retry(call, item, index, retries, error, status)
    values.append(outcome)
    return isinstance(outcome, Failure) and not call.keep_going


def _retry(
    call: Call, item: Any, index: int, retries: int, error: BaseException, status: Status
) -> Any:
    """Run a failed item again up to ``retries`` times: its value, or the last failure.

    Stops early once the scheduler has cancelled the chunk: a thread worker abandoned after a
    timeout must not go on spending retries that the scheduler has handed to another attempt.
    """
    fields = status.fields
    retry_on = call.retry_on
    for spent in range(1, retries + 1):
        if fields[_CANCEL] >= fields[_TASK]:
            break
        if retry_on is not None and not isinstance(error, retry_on):
            break  # not a failure this map retries
        if call.timed:
            fields[_START_NS] = time.monotonic_ns()
        fields[_RETRIED_ALL] += 1
        fields[_RETRIES] = spent  # before _RETRIED: who then reads that index there reads this
        fields[_RETRIED] = index
        try:
            return call.fn(*item) if call.star else call.fn(item)
        except BaseException as exc:
            error = exc
    return Failure.capture(error, index)


def invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
    """``fn(*args, **kwargs)``: the item of a call made one at a time (``apply``, ``submit``)."""
    return fn(*args, **kwargs) if kwargs else fn(*args)
