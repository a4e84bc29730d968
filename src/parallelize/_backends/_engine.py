"""What the Dask and Ray backends share; none of it imports an engine.

* :func:`run_remote`, the task body: it runs :func:`~parallelize._worker.chunk.run_chunk` on a
  chunk and enforces ``timeout`` per item with a watchdog, since a task cannot be interrupted
  from outside;
* :class:`EngineSet`, the worker set the scheduler drives for an engine: each of the engine's
  slots is a worker to the scheduler, a chunk sent is a task submitted, and a task whose worker
  died is reported as ``Crashed``. An :class:`EngineRun` is all it needs of an engine. It pickles
  the items of each chunk inside :func:`~parallelize._counter.crossing`, so a ``shared_counter``
  among them moves into the engine's own shared state (the engine run's ``counters``) before it
  travels.
"""

from __future__ import annotations

import abc
import collections
import itertools
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final

from .._counter import CounterEngine, crossing
from .._errors import Failure
from .._lifecycle import engine_task, enter_worker
from .._options import Resolved
from .._retry import as_retry
from .._wire.pickling import dumps, dumps_for_engine, dumps_function, picklable_values
from .._wire.protocol import Call, Done, InitFailed, Output, Task
from .._worker import output
from .._worker.chunk import Measured, Status, run_chunk
from .._worker.init import initialize_for
from .base import Crashed, WorkerHandle, WorkerSet

# A task costs milliseconds of scheduling on an engine (against tens of microseconds on the local
# pipes), so chunks aim at 100 ms of work to keep that overhead to a few percent (as ChunkSizer's
# default does, for its own reason: it may change, this need not).
ENGINE_TARGET_SECONDS: Final = 0.1
# The tail of a map is not split into chunks of less work than this: several times a task's
# scheduling cost.
ENGINE_FLOOR_SECONDS: Final = 0.01
# A worker keeps the functions of this many maps unpickled, like the local workers' CALL_CACHE.
CALLS_KEPT: Final = 16
# The chunk id of a chunk run on an engine: above the fresh status's cancel mark of 0.
_TASK_ID: Final = 1
# The process that runs the scheduler: a task that runs in it (an in-process Dask cluster) marks
# only its own thread as a worker, never the caller's whole process.
_caller_pid: int | None = None


# -- the task body, run on an engine's worker ---------------------------------------------------


class Outcome:
    """A chunk's values and compute time, as a task returns them, with what its items printed and
    logged, and what a measured call measured.

    It pickles itself with the fast pickler, and a value that cannot be pickled becomes that item's
    ``SerializationError`` instead of failing the whole task.
    """

    __slots__ = ("failed", "measured", "nbytes", "output", "seconds", "start", "values")

    def __init__(
        self,
        start: int,
        values: list[Any],
        seconds: float,
        failed: bool,
        measured: Measured | None = None,
        output: list[Any] | None = None,
    ):
        self.start = start
        self.values = values
        self.seconds = seconds
        self.failed = failed
        self.measured = measured
        self.output = output
        self.nbytes = 0  # its pickled size, once it has crossed to the caller

    def __reduce__(self) -> tuple[Any, ...]:
        rest = (self.measured, self.output)
        try:
            blob = dumps((self.start, self.values, self.seconds, self.failed, *rest))
        except Exception:
            values = picklable_values(self.values, self.start)
            blob = dumps((self.start, values, self.seconds, True, *rest))
        return (_load_outcome, (blob,))


def _load_outcome(blob: bytes) -> Outcome:
    outcome = Outcome(*pickle.loads(blob))
    outcome.nbytes = len(blob)
    return outcome


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
    """Run the map's initializer in this process unless it ran here last (see
    :mod:`parallelize._worker.init`), then hand its globals to the map's function once per run."""
    failure, loaded.shared_run = initialize_for(loaded.call.fn, init_blob, loaded.shared_run)
    return failure


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
            return Outcome(start, [failure], 0.0, True)  # index -1: InitFailed in the caller
        items: Sequence[Any] = pickle.loads(payload)
        entries: list[Any] = []
        remote = _caller_pid != os.getpid()
        status = Status()
        begun = output.begin(call, entries.extend, lambda: status.index, remote=remote)
        try:
            if timeout is None:
                outcome = run_chunk(call, _TASK_ID, start, items, retries, status)
                assert outcome is not None  # nothing cancels a chunk on an engine
                values, seconds, _, measured = outcome
            else:
                runner = (entries, remote)
                values, seconds, measured = _run_timed(call, start, items, retries, timeout, runner)
        finally:
            if begun is not None:
                output.end(begun)
    failed = any(type(value) is Failure for value in values)
    return Outcome(start, values, seconds, failed, measured, entries or None)


class _ItemRunner:
    """A thread that runs items one at a time, so that the task can stop waiting for one."""

    def __init__(self, call: Call, output_to: tuple[list[Any], bool]):
        self.inbox: queue.SimpleQueue[tuple[int, Any] | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(
            target=self._main, args=(call, *output_to), daemon=True, name="parallelize-item"
        ).start()

    def _main(self, call: Call, entries: list[Any], remote: bool) -> None:
        """Run each item once (its value, or its Failure): the task's loop does the retrying.
        What the items print and log goes to ``entries``, as the task's own would."""
        status = Status()
        with engine_task():
            begun = output.begin(call, entries.extend, lambda: status.index, remote=remote)
            try:
                while (message := self.inbox.get()) is not None:
                    index, item = message
                    outcome = run_chunk(call, _TASK_ID, index, [item], 0, status)
                    assert outcome is not None
                    if begun is not None:  # the item's partial line, before its result
                        begun[0].close()
                    self.outbox.put(outcome[0][0])
            finally:
                if begun is not None:
                    output.end(begun)

    def abandon(self) -> None:
        """Let the thread end once its current item returns; its result is dropped."""
        self.inbox.put(None)


def _run_timed(
    call: Call,
    start: int,
    items: Sequence[Any],
    retries: int,
    timeout: float,
    output_to: tuple[list[Any], bool],
) -> tuple[list[Any], float, Measured | None]:
    """run_chunk's job, with an item past ``timeout`` failing as a TimeoutError.

    A thread cannot be killed: the overrunning item's thread is abandoned, to end on its own when
    the item returns, and a new thread goes on with the rest. An item runs at most ``retries + 1``
    times, whether its attempts raised or ran too long.
    """
    values: list[Any] = []
    began = time.perf_counter()
    slowest, slowest_seconds, retried, timeouts = start, 0.0, 0, 0
    runner = _ItemRunner(call, output_to)
    try:
        for offset, item in enumerate(items):
            index = start + offset
            value: Any = None
            attempt = time.perf_counter()
            for tries in range(retries + 1):
                retried += tries > 0
                runner.inbox.put((index, item))
                try:
                    value = runner.outbox.get(timeout=timeout)
                except queue.Empty:
                    timeouts += 1
                    runner.abandon()
                    runner = _ItemRunner(call, output_to)
                    error = TimeoutError(
                        f"the item at index {index} ran longer than the timeout of {timeout} "
                        "s; its thread on the worker was abandoned and ends when the item returns"
                    )
                    value = Failure(error, index)
                if type(value) is not Failure:
                    break
                if call.retry_on is not None and not isinstance(value.error, call.retry_on):
                    break  # not a failure this map retries
            values.append(value)
            if (seconds := time.perf_counter() - attempt) > slowest_seconds:
                slowest, slowest_seconds = index, seconds
            if type(value) is Failure and not call.keep_going:
                break
    finally:
        runner.abandon()
    measured = (slowest, slowest_seconds, retried, timeouts) if call.measured else None
    return values, time.perf_counter() - began, measured


# -- the caller's loop ----------------------------------------------------------------------------


class EngineRun(abc.ABC):
    """One map on an engine, as an :class:`EngineSet` drives it. Keys identify submitted tasks."""

    slots: int  # tasks the engine can run at once
    name: str  # the engine's name, for messages

    @abc.abstractmethod
    def submit(self, start: int, payload: bytes) -> Any:
        """Start a task running ``run_remote`` on the chunk; its key."""

    @abc.abstractmethod
    def wait(self, block: bool) -> list[tuple[Any, Outcome | BaseException]]:
        """The tasks that finished, each one's key and outcome or the error that ended it;
        with ``block``, wait until there is one."""

    @abc.abstractmethod
    def crashed(self, error: BaseException) -> bool:
        """Whether ``error`` says the worker running the task died (after the engine's retries)."""

    @abc.abstractmethod
    def cancel(self, keys: list[Any]) -> None:
        """Stop caring about these tasks; cancel them when the engine can do that safely."""


# What an engine backend gives an EngineSet: from the map's pickled Call (with its initializer)
# and the tasks' name, the run on its engine (starting or reaching the cluster).
Connect = Callable[[bytes, str], EngineRun]


class EngineSet(WorkerSet[WorkerHandle]):
    """The scheduler's workers on an engine: one per task slot of the cluster.

    The engine places tasks itself; the scheduler only keeps ``depth`` tasks per slot in flight.
    Items are timed out in the task (a task cannot be stopped from outside), and a cancel drops
    the tasks at once.
    """

    watches_timeouts: ClassVar[bool] = False
    graceful_cancel: ClassVar[bool] = False
    target_seconds = ENGINE_TARGET_SECONDS
    floor_seconds = ENGINE_FLOOR_SECONDS

    def __init__(self, options: Resolved, counters: CounterEngine, connect: Connect):
        global _caller_pid
        _caller_pid = os.getpid()  # a task run in this process leaves it a caller
        self.size = 1  # until the run says how many slots the cluster has
        self.workers = []
        self._options = options
        self._counters = counters
        self._connect = connect
        self._run: EngineRun | None = None
        self._ids = itertools.count(1)
        self._owners: dict[Any, tuple[WorkerHandle, int, int]] = {}  # key -> worker, task, start
        self._keys: dict[int, Any] = {}  # task id -> key

    def new_task_id(self) -> int:
        return next(self._ids)

    def load_message(self, call: Call) -> tuple[int, None]:
        """Pickle the map's call and initializer, and reach the engine: every task carries them
        (or a reference to them), so no message loads a worker."""
        blob = encode_call(call, self._options, self._counters)
        self._run = run = self._connect(blob, task_name(call.fn))
        self.size = max(1, run.slots)
        self.engine_name = run.name
        return 0, None

    def spawn(self) -> WorkerHandle:
        worker = WorkerHandle(Status(), None)
        self.workers.append(worker)
        return worker

    def encode(self, task: Task) -> tuple[tuple[int, int, bytes], None]:
        """The chunk's items pickled for the engine (the task's retries are the map's, which the
        run passes to each task)."""
        with crossing(self._counters):
            payload = dumps_for_engine(task.items)
        self.bytes_pickled += len(payload)
        return (task.task_id, task.start, payload), None

    def send(self, worker: WorkerHandle, payload: tuple[int, int, bytes]) -> None:
        assert self._run is not None
        task_id, start, blob = payload
        key = self._run.submit(start, blob)
        self._owners[key] = (worker, task_id, start)
        self._keys[task_id] = key

    def wait(self, timeout: float | None) -> list[tuple[WorkerHandle, Any]]:
        if self._run is None or not self._owners:
            return []
        events: list[tuple[WorkerHandle, Any]] = []
        # A timeout of 0 asks for what is done already; the scheduler waits without a timeout
        # otherwise, since items time out inside the tasks.
        for key, result in self._run.wait(block=timeout != 0):
            owner = self._owners.pop(key, None)
            if owner is None:  # a task of a worker cancelled meanwhile
                continue
            worker, task_id, start = owner
            del self._keys[task_id]
            if isinstance(result, Outcome) and result.output:
                events.append((worker, Output(result.output)))
            events.append((worker, self._event(task_id, start, result)))
        return events

    def _event(self, task_id: int, start: int, result: Outcome | BaseException) -> Any:
        assert self._run is not None
        if isinstance(result, Outcome):
            first = result.values[0] if result.values else None
            if result.failed and type(first) is Failure and first.index < 0:
                return InitFailed(first)  # the initializer raised: as on processes
            self.reply_bytes += result.nbytes
            self.bytes_pickled += result.nbytes
            values, seconds, failed = result.values, result.seconds, result.failed
            return Done(task_id, start, values, seconds, failed, result.measured)
        if self._run.crashed(result):
            return Crashed(task_id, result)
        raise result

    def kill(self, worker: WorkerHandle) -> None:
        self.kill_all([worker])

    def kill_all(self, workers: list[WorkerHandle]) -> None:
        """Drop the tasks of these slots, with one cancel for them all."""
        ids = [task_id for worker in workers for task_id in worker.queue]
        keys = [self._keys.pop(task_id) for task_id in ids if task_id in self._keys]
        for key in keys:
            del self._owners[key]
        if keys and self._run is not None:
            self._run.cancel(keys)

    def reap(self, worker: WorkerHandle) -> int | None:
        if worker in self.workers:
            self.workers.remove(worker)
        return None


def retry_counts(options: Resolved) -> tuple[int, int]:
    """The retries a task makes of a raised exception itself (none when they wait: the
    scheduler makes those), and the retries the engine makes of a task whose worker died (none
    unless ``Retry(on=...)`` names crashes)."""
    policy = as_retry(options.retries)
    in_task = 0 if policy.backoff else policy.times
    if policy.on is None:
        return in_task, policy.times
    from .. import _errors  # WorkerCrashedError is made on first use

    return in_task, policy.times if policy.covers(_errors.WorkerCrashedError) else 0


def encode_call(call: Call, options: Resolved, counters: CounterEngine) -> bytes:
    """The map's Call and its pickled initializer (or None), pickled with the user's function by
    value; SerializationError if it can't.

    A ``shared_counter`` in the function (a closure, a keyword argument) moves into ``counters``.
    """
    with crossing(counters):
        init_blob = None
        if options.initializer is not None:
            init = (options.initializer, options.initargs)
            init_blob = dumps_function(init, options.initializer)
        return dumps_function((call, init_blob), call.fn)


def task_name(fn: Callable[..., Any]) -> str:
    """A name for the map's tasks in the engine's dashboard."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return f"parallelize-{name}"
