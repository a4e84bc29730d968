"""What a backend is to the scheduler: a :class:`Backend` opens a :class:`WorkerSet` per map.

A backend only starts workers, moves chunks and reports what happened; the one scheduler
(:mod:`parallelize._core.scheduler`) decides everything else for every backend alike: chunk
sizes, the window, retries, timeouts, crash attribution, cancellation. The scheduler sees workers
as :class:`WorkerHandle` objects and hears from them through :meth:`WorkerSet.wait`, as messages
of :mod:`parallelize._wire.protocol` (``Done``, ``Cancelled``, ``Ready``, ``InitFailed``) or the
events below.

To add a backend: subclass :class:`Backend` and :class:`WorkerSet` in a module of this package and
name it in :mod:`parallelize._backends` (``docs/architecture.md`` walks through it).
"""

from __future__ import annotations

import abc
import collections
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Final, Generic, NamedTuple, TypeVar

from .._options import Resolved
from .._wire.protocol import Call, Task
from .._worker.chunk import Status

# Chunks queued per worker: one running and one waiting, so no worker idles during a round trip.
DEPTH: Final = 2


class Dead(NamedTuple):
    """The worker died (or stopped answering): the scheduler reaps it and attributes its chunks."""


class Unreadable(NamedTuple):
    """A message from the worker that the caller could not unpickle (a result whose class fails
    to rebuild here, say); the worker itself is fine."""

    error: Exception


class Crashed(NamedTuple):
    """The engine lost the worker running chunk ``task_id`` and cannot say which item did it."""

    task_id: int
    error: BaseException


DEAD: Final = Dead()


class WorkerHandle:
    """The scheduler's view of one worker."""

    __slots__ = ("budget", "loaded", "queue", "ready", "retiring", "status")

    def __init__(self, status: Status, budget: int | None, *, ready: bool = True):
        self.status = status
        self.ready = ready  # it has started and may be sent work (a process says so once up)
        self.queue: collections.deque[int] = collections.deque()  # ids of chunks sent, in order
        self.loaded: collections.OrderedDict[int, None] = collections.OrderedDict()  # call ids
        self.budget = budget  # items it may still run (max_tasks_per_worker)
        self.retiring = False  # it will exit after its queued chunks


W = TypeVar("W", bound=WorkerHandle)


class WorkerSet(abc.ABC, Generic[W]):
    """The workers of one map, as the scheduler drives them."""

    size: int
    workers: list[W]
    broken: bool = False  # discard this set after the map (an initializer failed)
    # What kill() does to a worker that overran its timeout, as its TimeoutError says.
    stopped: ClassVar[str] = "its worker was stopped and replaced"
    # Chunks queued per worker.
    depth: ClassVar[int] = DEPTH
    # The scheduler times items out by their status slot and kill(); False when the workers
    # enforce the timeout themselves (an engine task cannot be stopped from outside).
    watches_timeouts: ClassVar[bool] = True
    # On a cancel, busy workers get a grace period to finish their running item (False: the
    # tasks are dropped at once).
    graceful_cancel: ClassVar[bool] = True
    # The seconds of work a chunk aims at, and the least the tail is split down to (None: the
    # chunk sizer's defaults); the largest chunk (None: no cap).
    target_seconds: float | None = None
    floor_seconds: float | None = None
    max_chunk: int | None = None
    # What a crash message calls the worker set's engine (an engine's set names it).
    engine_name: str = "engine"
    # Bytes of the results received so far (pickled, where they cross from another process;
    # estimated for threads; 0 where results are not held at all): what finished results cost
    # the caller, for a stream's bound on them.
    reply_bytes: int = 0
    # Bytes of chunks and results pickled through pipes or an engine, and passed through shared
    # memory, so far (a map's stats take the difference).
    bytes_pickled: int = 0
    bytes_shared: int = 0

    @abc.abstractmethod
    def new_task_id(self) -> int:
        """A chunk id, growing: a worker's cancel mark skips every id up to it."""

    @abc.abstractmethod
    def spawn(self) -> W:
        """Start one more worker."""

    def can_spawn(self) -> bool:
        """Whether another worker may start now (retiring ones may still hold resources)."""
        return True

    @abc.abstractmethod
    def encode(self, task: Task) -> tuple[Any, object]:
        """A chunk ready to send, and what to :meth:`release` once it is done (or None).

        Raises if it cannot be serialised.
        """

    def release(self, lease: object) -> None:
        """Free what :meth:`encode` held for a chunk that is done, cancelled or lost."""

    @abc.abstractmethod
    def load_message(self, call: Call) -> tuple[int, Any]:
        """An id for ``call`` and the message that loads it into a worker (None: none needed)."""

    @abc.abstractmethod
    def send(self, worker: W, payload: Any) -> None:
        """Deliver an encoded message; OSError when the worker is gone."""

    @abc.abstractmethod
    def wait(self, timeout: float | None) -> list[tuple[W, Any]]:
        """Messages and events that arrived, waiting up to ``timeout`` for one."""

    def wake(self) -> None:
        """From any thread: make a ``wait`` blocked now (or the next one) return soon, with or
        without events (a live job has new input)."""

    @abc.abstractmethod
    def kill(self, worker: W) -> None:
        """Stop a worker now, whatever it is doing (or drop what it runs, if it cannot stop)."""

    def kill_all(self, workers: list[W]) -> None:
        """Stop these workers now (a set may do it in one go)."""
        for worker in workers:
            self.kill(worker)

    @abc.abstractmethod
    def reap(self, worker: W) -> int | None:
        """Forget a dead or killed worker; its exit code when it has one."""


class Backend(abc.ABC):
    """Opens worker sets for maps. One instance per backend name lives for the whole interpreter."""

    name: str

    @abc.abstractmethod
    def open(
        self, options: Resolved, *, private: bool = False
    ) -> AbstractContextManager[WorkerSet[Any]]:
        """The workers for one map with these options, released (or kept warm) on exit.

        ``private``: workers of its own, never the ones kept warm between maps, and stopped on
        exit (a ``Pool`` owns its workers for its whole life, as the standard library's does).
        """

    def shutdown(self) -> None:  # noqa: B027 - most backends hold nothing between maps
        """Release whatever is kept warm between maps."""


def missing_engine(extra: str, module: str, error: ImportError) -> ImportError:
    """An ImportError that tells the user which extra brings the engine."""
    message = (
        f"backend={extra!r} needs {module}, which is not installed; "
        f'install it with: pip install "parallelize[{extra}]"'
    )
    new = ImportError(message, name=module)
    new.__cause__ = error
    return new
