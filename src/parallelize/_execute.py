"""Running one chunk of items: the loop every backend's worker shares.

A worker publishes what it is doing in a small status slot (shared memory for processes, a list
for threads) so the dispatcher can tell, without any message, which item a dead or stuck worker
was running and since when, and can ask it to skip chunks of a cancelled map.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, MutableSequence, Sequence
from typing import Any

from ._serialization import Failure

# Status slot layout: one int64 each.
TASK = 0  # id of the chunk being run
INDEX = 1  # input index of the item being run
START_NS = 2  # time.monotonic_ns() when that item started (only kept up when a timeout is set)
CANCEL = 3  # written by the dispatcher: chunks with an id up to this one are to be skipped
RETRIED = 4  # the index of the chunk's item that raised and is being retried (-1: none yet)
RETRIES = 5  # retries spent on that item: a timeout or crash during one does not grant them anew
SLOT_WIDTH = 6


def fresh_status(task: int = 0, cancel: int = 0) -> list[int]:
    """A status slot as a plain list: for thread and serial workers, and engine tasks."""
    return [task, -1, -1, cancel, -1, 0]

Status = MutableSequence[int]


class Call:
    """What a worker needs to know about a map, sent once per map.

    A plain class: a dataclass would make every worker import ``dataclasses`` (and ``inspect``),
    and a NamedTuple costs a tenth of a millisecond to create, on every cold start.
    """

    __slots__ = ("fn", "keep_going", "star", "timed")

    def __init__(self, fn: Callable[..., Any], star: bool, keep_going: bool, timed: bool):
        self.fn = fn
        self.star = star  # the items are argument tuples (several iterables)
        self.keep_going = keep_going  # on_error="return": finish the chunk after a failure
        self.timed = timed  # a timeout is set: keep START_NS up to date

    def __reduce__(self) -> tuple[Any, ...]:
        return (Call, (self.fn, self.star, self.keep_going, self.timed))


def run_chunk(
    call: Call, task_id: int, start: int, items: Sequence[Any], retries: int, status: Status
) -> tuple[list[Any], float, bool] | None:
    """Run ``items`` (input indices from ``start``): their values, the seconds it took, and
    whether some values are failures (so that nobody scans a clean chunk for them).

    A failing item is retried up to ``retries`` times, then stands in the values as a
    :class:`Failure`; without ``keep_going`` the chunk stops there. Returns None when the
    dispatcher cancelled the chunk before it ran.

    Every item's index is published (one store, ~20 ns), so a crash is always attributed. Without a
    timeout, the loop checks for cancellation only at the start of the chunk, which makes a tiny
    item about a quarter cheaper; a cancelled chunk that is already running is stopped by the
    dispatcher after a grace period instead.
    """
    status[RETRIED] = -1  # indices of an earlier map may come again: its count is not this one's
    status[TASK] = task_id
    if status[CANCEL] >= task_id:
        return None
    values: list[Any] = []
    began = time.perf_counter()
    done = 0
    if not call.timed:
        fn, append = call.fn, values.append
        index = start
        try:
            # zip with a counter: ~10 ns an item cheaper than enumerate plus an addition.
            if call.star:
                for index, item in zip(itertools.count(start), items):
                    status[INDEX] = index
                    append(fn(*item))
            else:
                for index, item in zip(itertools.count(start), items):
                    status[INDEX] = index
                    append(fn(item))
            return values, time.perf_counter() - began, False
        except BaseException as exc:  # the worker must outlive anything the user raises
            done = index - start
            if _failed(call, items[done], index, retries, exc, status, values):
                return values, time.perf_counter() - began, True
            done += 1
    if not _run_tracked(call, task_id, start, items, done, retries, status, values):
        return None
    seconds = time.perf_counter() - began
    return values, seconds, any(type(value) is Failure for value in values)


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
    """Run ``items[done:]`` checking for cancellation and keeping START_NS for timeouts; False
    when the chunk was cancelled."""
    fn, star, timed, append = call.fn, call.star, call.timed, values.append
    index = start + done
    for item in items[done:] if done else items:
        if status[CANCEL] >= task_id:
            return False
        # START_NS before INDEX: a dispatcher that reads INDEX then START_NS never pairs an item
        # with an older item's start time, so it cannot time out an item that just began.
        if timed:
            status[START_NS] = time.monotonic_ns()
        status[INDEX] = index
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

    Stops early once the dispatcher has cancelled the chunk: a thread worker abandoned after a
    timeout must not go on spending retries that the dispatcher has handed to another attempt.
    """
    for spent in range(1, retries + 1):
        if status[CANCEL] >= status[TASK]:
            break
        if call.timed:
            status[START_NS] = time.monotonic_ns()
        status[RETRIES] = spent  # before RETRIED: whoever then reads RETRIED == index reads this
        status[RETRIED] = index
        try:
            return call.fn(*item) if call.star else call.fn(item)
        except BaseException as exc:
            error = exc
    return Failure.capture(error, index)
