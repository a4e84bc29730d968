"""The process backend: a warm pool of worker processes, reused from map to map.

Each worker has its own pipe, so the scheduler knows exactly which chunks a worker holds, and a
status slot in a shared array, so it knows which item it is running. Workers are started from a
``multiprocessing`` context with the chosen start method, lazily, up to ``workers`` of them. A
pool is kept warm after its map, until the running workers of every kept pool pass
``warm_workers()`` (the least recently used pool goes first) or the interpreter exits. A second
map running at the same time (another thread, or an ``imap`` loop suspended around it) gets a
pool of its own, kept warm too: two idle pools may then share a configuration.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Final

from .._lifecycle import at_exit, close_each, exiting, park_if_exiting, worker_lost
from .._options import Resolved
from .._threadlimits import thread_share
from .._wire import sharedmem
from .._wire.pickling import dumps, dumps_by_value, dumps_function, names_main, pickle_function
from .._wire.protocol import Call, GiveBack, Task, from_wire, to_wire
from .._worker.chunk import SLOT_WIDTH, Status
from .._worker.init import StartInit
from .._worker.loop import map_status, process_main
from ._pipes import CallIds, WakePipe, finish_events, read_replies
from ._warm import IdlePools, warm_workers
from .base import Backend, Unreadable, WorkerHandle, WorkerSet

# At shutdown, how long idle workers get to exit on their own before they are killed.
SHUTDOWN_GRACE: Final = 2.0
# What each pipe between the caller and a worker may hold: one or two of the largest chunks of ints
# (MAX_CHUNK of them pickle to 200-330 KB; with the default 64 KiB the caller waits for a busy
# worker to read).
PIPE_BYTES: Final = 1 << 19
# Pipes are widened only for pools up to this size: widened pipes count against the user's
# pipe-buffer quota (64 MiB by default on Linux), shared by all the user's processes.
WIDENED_UP_TO: Final = 16


class _PoolKey:
    """What makes two pools interchangeable."""

    __slots__ = ("init_blob", "max_items", "start_method", "workers")

    def __init__(
        self,
        start_method: str,
        workers: int,
        init_blob: bytes | StartInit | None,
        max_items: int | None,
    ):
        self.start_method = start_method
        self.workers = workers
        self.init_blob = init_blob
        self.max_items = max_items

    def _fields(self) -> tuple[object, ...]:
        return (self.start_method, self.workers, self.init_blob, self.max_items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PoolKey) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())


class _Worker(WorkerHandle):
    __slots__ = ("conn", "lent", "process", "slot", "tasks")

    def __init__(
        self, process: Any, conn: Any, tasks: Any, slot: int, status: Status, budget: int | None
    ):
        super().__init__(status, budget, ready=False)
        self.process = process
        self.conn = conn  # its replies come in here
        self.tasks = tasks  # and its work goes out here
        self.slot = slot
        # Its reply segments mapped here; those let go of go back to it with its next chunk.
        self.lent = sharedmem.LentSegments()


class ProcessPool(WorkerSet[_Worker]):
    """Worker processes of one configuration."""

    def __init__(self, key: _PoolKey):
        _all_pools.add(self)
        self.key = key
        self.size = key.workers
        self.workers = []
        self._context: Any = multiprocessing.get_context(key.start_method)
        # Twice the size: a retiring worker and its replacement may both hold a slot for a moment.
        slots = 2 * key.workers
        size = slots * SLOT_WIDTH
        if key.start_method == "fork":
            # Inherited by forked children as it is: an anonymous shared mapping costs nothing.
            self._status_array: Any = mmap.mmap(-1, size * 8)
        elif hasattr(os, "memfd_create"):
            self._status_array = _StatusBlock(size * 8)
        else:
            self._status_array = self._context.RawArray("q", size)
        block = self._status_array
        view = memoryview(getattr(block, "mapping", block)).cast("B").cast("q")
        self._views = [view[i * SLOT_WIDTH : (i + 1) * SLOT_WIDTH] for i in range(slots)]
        self._free_slots = list(range(slots - 1, -1, -1))
        self._call_ids = CallIds()
        self._arena = sharedmem.Arena()
        self._reply_prefix = sharedmem.reply_prefix()
        self._ids = itertools.count(1)
        # Spawned workers (and the fork server) import the caller's __main__ only when it has a
        # file or a module name: not in a notebook, a REPL or `python -c`. There, items that
        # refer to __main__ (objects of a class defined there) must travel by value.
        self._main_by_value = key.start_method != "fork" and not _main_importable()
        self._wake = WakePipe()  # wake(): ends a wait() early (a live job has new input)
        self._closing = threading.Lock()
        self._closed = False

    def new_task_id(self) -> int:
        return next(self._ids)

    def spawn(self) -> _Worker:
        park_if_exiting()  # no new workers once the exit hook has closed the pools
        slot = self._free_slots.pop()
        status = Status(self._views[slot])
        status.reset()
        try:
            with _spawn_lock:  # no other thread's pipes may leak into this child, nor ours into its
                if exiting.is_set():  # the exit hook began while this waited: it closes pipes under
                    _spawn_lock.release()  # this lock, and a child forked now starts in an exiting
                    try:  # interpreter; a daemon thread's map parks, as at the top
                        park_if_exiting()
                    finally:
                        _spawn_lock.acquire()
                # One pipe each way, widened: neither side's write waits for the other to read.
                task_reader, task_writer = self._context.Pipe(duplex=False)
                reply_reader, reply_writer = self._context.Pipe(duplex=False)
                if self.key.workers <= WIDENED_UP_TO:
                    _widen(task_writer)
                    _widen(reply_writer)
                inherited: list[int] = []
                if self.key.start_method == "fork":
                    # A forked child inherits the parent's ends of every pipe, of every pool: it
                    # must close them, or a worker never sees end-of-file when the parent dies.
                    inherited = [*_parent_ends(), reply_reader.fileno(), task_writer.fileno()]
                process = self._context.Process(
                    target=process_main,
                    args=(
                        task_reader,
                        reply_writer,
                        self._status_array,
                        slot,
                        self.key.init_blob,
                        self.key.max_items,
                        inherited,
                        thread_share(self.key.workers),
                        (self._reply_prefix, sharedmem.KEEP_BYTES // self.key.workers),
                        sharedmem.IDLE_SECONDS,
                        self.key.start_method == "spawn",  # a fresh interpreter: its own atexit
                    ),
                    name=f"parallelize-worker-{slot}",
                )
                try:
                    if self.key.start_method == "forkserver":
                        _choose_fork_server_preload(self._context)
                    with sharedmem.own_fork():
                        process.start()
                except BaseException:
                    self._free_slots.append(slot)
                    reply_reader.close()
                    task_writer.close()
                    raise
                finally:
                    task_reader.close()
                    reply_writer.close()
        except RuntimeError as exc:
            # Python 3.12+ refuses to fork once the interpreter shuts down, which begins before
            # the exit hook runs: a daemon thread's map parks, as above.
            if "interpreter shutdown" in str(exc):
                exiting.set()
            park_if_exiting()
            raise
        worker = _Worker(process, reply_reader, task_writer, slot, status, self.key.max_items)
        self.workers.append(worker)
        return worker

    def can_spawn(self) -> bool:
        return bool(self._free_slots)

    def encode(self, task: Task) -> tuple[bytes, object]:
        wire = to_wire(task)
        blob, lease = self._encode(wire)
        self.bytes_pickled += len(blob)
        if lease is not None:
            self.bytes_shared += lease.size
        return blob, lease

    def _encode(self, wire: tuple[Any, ...]) -> tuple[bytes, sharedmem.Segment | None]:
        try:
            blob, lease = sharedmem.dumps(wire, self._arena.lease)
        except Exception:  # what the standard pickler refuses, cloudpickle may take, in-band
            return dumps(wire), None
        if self._main_by_value and names_main(blob):
            if lease is not None:
                self._arena.release(lease)
            return dumps_by_value(wire), None
        return blob, lease

    def release(self, lease: object) -> None:
        assert isinstance(lease, sharedmem.Segment)
        self._arena.release(lease)

    def trim(self) -> None:
        """Between maps: keep only a bounded amount of shared memory for the next one."""
        self._arena.trim()

    def holds_memory(self) -> bool:
        """Whether shared memory is kept here for reuse, or will be once the caller lets go of
        the arrays it holds (the idle timer keeps watching until then)."""
        lent = (w.lent for w in self.workers)
        if self._arena.holds_memory() or self._call_ids.shares_memory():
            return True
        return any(x.released or x.outstanding() for x in lent)

    def release_idle(self) -> None:
        """The pool has been idle a while: free the shared memory it kept for reuse."""
        self._arena.trim(0)
        self._call_ids.forget_shared()
        sharedmem.sweep_owned()
        for worker in self.workers:
            sharedmem.unlink(worker.lent.drain_all())

    def load_message(self, call: Call) -> tuple[int, bytes | sharedmem.Owned]:
        sharedmem.sweep_owned()  # the segments of functions no map holds any more
        function = pickle_function(call, call.fn, out_of_band=sharedmem.THRESHOLD)
        return self._call_ids.message(function, self.new_task_id, share=sharedmem.AVAILABLE)

    def send(self, worker: _Worker, payload: bytes | sharedmem.Owned) -> None:
        if worker.lent.released:
            reuse, drop = worker.lent.drain()
            sharedmem.unlink(drop)
            if reuse:
                worker.tasks.send_bytes(pickle.dumps(to_wire(GiveBack(reuse))))
        worker.tasks.send_bytes(payload if isinstance(payload, bytes) else payload.data)

    def wait(self, timeout: float | None) -> list[tuple[_Worker, Any]]:
        park_if_exiting()
        watched: dict[Any, _Worker] = {}
        for worker in self.workers:
            watched[worker.conn] = worker
            watched[worker.process.sentinel] = worker
        if not watched:
            return []
        try:
            ready = self._wake.wait([*watched], timeout)
        finally:
            park_if_exiting()  # the exit hook closed the pipes under this wait
        events: list[tuple[_Worker, Any]] = []
        dead: list[_Worker] = []
        for obj in ready:
            worker = watched[obj]
            if obj is worker.conn:  # else it is the process sentinel
                raws, ended = read_replies(obj)
                if ended:
                    park_if_exiting()  # the exit hook closed it: not a crash
                    dead.append(worker)
                mapped = worker.lent.mapped_bytes
                events.extend((worker, _load_reply(raw, worker)) for raw in raws)
                piped, shared = sum(map(len, raws)), worker.lent.mapped_bytes - mapped
                self.reply_bytes += piped + shared
                self.bytes_pickled += piped
                self.bytes_shared += shared
            elif worker not in dead:
                dead.append(worker)
        return finish_events(events, dead, _load_reply)

    def wake(self) -> None:
        self._wake.wake()

    def kill(self, worker: _Worker) -> None:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(worker.process.pid, signal.SIGKILL)

    def reap(self, worker: _Worker) -> int | None:
        park_if_exiting()  # the exit hook is closing this pool: leave the workers to it
        if worker.process.exitcode is None:  # declared dead for a bad message: make it so
            self.kill(worker)
        worker.process.join()
        # Another thread starting a process may have collected the exit status first (its
        # multiprocessing cleanup polls every child): it lands on the Process in a moment.
        deadline = time.monotonic() + 1.0
        while worker.process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.001)
        _close_pipes(worker)
        if worker in self.workers:
            self.workers.remove(worker)
            self._free_slots.append(worker.slot)
        exitcode: int | None = worker.process.exitcode
        _forget_replies(worker, self._reply_prefix)
        _sweep_counters(exitcode)
        with contextlib.suppress(ValueError):  # still not reaped: leave it to multiprocessing
            worker.process.close()
        return exitcode

    def close(self) -> None:
        """Stop every worker: end-of-file first, then a kill for any that lingers. Once: the exit
        hook may close a pool that a halted session's thread is closing (``Pool.terminate``)."""
        with self._closing:
            if not self._closed:
                self._close()
                self._closed = True

    def _close(self) -> None:
        self._wake.close()
        workers = list(self.workers)
        for worker in workers:
            _close_pipes(worker)
        for worker in workers:
            # ValueError: a map of a daemon thread reaped it meanwhile (at interpreter exit).
            with contextlib.suppress(ValueError):
                worker.process.join(SHUTDOWN_GRACE)
                if worker.process.exitcode is None:
                    self.kill(worker)
                    worker.process.join()
                _forget_replies(worker, self._reply_prefix)
                _sweep_counters(worker.process.exitcode)
        self.workers.clear()
        self._arena.close()
        self._call_ids.clear()
        sharedmem.sweep_owned()  # the functions' shared data, unless a map still holds it


def _close_pipes(worker: _Worker) -> None:
    """Close the caller's ends of a worker's pipes. Not while another thread starts a worker: a
    number freed between its pipes' making and its fork may be one of the new pipes, which the
    child, told to close its parent's ends by number, would then close as a stale one."""
    with _spawn_lock:
        worker.tasks.close()
        worker.conn.close()


def _parent_ends() -> list[int]:
    """The caller's ends of every worker's pipes, of every pool. Another thread may be closing
    some right now: those are skipped (a number it frees is one the child need not close)."""
    fds = []
    for pool in list(_all_pools):
        for worker in list(pool.workers):
            for conn in (worker.conn, worker.tasks):
                with contextlib.suppress(OSError):
                    fds.append(conn.fileno())
    return fds


def _widen(conn: Any) -> None:
    """Let a pipe hold PIPE_BYTES (Linux), so that a chunk or reply is written in one go."""
    with contextlib.suppress(OSError, ImportError, AttributeError):  # over the limit; not Linux
        import fcntl  # lazily: not on every platform

        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _StatusBlock:
    """The status slots, for spawned children: an anonymous memory file whose descriptor each
    child receives as it starts. Unlike a RawArray, neither side imports ``ctypes`` for it."""

    def __init__(self, nbytes: int):
        self._fd = os.memfd_create("parallelize-status")
        os.ftruncate(self._fd, nbytes)
        self.mapping = mmap.mmap(self._fd, nbytes)
        self._nbytes = nbytes
        # Not at exit: a map of a daemon thread may still start a worker then, which is sent
        # this descriptor by number (closed under it, the number may name another file).
        weakref.finalize(self, os.close, self._fd).atexit = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (map_status, (multiprocessing.reduction.DupFd(self._fd), self._nbytes))


def _choose_fork_server_preload(context: Any) -> None:
    """What the fork server imports once, for every worker it forks, when it starts (at the
    first forkserver worker): the worker module, and logging and cloudpickle once this process
    has them (a forwarding worker hooks logging; a function that travels by value needs
    cloudpickle, and the first map has pickled its function by the time it starts a worker).

    Not the caller's script (multiprocessing's default ``"__main__"``, which imports it from
    Python 3.13.8 on): what a script or its modules set up at import would be made once in the
    server and copied into every worker, a thread pool without its threads (workers hang on
    it), a random generator with its state (workers draw the same numbers), a thread that keeps
    the server alive after the caller exits. Each worker imports the script itself, as under
    spawn."""
    used = [name for name in ("logging", "cloudpickle") if name in sys.modules]
    context.set_forkserver_preload([*used, _WORKER_MODULE])


def _needs_start(initargs: tuple[Any, ...]) -> bool:
    """Whether ``initargs`` hold what pickles only while a process starts (a lock, a queue)."""
    try:
        pickle.dumps(initargs)
    except RuntimeError as exc:
        return "inheritance" in str(exc)
    except Exception:
        return False
    return False


def _main_importable() -> bool:
    """Whether spawned workers import this process's ``__main__``, by the rules of
    multiprocessing's spawn preparation: by module name when it has one, except a package's or a
    zipapp's ``__main__`` (``python -m pkg``), which it skips; else by file."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None:
        return name != "__main__" and not name.endswith(".__main__")
    return getattr(main, "__file__", None) is not None


def _load_reply(raw: bytes, worker: _Worker) -> Any:
    """A worker's message, unpickled; what failed to unpickle here is the scheduler's to
    report (the worker is not at fault: it is alive and sent a whole message)."""
    try:
        return from_wire(sharedmem.load(raw, worker.lent))
    except Exception as exc:
        return Unreadable(exc)


def _forget_replies(worker: _Worker, prefix: str) -> None:
    """A worker is gone: unlink the reply segments it kept or lent (arrays the caller still
    holds stay valid: they map the memory, which lives until they go)."""
    sharedmem.unlink(worker.lent.drain_all())
    sharedmem.unlink(sharedmem.reply_leftovers(prefix, worker.process.pid))


def _sweep_counters(exitcode: int | None) -> None:
    """A worker that did not exit cleanly may have held resources (the last hold on a shared
    counter): tell whoever registered for that."""
    if exitcode != 0:
        # Not while this process forks a worker: the child would inherit the sweep's
        # descriptors, and with them the locks it holds for a moment, for its whole life.
        with _spawn_lock:
            worker_lost()


class ProcessBackend(Backend):
    """Runs jobs on warm :class:`ProcessPool` objects: the idle pools are kept, one per
    configuration, within :func:`warm_workers` idle workers, so that maps that alternate
    configurations, or run while another map is suspended (a ``pmap`` inside an ``imap`` loop),
    find their workers warm."""

    name = "process"

    def __init__(self) -> None:
        self._idle: IdlePools[ProcessPool] = IdlePools()  # no map uses them
        self._timer_lock = threading.Lock()
        self._timers: list[threading.Timer] = []  # the armed one last; others may still be ending
        self._rearm_after_fork = False
        if hasattr(os, "register_at_fork"):
            # No timer thread may run through a fork (the child would inherit its locks held).
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )
        _backends.add(self)

    @contextlib.contextmanager
    def open(self, options: Resolved, *, private: bool = False) -> Iterator[ProcessPool]:
        init_blob: bytes | StartInit | None = None
        if options.initializer is not None:
            try:
                init_blob = dumps_function(
                    (options.initializer, options.initargs), options.initializer
                )
            except Exception:  # a multiprocessing lock or queue in initargs: pickled at start
                if not _needs_start(options.initargs):
                    raise
                init_blob = StartInit(options.initializer, options.initargs)
        key = _PoolKey(
            options.start_method, options.workers, init_blob, options.max_tasks_per_worker
        )
        pool = ProcessPool(key) if private else self._idle.take(key, ProcessPool)
        try:
            yield pool
        finally:
            self._checkin(pool, private)

    def _checkin(self, pool: ProcessPool, private: bool) -> None:
        """Keep the pool warm (the most recently used), closing the least recently used idle
        pools while their running workers pass the budget. A private or broken pool is closed,
        and so is one whose initializer's arguments were a lock or queue (handed to its workers
        as they started): no other map can be given the same ones."""
        if any(w.queue for w in pool.workers):  # a cancel was interrupted: its state is stale
            pool.broken = True
        if private or pool.broken or isinstance(pool.key.init_blob, StartInit):
            pool.close()
            return
        pool.trim()
        holds_memory = pool.holds_memory()  # while no other map can have taken it
        # Only the most recent idle pool keeps shared memory.
        self._idle.keep(pool, warm_workers(), others=ProcessPool.release_idle)
        if holds_memory:
            self._arm()

    def _arm(self) -> None:
        """Free the idle pools' shared memory unless a map takes them within IDLE_SECONDS.

        The timer thread lives only that long (longer only while the caller still holds arrays
        a map returned through shared memory), and is joined before any fork.
        """
        timer = threading.Timer(sharedmem.IDLE_SECONDS, self._release_idle)
        timer.daemon = True
        timer.name = "parallelize-idle"
        with self._timer_lock:
            for old in self._timers:
                old.cancel()
            try:
                timer.start()
            except RuntimeError:  # the interpreter is shutting down: the exit hook frees it all
                return
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]

    def _disarm(self) -> bool:
        """Stop every idle timer and wait for its thread to end; whether one was armed."""
        stopped = False
        while True:  # a timer that fires meanwhile may arm another: stop that one too
            with self._timer_lock:
                timers, self._timers = self._timers, []
            if not timers:
                return stopped
            for timer in timers:
                stopped = stopped or not timer.finished.is_set()
                timer.cancel()
                if timer is not threading.current_thread():
                    timer.join()

    def _before_fork(self) -> None:
        self._rearm_after_fork = self._disarm()

    def _after_fork_in_parent(self) -> None:
        if self._rearm_after_fork:
            self._rearm_after_fork = False
            self._arm()

    def _after_fork_in_child(self) -> None:
        """A forked child starts with no pool: the parent's workers and pipes are the parent's.
        Fresh locks too, since a thread of the parent may have held them."""
        # Nor does multiprocessing's exit hook in the child try to join the parent's workers.
        ours = {w.process for pool in list(_all_pools) for w in pool.workers}
        multiprocessing.process._children.difference_update(ours)  # type: ignore[attr-defined]
        # Kept, not collected: collecting would close descriptors that a forked worker closes
        # itself, by number, a moment later (by then the number may name another file).
        _parents_pools.extend(_all_pools)
        _all_pools.clear()
        self._idle = IdlePools()
        self._timer_lock = threading.Lock()
        self._timers = []
        self._rearm_after_fork = False

    def _release_idle(self) -> None:
        with self._idle.lock:  # a map that starts now waits for this, then takes its pool
            for pool in self._idle.pools:
                pool.release_idle()
            if any(pool.holds_memory() for pool in self._idle.pools):  # the caller holds arrays
                self._arm()

    def shutdown(self) -> None:
        self._disarm()
        self._idle.close_all()


# Every pool, the private ones of concurrent maps included: one still held by a suspended imap at
# exit must be closed too, or multiprocessing's exit hook waits for its workers forever.
_all_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()
# In a forked child: the parent's pools, left alone.
_parents_pools: list[ProcessPool] = []
# Held from creating a worker's pipes until it has started (see ProcessPool.spawn).
_spawn_lock = threading.Lock()
# Imported by the fork server before it forks any worker (_choose_fork_server_preload).
_WORKER_MODULE: Final = process_main.__module__


# The process backend (one per interpreter, made by the backend registry).
_backends: weakref.WeakSet[ProcessBackend] = weakref.WeakSet()


def _shutdown_all() -> None:
    """Stop every worker: the warm pool (after its idle timer) and the private ones, then
    unlink the functions' shared data (what a daemon thread's map still holds too); one that
    fails stops none of the others, and the first error is raised at the end."""
    try:
        close_each([*(b.shutdown for b in list(_backends)), *(p.close for p in list(_all_pools))])
    finally:
        sharedmem.sweep_owned(everything=True)


# Registered now, after multiprocessing's own exit hook (imported above), so it runs before it:
# otherwise multiprocessing joins our still-running workers first and interpreter exit hangs.
at_exit(_shutdown_all)
