"""The scheduler: one class runs every map, on every backend.

It runs in the caller's thread, inside the generator that yields the map's batches: no scheduling
thread to start, race with or leak. It drives a :class:`~parallelize._backends.base.WorkerSet`
(local processes, threads, the caller itself, or the tasks of a Dask or Ray cluster): it hands out
chunks (adaptive size, a bounded number queued per worker, the input read lazily and, when
streaming, never more than a bound ahead of the consumer), waits for what the workers report, and
turns faults into per-item results:

* an argument that does not pickle fails its item alone; the rest of its chunk goes on;
* a worker that dies takes only the item it was running with it (its index is read from the
  worker's status slot); the rest of its chunk and its queued chunks run again elsewhere. An
  engine that cannot say which item killed its worker has the chunk's items run one by one, and
  one that kills its worker once more, alone, fails;
* an item past its ``timeout`` has its worker stopped and is treated like a crash, as a
  ``TimeoutError`` (engines time items out in the task itself);
* a crashed or timed-out item is run again up to ``retries`` times before its error counts;
* closing the generator cancels what is queued and gives running items a moment to finish, then
  stops their workers; Ctrl-C stops busy workers at once.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import signal
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic

from .._backends.base import Crashed, Dead, Unreadable, W, WorkerSet
from .._chunking import ChunkSizer
from .._errors import Failure, SerializationError, crash_error
from .._retry import as_retry
from .._wire.pickling import unpicklable_argument
from .._wire.protocol import CALL_CACHE, Call, Cancelled, Done, InitFailed, Output, Ready, Task
from .._worker.output import INHERIT, RECORD, caller_levels
from .feed import Feed
from .job import Batch, Job

if TYPE_CHECKING:
    from .._errors import WorkerCrashedError
    from .._options import Resolved
    from .stats import Recorder

# Streaming: how many chunks per worker the map may hold ahead of its consumer (queued, running,
# or finished and waiting behind a slower item for their turn), by default.
WINDOW: Final = 4
# Streaming with automatic chunks: the largest chunk, so that the default bound on what is read
# ahead stays a few thousand items per worker (docs/benchmarks.md measures its cost).
STREAM_CHUNK: Final = 4096
# After a cancel, how long running items may take to finish before their workers are stopped.
CANCEL_GRACE: Final = 0.25
# A chunk whose worker died before starting it is sent again at most this many times.
MAX_UNSTARTED: Final = 3
# Shortest wait when polling for timeouts, so a deadline just passed does not spin.
MIN_POLL: Final = 0.001
# Longest wait for a retiring worker's exit (which normally wakes the scheduler by itself).
RETIRE_POLL: Final = 0.1
# A live job's functions whose load messages are kept (a Pool's maps each have one), and the
# most bytes those messages may hold (a function's large data among them).
CALLS_KEPT: Final = 256
CALL_BYTES_KEPT: Final = 1 << 28


def ahead_items(options: Resolved, workers: int) -> int:
    """How many items a stream may read ahead of its consumer: ``max_ahead``, or WINDOW chunks
    per worker (of ``chunksize``, or of at most STREAM_CHUNK items)."""
    return options.max_ahead or workers * WINDOW * (options.chunksize or STREAM_CHUNK)


class _Task:
    """A chunk the scheduler owns: sent, waiting to be sent again, or split."""

    __slots__ = (
        "call",
        "id",
        "items",
        "lease",
        "retries",
        "sent_at",
        "start",
        "suspect",
        "unstarted",
    )

    def __init__(
        self,
        start: int,
        items: Sequence[Any],
        retries: int,
        call: _Loaded,
        unstarted: int = 0,
        *,
        suspect: bool = False,
    ):
        self.id = 0  # assigned when sent
        self.lease: object = None  # what the worker set holds for it while in flight
        self.sent_at = 0.0  # when it was sent (measured maps only)
        self.start = start
        self.items = items
        self.retries = retries
        self.call = call  # the function its items run through
        self.unstarted = unstarted  # times its worker died before it started
        self.suspect = suspect  # its engine worker died once: it runs again alone, to be sure

    def covers(self, index: int) -> bool:
        return self.start <= index < self.start + len(self.items)

    def part(
        self, start: int, items: Sequence[Any], retries: int, unstarted: int = 0, **kw: bool
    ) -> _Task:
        """Some of its items, as a chunk of their own, through the same function."""
        return _Task(start, items, retries, self.call, unstarted, **kw)


def _weight(load: object) -> int:
    """The bytes a load message holds: its pickle, or the shared data it keeps alive
    (``nbytes``); nothing for a message that is the loaded object itself."""
    if isinstance(load, bytes):
        return len(load)
    return int(getattr(load, "nbytes", 0))


class _Loaded:
    """A function as the worker set sends it: its id, and the message that loads it."""

    __slots__ = ("id", "load")

    def __init__(self, call_id: int, load: Any):
        self.id = call_id
        self.load = load


class Halted(BaseException):
    """Raised in a live job's scheduler when its feed is halted: stop every worker now."""


class Scheduler(Generic[W]):
    """Runs one job on a worker set; iterate :meth:`run` for the batches in completion order."""

    def __init__(
        self,
        pool: WorkerSet[W],
        job: Job,
        feed: Feed | None = None,
        *,
        sink: Callable[[list[Any]], None] | None = None,
        recorder: Recorder | None = None,
    ):
        options = job.options
        self._pool = pool
        self._job = job
        watched = options.timeout is not None and pool.watches_timeouts
        self._returns = options.on_error != "raise"  # the worker finishes a chunk that failed
        # Retries: how many, of which failures; with a backoff, the scheduler makes them (a
        # worker would sleep), holding each failed item back until its time.
        self._policy = as_retry(options.retries)
        self._held = self._policy.backoff > 0
        self._delayed: list[tuple[float, int, _Task]] = []  # (due, order, chunk) heap
        self._delays = itertools.count()
        self._watched = watched
        # What becomes of the workers' output, and the caller's logging levels now (a worker
        # applies them when forwarding; they tell it that the caller uses logging at all).
        self._output = options.output
        self._levels = caller_levels() if options.output != INHERIT else None
        self._sink = sink
        self._recorder = recorder  # measures the map for its stats (None: not wanted)
        # A live job's input: calls put by other threads while it runs, each with its own
        # function (``job.fn`` and ``job.items`` are then unused).
        self._feed = feed
        self._loaded: dict[int, tuple[Call, _Loaded]] = {}  # a live job's functions, by id()
        self._loaded_bytes = 0  # what their load messages hold
        if self._feed is None:
            self._call = _Loaded(*pool.load_message(self._full_call(job.fn, job.star)))
        self._sizer = ChunkSizer(
            workers=pool.size,
            fixed=options.chunksize,
            target=pool.target_seconds,
            floor=pool.floor_seconds,
        )
        self._timeout_ns = int(options.timeout * 1e9) if watched and options.timeout else None
        self._stream = job.stream
        if job.stream:  # the read-ahead bound, in items, before the results' size is known
            self._ahead_items = ahead_items(options, pool.size)
            self._ahead_bytes = options.max_ahead_bytes
            self._bytes_per_item = 0.0
            self._measured = (0, pool.reply_bytes)  # (items, bytes) of the replies so far
        self._received = 0  # items whose results came back
        self._tasks: dict[int, _Task] = {}
        self._retry: collections.deque[_Task] = collections.deque()
        self._lookahead: Sequence[Any] = ()
        self._next_index = 0
        self._exhausted = False
        self._ready: list[Batch] = []  # results and failures not yet yielded
        self._boot_failures = 0  # workers in a row that died before they were ready
        self._alone = False  # a suspect chunk runs: nothing else is sent meanwhile

    # -- the loop --

    def run(self) -> Generator[Batch, None, None]:
        try:
            while True:
                if self._feed is not None and self._feed.halted:
                    raise Halted
                self._fill()
                # With work left but no worker free to take it (retiring ones still exiting),
                # wait for their exit like for any other event.
                if self._tasks or (not self._ready and self._has_work()):
                    timeout = 0.0 if self._ready else self._poll_timeout()
                    began = time.monotonic()
                    events = self._pool.wait(timeout)
                    for worker, event in events:
                        self._handle(worker, event)
                    if not events and not self._tasks and self._delayed and timeout:
                        # Only held retries are left, and a set with nothing in flight may
                        # return at once (an engine's, the caller's): wait for their time.
                        time.sleep(max(0.0, timeout - (time.monotonic() - began)))
                    if self._stream:
                        self._measure()
                    if self._timeout_ns is not None:
                        self._expire()
                elif not self._ready:
                    if self._feed is not None and self._feed.wait():
                        continue  # more input, or a halt
                    if self._job.input_error is not None:  # after every result before it
                        raise self._job.input_error
                    return
                ready, self._ready = self._ready, []
                yield from ready
        except BaseException as exc:
            now = isinstance(exc, KeyboardInterrupt | Halted)
            if now and isinstance(exc.__context__, KeyboardInterrupt):
                exc.__context__ = None  # two Ctrl-C at once: one traceback says it all
            try:
                self._cancel(now=now)
            except KeyboardInterrupt:  # another Ctrl-C while cleaning up: no more patience
                self._abort()
            raise

    def _handle(self, worker: W, event: Any) -> None:
        kind = type(event)
        if kind is Done:
            worker.queue.remove(event.task_id)
            task = self._forget(event.task_id)
            if self._recorder is not None:
                count, measured = len(event.values), event.measured
                self._recorder.done(worker, task.sent_at, event.seconds, measured, count)
            self._sizer.record(items=len(event.values), seconds=event.seconds)
            self._received += len(event.values)
            if self._held and event.failed:
                self._hold_failures(task, event.values)
            else:
                self._ready.append(Batch(event.start, event.values, event.failed))
            if event.retiring:
                self._retire(worker, task, len(event.values))
        elif kind is Output:
            if self._sink is not None:
                if self._feed is not None:  # records name the item's place in its own call
                    for kind, payload in event.entries:
                        if kind == RECORD and payload.get("item_index", -1) >= 0:
                            payload["item_index"] = self._shown(payload["item_index"])
                self._sink(event.entries)
        elif kind is Cancelled:
            worker.queue.remove(event.task_id)
            self._forget(event.task_id)
        elif kind is Dead:
            self._lost(worker, None)
        elif kind is Crashed:
            if self._recorder is not None:
                self._recorder.crashes += 1
            worker.queue.remove(event.task_id)
            self._isolate(self._forget(event.task_id), event.error)
        elif kind is Unreadable:
            self._unreadable(worker, event.error)
        elif kind is Ready:  # the worker set has marked it ready
            self._boot_failures = 0
        elif kind is InitFailed:
            self._pool.broken = True
            raise event.failure.exception()

    def _forget(self, task_id: int) -> _Task:
        """A chunk is no longer in flight: drop it and what the pool held for it."""
        task = self._tasks.pop(task_id)
        if task.suspect:
            self._alone = False
        if task.lease is not None:
            self._pool.release(task.lease)
            task.lease = None
        return task

    # -- handing out work --

    def _fill(self) -> None:
        if self._delayed:
            self._promote()
        while not self._alone and (worker := self._pick_worker()) is not None:
            if self._retry and self._retry[0].suspect:
                if not self._tasks:  # it runs alone: wait until nothing else is in flight
                    suspect = self._retry.popleft()
                    self._send(worker, suspect)
                    self._alone = suspect.id in self._tasks  # unless it could not be sent
                return
            task = self._next_task(worker.budget)
            if task is None:
                return
            self._send(worker, task)

    def _pick_worker(self) -> W | None:
        workers = [w for w in self._pool.workers if not w.retiring]
        total = self._job.total  # a short map on a cold pool starts no more workers than items
        wanted = self._pool.size if total is None else min(self._pool.size, max(1, total))
        while len(workers) < wanted and self._pool.can_spawn() and self._has_work():
            workers.append(self._pool.spawn())
        ready = [w for w in workers if w.ready]
        for worker in ready:
            if not worker.queue:
                return worker
        depth = self._pool.depth
        for worker in ready:
            if len(worker.queue) < depth:
                return worker
        return None

    def _has_work(self) -> bool:
        if self._retry or self._lookahead or self._delayed:
            return True
        if self._feed is not None:
            return self._feed.has_items()
        if self._exhausted:
            return False
        if self._job.sliced:  # its length is known: nothing need be taken to tell
            assert self._job.total is not None
            return self._next_index < self._job.total
        self._lookahead = self._job.take(1)
        self._exhausted = not self._lookahead or self._job.input_error is not None
        return bool(self._lookahead)

    def _next_task(self, cap: int | None) -> _Task | None:
        if self._retry:
            task = self._retry.popleft()
            if cap is not None and len(task.items) > cap:
                rest = task.part(task.start + cap, task.items[cap:], task.retries)
                self._retry.appendleft(rest)
                task = task.part(task.start, task.items[:cap], task.retries, task.unstarted)
            return task
        if self._feed is not None:
            return self._next_live_task(cap)
        if self._exhausted and not self._lookahead:
            return None
        total = self._job.total
        size = self._sizer.next_size(None if total is None else total - self._next_index)
        for limit in (cap, self._pool.max_chunk):
            if limit is not None:
                size = min(size, limit)
        if self._stream:
            bound = self._ahead_limit()
            if self._job.options.chunksize is None:  # WINDOW chunks per worker fit the bound
                size = min(size, max(1, bound // (self._pool.size * WINDOW)))
            if self._tasks and self._ahead() + size > bound:
                return None
        items = self._lookahead
        self._lookahead = ()
        if len(items) < size and not self._exhausted:
            wanted = size - len(items)
            more = self._job.take(wanted)
            self._exhausted = len(more) < wanted or self._job.input_error is not None
            items = [*items, *more] if items else more  # a slice (of a range: a range) as it is
        if not items:
            return None
        task = _Task(self._next_index, items, self._policy.times, self._call)
        self._next_index += len(items)
        return task

    def _next_live_task(self, cap: int | None) -> _Task | None:
        """A chunk of a live job: what its feed holds now, through the function it names."""
        assert self._feed is not None
        size = self._sizer.next_size(None)
        for limit in (cap, self._pool.max_chunk):
            if limit is not None:
                size = min(size, limit)
        items, call = self._feed.take(size)
        if call is None:
            return None
        task = _Task(self._next_index, items, self._policy.times, self._load(call))
        self._next_index += len(items)
        return task

    def _load(self, call: Call) -> _Loaded:
        """The worker set's id and load message for one of a live job's functions."""
        known = self._loaded.get(id(call))
        if known is not None and known[0] is call:
            return known[1]
        if len(self._loaded) >= CALLS_KEPT or self._loaded_bytes > CALL_BYTES_KEPT:
            self._loaded.clear()  # chunks in flight keep their own
            self._loaded_bytes = 0
        full = self._full_call(call.fn, call.star)
        loaded = _Loaded(*self._pool.load_message(full))
        self._loaded[id(call)] = (call, loaded)
        self._loaded_bytes += _weight(loaded.load)
        return loaded

    def _full_call(self, fn: Callable[..., Any], star: bool) -> Call:
        """What workers need to know to run ``fn`` in this job."""
        options = self._job.options
        measured = self._recorder is not None
        output, levels = self._output, self._levels
        keep_going = self._returns or self._held  # held retries need every item's outcome
        # Process workers only (a backend from the environment may have taken the map elsewhere).
        memory = options.max_worker_memory if options.backend == "process" else None
        return Call(
            fn, star, keep_going, self._watched, output, levels, measured, self._policy.on, memory
        )

    def _ahead(self) -> int:
        """Items read from the input whose results the consumer has not had yet. In input
        order, that counts the finished results held behind the oldest unfinished item."""
        pending = [*self._tasks.values(), *self._retry, *(task for _, _, task in self._delayed)]
        if not pending:
            return 0
        if self._job.options.ordered:
            return self._next_index - min(task.start for task in pending)
        return sum(len(task.items) for task in pending)

    def _ahead_limit(self) -> int:
        """How many items a stream may hold ahead of its consumer: ``max_ahead`` (or a few
        chunks per worker), fewer when their results would pass ``max_ahead_bytes``, but never
        so few that a worker waits for work (one item running and one queued per worker)."""
        if not self._bytes_per_item:
            return self._ahead_items
        fitting = max(
            self._pool.size * self._pool.depth, int(self._ahead_bytes / self._bytes_per_item)
        )
        return min(self._ahead_items, fitting)

    def _measure(self) -> None:
        """Learn the bytes a result costs the caller from the replies just received: at once
        when results grow, halfway at a time when they shrink."""
        items, nbytes = self._measured
        got = self._received - items
        if got <= 0:
            return
        per_item = (self._pool.reply_bytes - nbytes) / got
        self._measured = (self._received, self._pool.reply_bytes)
        if per_item >= self._bytes_per_item:
            self._bytes_per_item = per_item
        else:
            self._bytes_per_item = (self._bytes_per_item + per_item) / 2

    def _send(self, worker: W, task: _Task) -> None:
        task.id = self._pool.new_task_id()
        call = task.call
        retries = 0 if self._held else task.retries  # held: the worker retries nothing itself
        message = Task(task.id, call.id, task.start, task.items, retries)
        try:
            payload, task.lease = self._pool.encode(message)
        except Exception as exc:
            self._split_unpicklable(task, exc)
            return
        self._tasks[task.id] = task
        if self._recorder is not None:
            task.sent_at = self._recorder.sent(worker, not worker.queue)
        worker.queue.append(task.id)
        if worker.budget is not None:
            worker.budget -= len(task.items)
            worker.retiring = worker.budget <= 0
        try:
            if call.load is not None and call.id not in worker.loaded:
                self._pool.send(worker, call.load)
                worker.loaded[call.id] = None
                if len(worker.loaded) > CALL_CACHE:
                    worker.loaded.popitem(last=False)
            self._pool.send(worker, payload)
        except OSError:
            pass  # it died: its sentinel reports that, and the chunk is sent again

    def _split_unpicklable(self, task: _Task, error: Exception) -> None:
        """An argument could not be pickled: that item fails, the others go on."""
        offset, failure = unpicklable_argument(task.items, self._shown(task.start), error)
        index = failure.index = task.start + offset  # its message says where the user sees it
        parts = [
            task.part(task.start, task.items[:offset], task.retries),
            task.part(index + 1, task.items[offset + 1 :], task.retries),
        ]
        self._retry.extendleft(part for part in reversed(parts) if part.items)
        self._ready.append(Batch(index, [failure], True))

    # -- faults --

    def _lost(self, worker: W, timed_out: int | None) -> None:
        """Account for a worker that died (or was stopped because item ``timed_out`` overran)."""
        status = worker.status
        exitcode = self._pool.reap(worker)
        if self._recorder is not None:
            self._recorder.gone(worker)
        if not worker.ready and status.initializing:
            self._pool.broken = True
            raise crash_error(
                f"a worker process {describe_exit(exitcode)} while running the initializer "
                f"{self._initializer_name()}",
                index=None,
                exitcode=exitcode,
            )
        if not worker.ready:  # it died starting up (a missing __main__ guard, say)
            self._boot_failures += 1
            if self._boot_failures > MAX_UNSTARTED:
                raise self._never_ran(exitcode)
        tasks = [self._forget(task_id) for task_id in worker.queue]
        worker.queue.clear()
        if not tasks:
            return
        running, waiting = tasks[0], tasks[1:]
        requeue: list[_Task] = []
        started = status.task == running.id
        index = timed_out if timed_out is not None else status.index
        recorder = self._recorder
        if recorder is not None:
            if timed_out is not None:
                recorder.timeouts += 1
            else:
                recorder.crashes += 1
        if started and running.covers(index):
            offset = index - running.start
            before = running.items[:offset]
            after = running.items[offset + 1 :]
            if before:
                requeue.append(running.part(running.start, before, running.retries))
            # Retries the worker already spent on this item (it raised, then died or overran in
            # a retry) are spent: an item runs at most retries + 1 times in all.
            left = running.retries - status.retries_spent(index)
            if left > 0 and self._retries_fault(timed_out is not None):
                again = running.part(index, [running.items[offset]], left - 1)
                if self._held:
                    self._delay(again, self._policy.times - left)
                else:
                    requeue.append(again)
                if recorder is not None:
                    recorder.retries += 1
            else:
                error = self._fault(index, exitcode, timed_out is not None)
                self._ready.append(Batch(index, [Failure(error, index)], True))
            if after:
                requeue.append(running.part(index + 1, after, running.retries))
        elif running.unstarted < MAX_UNSTARTED:
            # It died before running an item of this chunk (or before saying which): again.
            running.unstarted += 1
            requeue.append(running)
        else:
            failures = [
                Failure(self._never_ran(exitcode), i)
                for i in range(running.start, running.start + len(running.items))
            ]
            self._ready.append(Batch(running.start, failures, True))
        requeue.extend(waiting)
        self._retry.extendleft(reversed(requeue))

    def _retire(self, worker: W, task: _Task, done: int) -> None:
        """The worker went over ``max_worker_memory`` after ``done`` items of ``task`` and
        exits: the rest of that chunk and the chunks queued to it go to other workers, as they
        are (none of them ran), and a new worker takes its place."""
        requeue = []
        if done < len(task.items):
            requeue.append(task.part(task.start + done, task.items[done:], task.retries))
        requeue += [self._forget(task_id) for task_id in worker.queue]
        worker.queue.clear()
        worker.retiring = True
        self._retry.extendleft(reversed(requeue))
        if self._recorder is not None:
            self._recorder.replacements += 1
            self._recorder.gone(worker)

    def _hold_failures(self, task: _Task, values: list[Any]) -> None:
        """A chunk's values, its failures that are to run again held back until their time: the
        rest is ready, in runs of consecutive items."""
        start, run = task.start, list[Any]()
        for offset, value in enumerate(values):
            index = task.start + offset
            if type(value) is Failure and task.retries > 0 and self._policy.covers(value.error):
                if run:
                    self._ready.append(Batch(start, run, _any_failure(run)))
                again = task.part(index, [task.items[offset]], task.retries - 1)
                self._delay(again, self._policy.times - task.retries)
                if self._recorder is not None:
                    self._recorder.retries += 1
                start, run = index + 1, []
            else:
                run.append(value)
        if run:
            self._ready.append(Batch(start, run, _any_failure(run)))

    def _delay(self, task: _Task, k: int) -> None:
        """Hold ``task`` (one item's k-th retry, from 0) back for its backoff."""
        due = time.monotonic() + self._policy.delay(k)
        heapq.heappush(self._delayed, (due, next(self._delays), task))

    def _promote(self) -> None:
        """Held retries whose time has come go first in line."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            self._retry.appendleft(heapq.heappop(self._delayed)[2])

    def _retries_fault(self, timed_out: bool) -> bool:
        """Whether the map retries a crash (or a timeout): ``Retry(on=...)`` names it."""
        if self._policy.on is None:
            return True
        if timed_out:
            return self._policy.covers(TimeoutError)
        from .. import _errors  # WorkerCrashedError is made on first use

        return self._policy.covers(_errors.WorkerCrashedError)

    def _isolate(self, task: _Task, error: BaseException) -> None:
        """An engine lost the worker running ``task`` (after its own retries), without saying
        which item did it, and may blame every task that was on that worker: the items run one
        by one, and one that crashes once more alone fails, so only the culprit fails."""
        if len(task.items) > 1:
            singles = [
                task.part(task.start + i, [item], task.retries) for i, item in enumerate(task.items)
            ]
            self._retry.extendleft(reversed(singles))
            return
        if not task.suspect:
            self._retry.appendleft(task.part(task.start, task.items, task.retries, suspect=True))
            return
        crash = crash_error(
            f"a {self._pool.engine_name} worker died while running the item at index "
            f"{task.start} (after the engine's own retries): {error}",
            index=task.start,
        )
        crash.__cause__ = error
        self._ready.append(Batch(task.start, [Failure(crash, task.start)], True))

    def _unreadable(self, worker: W, exc: Exception) -> None:
        """A reply that failed to unpickle here holds the results of the worker's oldest chunk (a
        worker answers its chunks in order). Its items run again one at a time, and the one whose
        result fails again fails with the reason; the worker itself is fine and goes on."""
        if not worker.queue:  # not a chunk's results: a message the pool cannot do without
            self._pool.broken = True
            raise SerializationError(f"cannot unpickle a worker's message: {exc!r}") from exc
        task = self._forget(worker.queue.popleft())
        if len(task.items) > 1:  # which result it was is unknown: run them again one by one
            # Without retries: the worker has spent them on these items already.
            singles = [task.part(task.start + i, [item], 0) for i, item in enumerate(task.items)]
            self._retry.extendleft(reversed(singles))
            return
        error = SerializationError(
            f"cannot unpickle the result of the item at index {self._shown(task.start)} in the "
            f"caller: {exc!r}"
        )
        error.__cause__ = exc
        self._ready.append(Batch(task.start, [Failure(error, task.start)], True))

    def _never_ran(self, exitcode: int | None) -> WorkerCrashedError:
        return crash_error(
            f"worker processes {describe_exit(exitcode)} {MAX_UNSTARTED + 1} times before "
            "running any item. In a script, start the map under "
            "'if __name__ == \"__main__\":' (spawn and forkserver workers import the main "
            "module); the workers' stderr shows the cause.",
            index=None,
            exitcode=exitcode,
        )

    def _shown(self, index: int) -> int:
        """An item's index as its user knows it: in a live job, its place in its own call."""
        return index if self._feed is None else self._feed.position(index)

    def _fault(self, index: int, exitcode: int | None, timed_out: bool) -> BaseException:
        index = self._shown(index)
        if timed_out:
            return TimeoutError(
                f"the item at index {index} ran longer than the timeout of "
                f"{self._job.options.timeout} s; {self._pool.stopped}"
            )
        return crash_error(
            f"a worker process {describe_exit(exitcode)} while running the item at index {index}",
            index=index,
            exitcode=exitcode,
        )

    def _poll_timeout(self) -> float | None:
        if self._delayed:  # no later than the next held retry's time
            due = max(MIN_POLL, self._delayed[0][0] - time.monotonic())
            if not self._tasks:
                return min(due, RETIRE_POLL)
            timeout = self._task_poll_timeout()
            return due if timeout is None else min(due, timeout)
        return self._task_poll_timeout()

    def _task_poll_timeout(self) -> float | None:
        if not self._tasks:
            return RETIRE_POLL
        if self._timeout_ns is None:
            return None
        now = time.monotonic_ns()
        soonest = self._timeout_ns
        for worker in self._pool.workers:
            status = worker.status
            running = worker.queue and status.task == worker.queue[0]
            if running or (not worker.ready and status.initializing):
                soonest = min(soonest, self._timeout_ns - status.running_ns(now))
        return max(MIN_POLL, soonest / 1e9)

    def _expire(self) -> None:
        assert self._timeout_ns is not None
        now = time.monotonic_ns()
        for worker in self._pool.workers:
            status = worker.status
            if (
                not worker.ready
                and status.initializing
                and now - status.started_ns > self._timeout_ns
            ):
                self._stop_starting()
                raise TimeoutError(
                    f"the initializer {self._initializer_name()} ran longer than the timeout "
                    f"of {self._job.options.timeout} s in a worker; the map was stopped"
                )
        for worker in list(self._pool.workers):
            if not worker.queue:
                continue
            task = self._tasks[worker.queue[0]]
            status = worker.status
            index = status.index  # before the start time: see Status.index
            if (
                status.task == task.id
                and task.covers(index)
                and status.running_ns(now) > self._timeout_ns
            ):
                self._pool.kill(worker)
                self._lost(worker, index)

    def _initializer_name(self) -> str:
        initializer = self._job.options.initializer
        name = getattr(initializer, "__qualname__", None)
        return f"{name}()" if name else repr(initializer)

    def _stop_starting(self) -> None:
        """Stop the workers still starting (in their initializer, say): the set is spoilt."""
        self._pool.broken = True
        for worker in [w for w in self._pool.workers if not w.ready]:
            self._pool.kill(worker)
            self._pool.reap(worker)

    def _abort(self) -> None:
        """Stop every worker still busy or starting, now, without waiting for any: the set is
        discarded after the map, which reaps them."""
        self._pool.broken = True
        stopping = [w for w in self._pool.workers if w.queue or not w.ready]
        self._pool.kill_all(stopping)
        for worker in stopping:
            worker.queue.clear()
        for task_id in list(self._tasks):
            self._forget(task_id)

    def _cancel(self, *, now: bool) -> None:
        """Stop the work still outstanding; leave the pool clean for the next map."""
        if now:  # Ctrl-C: a worker stuck starting up must not outlive it either
            self._stop_starting()
        busy = [w for w in self._pool.workers if w.queue]
        try:
            if busy and not now and self._pool.graceful_cancel:
                self._let_finish(busy)
        finally:  # even if a second Ctrl-C cuts the grace short
            stopping = [w for w in busy if w.queue and w in self._pool.workers]
            self._pool.kill_all(stopping)
            for worker in stopping:
                self._pool.reap(worker)
                worker.queue.clear()
            for task_id in list(self._tasks):
                self._forget(task_id)

    def _let_finish(self, busy: list[W]) -> None:
        """Tell busy workers to skip their queued chunks; wait a moment for the running ones."""
        last = max(self._tasks, default=0)
        for worker in busy:
            worker.status.cancel_up_to(last)
        deadline = time.monotonic() + CANCEL_GRACE
        while (remaining := deadline - time.monotonic()) > 0 and any(w.queue for w in busy):
            for worker, event in self._pool.wait(remaining):
                kind = type(event)
                if kind is Dead:
                    self._pool.reap(worker)
                    worker.queue.clear()
                elif kind is Done or kind is Cancelled:
                    worker.queue.remove(event.task_id)
                elif kind is Unreadable and worker.queue:
                    worker.queue.popleft()  # its oldest chunk's reply, which is dropped anyway


def _any_failure(values: list[Any]) -> bool:
    return any(type(value) is Failure for value in values)


def describe_exit(exitcode: int | None) -> str:
    """'was killed by SIGKILL', 'exited with code 3', ... for error messages."""
    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"
