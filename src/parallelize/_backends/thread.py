"""The thread backend: worker threads in the caller's process, for I/O-bound work and for code that
releases the GIL (NumPy, hashing, compression); on a free-threaded Python, for everything.

Items and results are passed as they are, never pickled. Threads are started per map (a thread
starts in microseconds) and end with it, so no thread lingers to make a later fork unsafe. A thread
cannot be killed: an item past its ``timeout`` raises ``TimeoutError`` in the caller and its thread
is abandoned, to end on its own when the item returns.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Generator
from typing import Any

from .._execute import CANCEL, Call, fresh_status
from .._worker import INIT_FAILED, LOAD, run_initializer, serve
from ._dispatch import Dispatcher, WorkerHandle, WorkerSet
from .base import Backend, Batch, Job


class _Thread(WorkerHandle):
    __slots__ = ("inbox",)

    def __init__(self) -> None:
        super().__init__(fresh_status(), None)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()


class ThreadPool(WorkerSet[_Thread]):
    """The threads of one map."""

    stopped = "its thread was abandoned, to end when the item returns, and replaced"

    def __init__(self, job: Job):
        self.size = job.options.workers
        self.workers = []
        self._initializer = job.options.initializer
        self._initargs = job.options.initargs
        self._results: queue.SimpleQueue[tuple[_Thread, Any]] = queue.SimpleQueue()
        self._ids = itertools.count(1)

    def new_task_id(self) -> int:
        return next(self._ids)

    def spawn(self) -> _Thread:
        worker = _Thread()
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
            failure = run_initializer(self._initializer, self._initargs)
            if failure is not None:
                self._results.put((worker, (INIT_FAILED, failure)))
                return

        def send(message: Any) -> None:
            self._results.put((worker, message))

        serve(worker.inbox.get, send, worker.status, None)

    def encode(self, message: tuple[Any, ...]) -> tuple[tuple[Any, ...], None]:
        return message, None

    def load_message(self, call: Call) -> tuple[int, tuple[Any, ...]]:
        call_id = self.new_task_id()
        return call_id, (LOAD, call_id, call)

    def send(self, worker: _Thread, payload: Any) -> None:
        worker.inbox.put(payload)

    def wait(self, timeout: float | None) -> list[tuple[_Thread, Any]]:
        try:
            events = [self._results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._results.get_nowait())
            except queue.Empty:
                break
        # Replies from abandoned threads (timed out, or cancelled) are no longer wanted.
        return [(worker, event) for worker, event in events if worker in self.workers]

    def kill(self, worker: _Thread) -> None:
        worker.status[CANCEL] = 1 << 62  # it skips everything still queued once its item returns
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

    def run(self, job: Job) -> Generator[Batch, None, None]:
        pool = ThreadPool(job)
        try:
            yield from Dispatcher(pool, job, pool.new_task_id).run()
        finally:
            pool.close()
