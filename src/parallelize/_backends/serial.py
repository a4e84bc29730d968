"""The serial backend: every item in the caller's own thread, for debugging with pdb.

One worker that runs each chunk (of one item) as it is sent, so the scheduler, the error policy
and the results are those of every backend. The caller is that worker: ``initializer`` runs in
the caller, once per map, before its first item. Exceptions keep their live traceback.
``timeout`` cannot interrupt code running in the caller and is not enforced here; ``retries``
and ``on_error`` work as everywhere.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any, ClassVar

from .._options import Resolved
from .._wire.protocol import CALL_CACHE, Call, Cancelled, Done, InitFailed, Load, Output, Task
from .._worker import output
from .._worker.chunk import Status, run_chunk
from .._worker.init import run_initializer
from .base import Backend, WorkerHandle, WorkerSet


class _Caller(WorkerSet[WorkerHandle]):
    """The caller itself, as the one worker of a map."""

    depth: ClassVar[int] = 1  # an item runs only when the scheduler asks for it
    watches_timeouts: ClassVar[bool] = False
    graceful_cancel: ClassVar[bool] = False
    max_chunk = 1  # each result reaches the caller as soon as it exists

    def __init__(self, options: Resolved) -> None:
        self.size = 1
        self.workers = []
        self._ids = itertools.count(1)
        self._calls: dict[int, Call] = {}  # loaded, by id, as a worker keeps them (CALL_CACHE)
        self._events: list[tuple[WorkerHandle, Any]] = []
        self._initializer = options.initializer
        self._initargs = options.initargs

    def new_task_id(self) -> int:
        return next(self._ids)

    def spawn(self) -> WorkerHandle:
        worker = WorkerHandle(Status(), None)
        self.workers.append(worker)
        if self._initializer is not None:
            failure = run_initializer(self._initializer, self._initargs)
            if failure is not None:
                worker.ready = False  # it runs no item: the map raises the failure instead
                self._events.append((worker, InitFailed(failure)))
        return worker

    def encode(self, task: Task) -> tuple[Task, None]:
        return task, None

    def load_message(self, call: Call) -> tuple[int, Load]:
        call_id = next(self._ids)
        return call_id, Load(call_id, call)

    def send(self, worker: WorkerHandle, payload: Task | Load) -> None:
        if type(payload) is Load:  # kept as a worker keeps it, the oldest dropped first
            self._calls[payload.call_id] = payload.call
            if len(self._calls) > CALL_CACHE:
                del self._calls[next(iter(self._calls))]
            return
        assert type(payload) is Task
        call, status = self._calls[payload.call_id], worker.status

        def send_output(entries: list[Any]) -> None:
            self._events.append((worker, Output(entries)))

        begun = output.begin(call, send_output, lambda: status.index, remote=False)
        try:
            outcome = run_chunk(
                call, payload.task_id, payload.start, payload.items, payload.retries, status
            )
        finally:
            if begun is not None:
                output.end(begun)
        if outcome is None:
            self._events.append((worker, Cancelled(payload.task_id)))
            return
        values, seconds, failed, measured = outcome
        done = Done(payload.task_id, payload.start, values, seconds, failed, measured)
        self._events.append((worker, done))

    def wait(self, timeout: float | None) -> list[tuple[WorkerHandle, Any]]:
        events, self._events = self._events, []
        return events

    def kill(self, worker: WorkerHandle) -> None:
        pass  # nothing runs while the scheduler does

    def reap(self, worker: WorkerHandle) -> int | None:
        if worker in self.workers:
            self.workers.remove(worker)
        return None


class SerialBackend(Backend):
    """Runs a job item by item in the calling thread."""

    name = "serial"

    @contextlib.contextmanager
    def open(self, options: Resolved, *, private: bool = False) -> Iterator[_Caller]:
        with output.held(options.output):
            yield _Caller(options)
