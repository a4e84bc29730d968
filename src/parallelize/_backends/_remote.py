"""What the Dask and Ray backends share; none of it imports an engine.

* :func:`run_remote`, the task body: it runs :func:`~parallelize._execute.run_chunk` on a chunk
  and enforces ``timeout`` per item with a watchdog, since a task cannot be interrupted from
  outside;
* :class:`Driver`, the caller's loop: it reads the input lazily, sizes chunks, keeps a bounded
  number of tasks in flight and turns results into batches; an :class:`EngineRun` is all it needs
  of an engine. It pickles the items of each chunk inside
  :func:`~parallelize._counter.crossing`, so a ``shared_counter`` among them moves into the
  engine's own shared state (the engine run's ``counters``) before it travels.
"""

from __future__ import annotations

import abc
import collections
import os
import pickle
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

from .._chunking import ChunkSizer
from .._counter import CounterEngine, crossing
from .._crash import WorkerCrashedError
from .._execute import Call, fresh_status, run_chunk
from .._serialization import (
    Failure,
    assigned_globals,
    dumps,
    dumps_for_engine,
    dumps_function,
    find_unpicklable,
    share_globals,
    unpicklable_argument,
    unpicklable_error,
)
from .._worker import engine_task, enter_worker, run_initializer
from .base import Batch, Job

# Tasks in flight per engine worker slot: one running and one waiting, so no slot idles while a
# result travels home and the next chunk travels out.
DEPTH: Final = 2
# Ordered streaming: how many chunks per slot may run ahead of the oldest unfinished one, which
# bounds the results buffered for reordering behind one slow item (as in the local dispatcher).
WINDOW: Final = 4
# A task costs about 1-3 ms of scheduling on an engine (against ~50 us on the local pipes), so
# chunks aim at 100 ms of work to keep that overhead near 1-3% (as ChunkSizer's default does,
# for its own reason: it may change, this need not).
ENGINE_TARGET_SECONDS: Final = 0.1
# The tail of a map is not split into chunks of less work than this: 10 ms against 1-3 ms of
# scheduling per task.
ENGINE_FLOOR_SECONDS: Final = 0.01
# A worker keeps the functions of this many maps unpickled, like the local workers' CALL_CACHE.
CALLS_KEPT: Final = 16
# Status slot of a chunk run on an engine: task 1, no item yet, never cancelled (CANCEL 0 < 1).
_TASK_ID: Final = 1
# The process that runs a Driver: a task that runs in it (an in-process Dask cluster) marks only
# its own thread as a worker, never the caller's whole process.
_caller_pid: int | None = None


# -- the task body, run on an engine's worker ---------------------------------------------------


class Outcome:
    """A chunk's values and compute time, as a task returns them.

    It pickles itself with the fast pickler, and a value that cannot be pickled becomes that item's
    ``SerializationError`` instead of failing the whole task.
    """

    __slots__ = ("failed", "seconds", "start", "values")

    def __init__(self, start: int, values: list[Any], seconds: float, failed: bool):
        self.start = start
        self.values = values
        self.seconds = seconds
        self.failed = failed

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            blob = dumps((self.start, self.values, self.seconds, self.failed))
        except Exception:
            values = list(self.values)
            while (found := find_unpicklable(values, self.start)) is not None:
                index, exc = found
                offset = index - self.start
                values[offset] = Failure.capture(
                    unpicklable_error("result", index, values[offset], exc), index
                )
            blob = dumps((self.start, values, self.seconds, True))
        return (_load_outcome, (blob,))


def _load_outcome(blob: bytes) -> Outcome:
    return Outcome(*pickle.loads(blob))


class _Loaded:
    """A map's Call and pickled initializer in a worker process, and which run of the initializer
    its function last got the globals of."""

    __slots__ = ("call", "init_blob", "shared_run")

    def __init__(self, call: Call, init_blob: bytes | None):
        self.call = call
        self.init_blob = init_blob
        self.shared_run = 0


_calls: collections.OrderedDict[bytes, _Loaded] = collections.OrderedDict()
_calls_lock = threading.Lock()


class _Initialized:
    """The initializer this worker process ran last (its pickle), what it assigned in __main__
    (see _serialization.assigned_globals), and how many runs there have been. Like a process
    pool, which has one initializer, a process runs a map's initializer again when the last one
    run was another (or the same with other arguments): it may have set the same globals."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while one runs: once, even with tasks in threads
        self.blob: bytes | None = None
        self.assigned: dict[str, Any] = {}
        self.run = 0


_init = _Initialized()


def _load_call(blob: bytes) -> _Loaded:
    """The map's Call and its pickled initializer, unpickled once per worker process (bytes cache
    their own hash)."""
    with _calls_lock:
        cached = _calls.get(blob)
        if cached is not None:
            _calls.move_to_end(blob)
            return cached
    loaded = _Loaded(*pickle.loads(blob))
    with _calls_lock:
        _calls[blob] = loaded
        if len(_calls) > CALLS_KEPT:
            _calls.popitem(last=False)
    return loaded


def _initialize(loaded: _Loaded, init_blob: bytes) -> Failure | None:
    """Run the map's initializer unless it is the one this process ran last: before the chunk,
    as a process worker does at start. Its failure, if it raised."""
    with _init.lock:
        if _init.blob != init_blob:
            initializer, initargs = pickle.loads(init_blob)
            failure = run_initializer(initializer, initargs)
            if failure is not None:
                _init.blob = None
                return failure
            _init.blob, _init.assigned = init_blob, assigned_globals(initializer)
            _init.run += 1
        if loaded.shared_run != _init.run:  # once per run: the function may rebind them after
            share_globals(loaded.call.fn, _init.assigned)
            loaded.shared_run = _init.run
    return None


def run_remote(
    blob: bytes, start: int, payload: bytes, retries: int, timeout: float | None
) -> Outcome:
    """Run one chunk (items pickled in ``payload``, input indices from ``start``) in a task.

    The engine's worker process counts as one of ours from here on: a map nested in the user's
    function runs serially in it, instead of starting a process pool inside a (daemonic) worker.
    When the engine runs the task in the caller's own process (Dask's ``processes=False``), only
    this thread does, and only while the task runs.
    """
    if _caller_pid != os.getpid():
        enter_worker()
    with engine_task():
        loaded = _load_call(blob)
        call, init_blob = loaded.call, loaded.init_blob
        if init_blob is not None and (failure := _initialize(loaded, init_blob)) is not None:
            return Outcome(start, [failure], 0.0, True)  # index -1: the driver raises it
        items: Sequence[Any] = pickle.loads(payload)
        if timeout is None:
            outcome = run_chunk(call, _TASK_ID, start, items, retries, fresh_status(_TASK_ID))
            assert outcome is not None  # nothing cancels a chunk on an engine
            values, seconds, _ = outcome
        else:
            values, seconds = _run_timed(call, start, items, retries, timeout)
    return Outcome(start, values, seconds, any(type(value) is Failure for value in values))


class _ItemRunner:
    """A thread that runs items one at a time, so that the task can stop waiting for one."""

    def __init__(self, call: Call):
        self.inbox: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(
            target=self._main, args=(call,), daemon=True, name="parallelize-item"
        ).start()

    def _main(self, call: Call) -> None:
        """Run each item once (its value, or its Failure): the task's loop does the retrying."""
        status = fresh_status(_TASK_ID)
        with engine_task():
            while (message := self.inbox.get()) is not None:
                index, item = message
                outcome = run_chunk(call, _TASK_ID, index, [item], 0, status)
                assert outcome is not None
                self.outbox.put(outcome[0][0])

    def abandon(self) -> None:
        """Let the thread end once its current item returns; its result is dropped."""
        self.inbox.put(None)


def _run_timed(
    call: Call, start: int, items: Sequence[Any], retries: int, timeout: float
) -> tuple[list[Any], float]:
    """run_chunk's job, with an item past ``timeout`` failing as a TimeoutError.

    A thread cannot be killed: the overrunning item's thread is abandoned, to end on its own when
    the item returns, and a new thread goes on with the rest. An item runs at most ``retries + 1``
    times, whether its attempts raised or ran too long.
    """
    values: list[Any] = []
    began = time.perf_counter()
    runner = _ItemRunner(call)
    try:
        for offset, item in enumerate(items):
            index = start + offset
            value: Any = None
            for _ in range(retries + 1):
                runner.inbox.put((index, item))
                try:
                    value = runner.outbox.get(timeout=timeout)
                except queue.Empty:
                    runner.abandon()
                    runner = _ItemRunner(call)
                    error = TimeoutError(
                        f"the item at index {index} ran longer than the timeout of {timeout} "
                        "s; its thread on the worker was abandoned and ends when the item returns"
                    )
                    value = Failure(error, index)
                if type(value) is not Failure:
                    break
            values.append(value)
            if type(value) is Failure and not call.keep_going:
                break
    finally:
        runner.abandon()
    return values, time.perf_counter() - began


# -- the caller's loop ----------------------------------------------------------------------------


class EngineRun(abc.ABC):
    """One map on an engine, as the :class:`Driver` drives it. Keys identify submitted tasks."""

    slots: int  # tasks the engine can run at once
    name: str  # the engine's name, for messages
    counters: CounterEngine  # where a shared_counter among the items moves before it travels

    @abc.abstractmethod
    def submit(self, start: int, payload: bytes) -> Any:
        """Start a task running ``run_remote`` on the chunk; its key."""

    @abc.abstractmethod
    def wait(self) -> list[tuple[Any, Outcome | BaseException]]:
        """Block until some tasks finish; each one's key and outcome, or the error that ended it."""

    @abc.abstractmethod
    def crashed(self, error: BaseException) -> bool:
        """Whether ``error`` says the worker running the task died (after the engine's retries)."""

    @abc.abstractmethod
    def cancel(self, keys: list[Any]) -> None:
        """Stop caring about these tasks; cancel them when the engine can do that safely."""


class _Chunk:
    __slots__ = ("items", "start", "suspect")

    def __init__(self, start: int, items: Sequence[Any], *, suspect: bool = False):
        self.start = start
        self.items = items
        self.suspect = suspect  # its worker died once: it runs again alone, to be sure it was it


class Driver:
    """Runs one job on an engine; iterate :meth:`run` for the batches in completion order."""

    def __init__(self, engine: EngineRun, job: Job):
        global _caller_pid
        _caller_pid = os.getpid()
        self._engine = engine
        self._job = job
        workers = max(1, engine.slots)
        self._slots = workers * DEPTH
        self._workers = workers
        self._sizer = ChunkSizer(
            workers=workers,
            fixed=job.options.chunksize,
            target=ENGINE_TARGET_SECONDS,
            floor=ENGINE_FLOOR_SECONDS,
        )
        self._bounded = job.options.ordered and job.stream
        self._inflight: dict[Any, _Chunk] = {}
        self._retry: collections.deque[_Chunk] = collections.deque()
        self._ready: list[Batch] = []
        self._next_index = 0
        self._exhausted = False
        self._alone = False  # a suspect chunk is running: nothing else is submitted meanwhile

    def run(self) -> Iterator[Batch]:
        try:
            while True:
                self._fill()
                if not self._inflight and not self._ready:
                    return
                if self._inflight and not self._ready:
                    for key, result in self._engine.wait():
                        self._handle(key, result)
                ready, self._ready = self._ready, []
                yield from ready
        except BaseException:
            self._engine.cancel(list(self._inflight))
            self._inflight.clear()
            raise

    def _fill(self) -> None:
        while len(self._inflight) < self._slots and not self._alone:
            if self._retry and self._retry[0].suspect:
                if not self._inflight:
                    self._alone = True
                    self._submit(self._retry.popleft())
                return
            chunk = self._next_chunk()
            if chunk is None:
                return
            self._submit(chunk)

    def _next_chunk(self) -> _Chunk | None:
        if self._retry:
            return self._retry.popleft()
        if self._exhausted:
            return None
        if self._bounded and self._inflight and self._window_full():
            return None
        total = self._job.total
        size = self._sizer.next_size(None if total is None else total - self._next_index)
        items = self._job.take(size)
        self._exhausted = len(items) < size
        if not items:
            return None
        chunk = _Chunk(self._next_index, items)
        self._next_index += len(items)
        return chunk

    def _window_full(self) -> bool:
        oldest = min(chunk.start for chunk in self._inflight.values())
        if self._retry:
            oldest = min(oldest, *(chunk.start for chunk in self._retry))
        limit = self._sizer.next_size(None) * self._workers * WINDOW
        return self._next_index - oldest >= limit

    def _submit(self, chunk: _Chunk) -> None:
        try:
            with crossing(self._engine.counters):
                payload = dumps_for_engine(chunk.items)
        except Exception as exc:
            self._split_unpicklable(chunk, exc)
            return
        self._inflight[self._engine.submit(chunk.start, payload)] = chunk

    def _split_unpicklable(self, chunk: _Chunk, error: Exception) -> None:
        """An argument could not be pickled: that item fails, the others go on."""
        offset, failure = unpicklable_argument(chunk.items, chunk.start, error)
        parts = [
            _Chunk(chunk.start, chunk.items[:offset]),
            _Chunk(failure.index + 1, chunk.items[offset + 1 :]),
        ]
        self._retry.extendleft(part for part in reversed(parts) if part.items)
        self._ready.append(Batch(failure.index, [failure], True))

    def _handle(self, key: Any, result: Outcome | BaseException) -> None:
        chunk = self._inflight.pop(key)
        self._alone = False
        if isinstance(result, Outcome):
            if result.failed and type(result.values[0]) is Failure and result.values[0].index < 0:
                raise result.values[0].exception()  # the initializer raised: as on processes
            self._sizer.record(items=len(result.values), seconds=result.seconds)
            self._ready.append(Batch(chunk.start, result.values, result.failed))
            return
        if not self._engine.crashed(result):
            raise result
        # The engine does not say which item killed its worker, and may blame every task that
        # was on it: run the items one by one, and a single item that crashed once more alone,
        # so that only the item that kills its worker fails.
        if len(chunk.items) > 1:
            singles = [_Chunk(chunk.start + i, [item]) for i, item in enumerate(chunk.items)]
            self._retry.extendleft(reversed(singles))
            return
        if not chunk.suspect:
            self._retry.appendleft(_Chunk(chunk.start, chunk.items, suspect=True))
            return
        error = WorkerCrashedError(
            f"a {self._engine.name} worker died while running the item at index {chunk.start} "
            f"(after the engine's own retries): {result}",
            index=chunk.start,
        )
        error.__cause__ = result
        self._ready.append(Batch(chunk.start, [Failure(error, chunk.start)], True))


def encode_call(job: Job, counters: CounterEngine) -> bytes:
    """The job's Call and its pickled initializer (or None), pickled with the user's function by
    value; SerializationError if it can't.

    A ``shared_counter`` in the function (a closure, a keyword argument) moves into ``counters``.
    """
    options = job.options
    call = Call(job.fn, job.star, options.on_error == "return", timed=False)
    with crossing(counters):
        init_blob = None
        if options.initializer is not None:
            init = (options.initializer, options.initargs)
            init_blob = dumps_function(init, options.initializer)
        return dumps_function((call, init_blob), job.fn)


def task_name(job: Job) -> str:
    """A name for the map's tasks in the engine's dashboard."""
    name = getattr(job.fn, "__name__", None) or type(job.fn).__name__
    return f"parallelize-{name}"
