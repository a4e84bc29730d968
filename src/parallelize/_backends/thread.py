"""The thread backend: worker threads in the caller's process, for I/O-bound work and for code that
releases the GIL (NumPy, hashing, compression); on a free-threaded Python, for everything.

Items and results are passed as they are, never pickled. Threads are started per map (a thread
starts in microseconds) and end with it, so no thread lingers to make a later fork unsafe. A thread
cannot be killed: an item past its ``timeout`` raises ``TimeoutError`` in the caller and its thread
is abandoned, to end on its own when the item returns.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from .._options import Resolved
from .._wire.protocol import READY, Call, Done, InitFailed, Load, Ready, Task
from .._worker import output
from .._worker.chunk import Status
from .._worker.init import run_initializer
from .._worker.loop import serve
from .base import Backend, WorkerHandle, WorkerSet

# Abandoned threads skip every chunk still queued once their item returns.
_SKIP_ALL = 1 << 62


class _Thread(WorkerHandle):
    __slots__ = ("inbox",)

    def __init__(self, *, ready: bool) -> None:
        super().__init__(Status(), None, ready=ready)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()


class ThreadPool(WorkerSet[_Thread]):
    """The threads of one map."""

    stopped: ClassVar[str] = "its thread was abandoned, to end when the item returns, and replaced"

    def __init__(self, options: Resolved):
        self.size = options.workers
        self.workers = []
        self._initializer = options.initializer
        self._initargs = options.initargs
        # Replies, by worker; None for a wake().
        self._results: queue.SimpleQueue[tuple[_Thread | None, Any]] = queue.SimpleQueue()
        self._ids = itertools.count(1)

    def new_task_id(self) -> int:
        return next(self._ids)

    def spawn(self) -> _Thread:
        worker = _Thread(ready=self._initializer is None)  # else once its initializer returned
        threading.Thread(
            target=self._main,
            args=(worker,),
            daemon=True,
            name=f"parallelize-thread-{len(self.workers)}",
        ).start()
        self.workers.append(worker)
        return worker

    def _main(self, worker: _Thread) -> None:
        if self._initializer is not None:
            worker.status.begin_initializer()
            failure = run_initializer(self._initializer, self._initargs)
            if failure is not None:
                self._results.put((worker, InitFailed(failure)))
                return
            worker.status.end_initializer()
            self._results.put((worker, READY))

        def send(message: Any) -> None:
            self._results.put((worker, message))

        serve(worker.inbox.get, send, worker.status, None)

    def encode(self, task: Task) -> tuple[Task, None]:
        return task, None

    def load_message(self, call: Call) -> tuple[int, Load]:
        call_id = self.new_task_id()
        return call_id, Load(call_id, call)

    def send(self, worker: _Thread, payload: Any) -> None:
        worker.inbox.put(payload)

    def wait(self, timeout: float | None) -> list[tuple[_Thread, Any]]:
        try:
            received = [self._results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                received.append(self._results.get_nowait())
            except queue.Empty:
                break
        # Replies from abandoned threads (timed out, or cancelled) are no longer wanted.
        events = [(w, event) for w, event in received if w is not None and w in self.workers]
        for worker, event in events:
            kind = type(event)
            if kind is Ready:  # whoever reads the events, a Ready is never lost
                worker.ready = True
            elif kind is Done and event.values:  # a shallow estimate: the first result's size
                self.reply_bytes += sys.getsizeof(event.values[0]) * len(event.values)
        return events

    def wake(self) -> None:
        self._results.put((None, None))  # from no worker: wait() drops it

    def kill(self, worker: _Thread) -> None:
        worker.status.cancel_up_to(_SKIP_ALL)
        worker.inbox.put(None)

    def reap(self, worker: _Thread) -> int | None:
        if worker in self.workers:
            self.workers.remove(worker)
        return None

    def close(self) -> None:
        for worker in self.workers:
            worker.inbox.put(None)
        self.workers.clear()


class ThreadBackend(Backend):
    """Runs each job on threads of its own."""

    name = "thread"

    @contextlib.contextmanager
    def open(self, options: Resolved, *, private: bool = False) -> Iterator[ThreadPool]:
        pool = ThreadPool(options)
        try:
            with output.held(options.output):
                yield pool
        finally:
            pool.close()
