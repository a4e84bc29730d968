"""The messages between the caller and a worker, each a small named type, defined once here.

Caller to worker: :class:`Load` once per map and worker, :class:`Task` per chunk,
:class:`GiveBack` (to a process) for the reply segments the caller is done with, and ``None`` to
stop. Worker to caller: :class:`Done` or :class:`Cancelled` per chunk, and from a process
:class:`Ready` once it can take work or :class:`InitFailed` when its initializer raised, and
:class:`Output` for what it printed or logged.

A thread worker receives the objects themselves. Over a process's pipe they travel as plain
tuples tagged with their kind (:func:`to_wire`, :func:`from_wire`): the pickler writes and reads a
plain tuple in C, where a named tuple costs it a Python call each way and its class's name.
Whoever reads one tells the kind by its type (``type(message) is Done``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from .._errors import Failure

# How many maps' functions a worker keeps loaded; the scheduler mirrors it to know what to resend.
CALL_CACHE: Final = 16


class Call:
    """What a worker needs to know about a map, sent once per map.

    A plain class: a dataclass would make every worker import ``dataclasses`` (and ``inspect``)
    at start-up.
    """

    __slots__ = (
        "fn",
        "keep_going",
        "levels",
        "measured",
        "memory_limit",
        "output",
        "retry_on",
        "star",
        "timed",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        star: bool,
        keep_going: bool,
        timed: bool,
        output: str = "inherit",
        levels: Any = None,
        measured: bool = False,
        retry_on: tuple[type[BaseException], ...] | None = None,
        memory_limit: int | None = None,
    ):
        self.fn = fn
        self.star = star  # the items are argument tuples (several iterables)
        self.keep_going = keep_going  # on_error="return": finish the chunk after a failure
        self.timed = timed  # a timeout is set: keep the item's start time up to date
        self.output = output  # what becomes of the worker's output: forward, inherit or drop
        self.levels = levels  # the caller's logging levels when the map started (not inherited)
        self.measured = measured  # stats are collected: time each item, count retries
        self.retry_on = retry_on  # only these exceptions are retried (None: any)
        self.memory_limit = memory_limit  # a process worker retires above this resident size

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            Call,
            (
                self.fn,
                self.star,
                self.keep_going,
                self.timed,
                self.output,
                self.levels,
                self.measured,
                self.retry_on,
                self.memory_limit,
            ),
        )


class Load(NamedTuple):
    """Caller to worker: keep ``call`` under ``call_id`` for the chunks that name it."""

    call_id: int
    call: Call


class Task(NamedTuple):
    """Caller to worker: run ``items`` (input indices from ``start``) with the call ``call_id``,
    retrying a failing item up to ``retries`` times."""

    task_id: int
    call_id: int
    start: int
    items: Sequence[Any]
    retries: int


class GiveBack(NamedTuple):
    """Caller to a process worker: these reply segments may hold its next large results."""

    names: list[str]


class Done(NamedTuple):
    """Worker to caller: a chunk's values (a :class:`Failure` in place of each item that failed),
    the seconds it took, whether any value is a failure, and (when the call is ``measured``) its
    slowest item's index and seconds, the retries it spent and the items it timed out; and
    whether the worker retires after it (over ``max_worker_memory``: the chunk's items after
    ``values`` did not run)."""

    task_id: int
    start: int
    values: list[Any]
    seconds: float
    failed: bool
    measured: tuple[int, float, int, int] | None = None
    retiring: bool = False


class Output(NamedTuple):
    """Worker to caller: what the worker printed and logged, as entries of
    :mod:`parallelize._worker.output` (sent as soon as a line is whole)."""

    entries: list[Any]


class Cancelled(NamedTuple):
    """Worker to caller: the chunk was skipped, its map having been cancelled."""

    task_id: int


class Ready(NamedTuple):
    """Process worker to caller: started (and initialized); it may be sent work now."""


class InitFailed(NamedTuple):
    """Worker to caller: the initializer raised (or the worker could not read a message)."""

    failure: Failure


READY = Ready()

Message = Load | Task | GiveBack | Done | Cancelled | Ready | InitFailed | Output
# The kinds in the order of their tags on the wire.
_KINDS: Final[tuple[type[Message], ...]] = (
    Load,
    Task,
    GiveBack,
    Done,
    Cancelled,
    Ready,
    InitFailed,
    Output,
)
_TAGS: Final = {kind: tag for tag, kind in enumerate(_KINDS)}


def to_wire(message: Message) -> tuple[Any, ...]:
    """The message as a plain tuple, its kind's tag first, for a pickler."""
    return (_TAGS[type(message)], *message)


def from_wire(wire: tuple[Any, ...]) -> Message:
    """The message :func:`to_wire` made (built without a Python call: ``tuple.__new__``)."""
    message: Message = tuple.__new__(_KINDS[wire[0]], wire[1:])
    return message
