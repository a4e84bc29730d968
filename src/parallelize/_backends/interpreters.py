"""The interpreters backend: worker subinterpreters, each with its own GIL, in threads of the
caller's process (Python 3.13 and newer).

A worker is a thread running a subinterpreter that runs the pipe worker's loop
(:func:`~parallelize._worker.loop.interpreter_main`): chunks and replies travel pickled through a
pair of pipes, as to a process, and its status slot is a small memory file both sides map. Nothing
forks or spawns, so a pool starts in milliseconds, and pure-Python CPU work runs in parallel.
Interpreters are kept warm between maps, one idle pool per configuration, and closed at exit.

An interpreter cannot be stopped mid-item: an item past its ``timeout`` fails with
``TimeoutError`` and its interpreter is abandoned, to end when the item returns, and replaced
(as the thread backend does with a thread). Extension modules that refuse to load in a
subinterpreter (NumPy, today) fail with an ImportError that names them and suggests
``backend="process"``.

On 3.14 and newer it is built on :mod:`concurrent.interpreters`; on 3.13 on the private
``_interpreters`` module, whose use stays in :class:`_Interpreter`.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import mmap
import multiprocessing.connection
import os
import pickle
import re
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar, Final

from .._errors import Failure
from .._lifecycle import at_exit, park_if_exiting
from .._options import Resolved
from .._wire.pickling import dumps, dumps_by_value, dumps_function, names_main, pickle_function
from .._wire.protocol import Call, Done, InitFailed, Task, from_wire, to_wire
from .._worker.chunk import SLOT_WIDTH, Status
from ._pipes import CallIds, WakePipe, finish_events, read_replies
from ._warm import IdlePools, warm_workers
from .base import Backend, Unreadable, WorkerHandle, WorkerSet

# The first Python whose subinterpreters have a GIL of their own and a module to drive them.
NEEDS: Final = (3, 13)
# At shutdown, how long idle interpreters get to finish their loop before they are abandoned.
SHUTDOWN_GRACE: Final = 2.0
# Abandoned interpreters skip every chunk still queued once their item returns.
_SKIP_ALL: Final = 1 << 62
# What CPython says when an extension module refuses a subinterpreter.
_REFUSED: Final = re.compile(r"module '?([\w.]+)'? does not support loading in subinterpreters")


def check_python() -> None:
    """Raise :class:`RuntimeError` unless this Python runs subinterpreter workers."""
    if sys.platform == "win32":
        raise InterpretersUnavailable(
            'backend="interpreters" is not available on Windows yet (its workers use POSIX '
            'pipes and poll); use backend="process"'
        )
    if sys.version_info < NEEDS:
        raise InterpretersUnavailable(
            'backend="interpreters" needs Python 3.13 or newer (subinterpreters with a GIL '
            f'of their own); this is Python {sys.version.split()[0]}. Use backend="process" '
            'here, or "thread" for I/O-bound work'
        )


class InterpretersUnavailable(RuntimeError, ImportError):
    """This Python has no subinterpreters to run workers in. A RuntimeError, and an ImportError
    for code that checks for a missing module."""


class _Interpreter:
    """One subinterpreter with its own GIL: the only code that touches the interpreters API
    (public from 3.14, the private ``_interpreters`` module on 3.13)."""

    def __init__(self) -> None:
        self._public = sys.version_info >= (3, 14)
        if self._public:
            self._handle: Any = importlib.import_module("concurrent.interpreters").create()
        else:
            self._module: Any = importlib.import_module("_interpreters")
            self._handle = self._module.create(self._module.new_config("isolated"))

    def run(self, code: str, names: dict[str, Any]) -> str | None:
        """Set ``names`` in its ``__main__`` and run ``code`` there (blocking this thread); the
        traceback text of an exception that escaped it, if any."""
        if self._public:
            self._handle.prepare_main(names)
            try:
                self._handle.exec(code)
            except Exception as exc:  # ExecutionFailed: its text carries the remote traceback
                return str(exc)
            return None
        self._module.set___main___attrs(self._handle, names)
        failure = self._module.exec(self._handle, code)
        return None if failure is None else str(failure.errdisplay)

    def close(self) -> None:
        if self._public:
            self._handle.close()
        else:
            self._module.destroy(self._handle)


# What each interpreter runs: the caller's import path, then the worker loop.
_BOOT: Final = """\
import sys
sys.path[:] = _parallelize_path
from parallelize._worker.loop import interpreter_main
interpreter_main(*_parallelize_args)
"""


class _Worker(WorkerHandle):
    __slots__ = ("conn", "ended", "stop", "tasks", "thread")

    def __init__(
        self, status: Status, budget: int | None, conn: Any, tasks: Any, stop: tuple[int, int]
    ):
        super().__init__(status, budget, ready=False)
        self.conn = conn  # its replies come in here
        self.tasks = tasks  # and its work goes out here
        # A byte written to the first ends its loop after the running chunk (the second: the
        # caller's reader of that pipe).
        self.stop: tuple[int, int] | None = stop
        self.ended = False  # its interpreter returned (set by its thread)
        self.thread: threading.Thread | None = None


class _PoolKey(tuple[int, bytes | None, int | None]):
    """What makes two interpreter pools interchangeable: workers, initializer, item budget."""


class InterpreterPool(WorkerSet[_Worker]):
    """Worker subinterpreters of one configuration."""

    stopped: ClassVar[str] = (
        "its interpreter was abandoned, to end when the item returns, and replaced"
    )

    def __init__(self, key: _PoolKey):
        _all_pools.add(self)
        self.key = key
        self.size, self._init_blob, self._max_items = key
        self.workers = []
        self._ids = itertools.count(1)
        self._call_ids = CallIds()
        # wake(): ends a wait() early (new input, or an interpreter ended).
        self._wake = WakePipe()

    def new_task_id(self) -> int:
        return next(self._ids)

    def spawn(self) -> _Worker:
        park_if_exiting()  # no new workers once the exit hook has closed the pools
        fds: list[int] = []
        try:
            for _ in range(3):
                fds += os.pipe()
            task_read, task_write, reply_read, reply_write, stop_read, stop_write = fds
            os.set_blocking(stop_write, False)
            fds.append(_memory_file(SLOT_WIDTH * 8))
            fds += (os.dup(stop_write), os.dup(stop_read))
            block = mmap.mmap(fds[6], SLOT_WIDTH * 8, trackfd=False)  # type: ignore[call-arg,unused-ignore]
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        status = Status(memoryview(block).cast("B").cast("q"))
        status.reset()
        tasks = multiprocessing.connection.Connection(task_write, readable=False)
        conn = multiprocessing.connection.Connection(reply_read, writable=False)
        # The caller keeps a reader of the stop pipe, so that its stop never meets a pipe
        # without one (SIGPIPE) once the interpreter's has closed.
        worker = _Worker(status, self._max_items, conn, tasks, (stop_write, fds[8]))
        # The thread owns the interpreter's ends (a copy of the stop pipe's writer among them)
        # and closes them once it returns; the worker keeps the caller's.
        theirs = (task_read, reply_write, fds[6], stop_read, fds[7])
        worker.thread = threading.Thread(
            target=self._main,
            args=(worker, theirs),
            daemon=True,  # an abandoned interpreter must not hold up the caller's exit
            name=f"parallelize-interpreter-{len(self.workers)}",
        )
        try:
            worker.thread.start()
        except BaseException:
            if worker.thread.ident is None:  # else the thread owns them, and closes them
                for fd in theirs:
                    os.close(fd)
            _close(worker)
            raise
        self.workers.append(worker)
        return worker

    def _main(self, worker: _Worker, fds: tuple[int, int, int, int, int]) -> None:
        """A worker's thread: create its interpreter, run the loop in it, then close it."""
        task_read, reply_write, status_fd, stop_read, stop_write = fds
        failure = None
        if hasattr(signal, "pthread_sigmask"):
            # A reply written after the caller let go of its pipe must fail with EPIPE, never
            # raise SIGPIPE, which would end the whole process where it is not ignored.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})
        try:
            interpreter = _Interpreter()
            try:
                args = (task_read, reply_write, status_fd, (stop_read, stop_write))
                path = tuple(entry for entry in sys.path if isinstance(entry, str))
                names = {
                    "_parallelize_args": (*args, self._init_blob, self._max_items),
                    "_parallelize_path": path,  # what import would use of the caller's
                }
                failure = interpreter.run(_BOOT, names)
            finally:
                interpreter.close()
        except Exception as exc:  # it could not be created (or closed)
            failure = repr(exc)
        finally:
            try:
                if failure is not None and worker in self.workers:
                    _report(reply_write, failure)
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            finally:
                worker.ended = True
                self.wake()

    def encode(self, task: Task) -> tuple[bytes, None]:
        """The chunk pickled; what refers to ``__main__`` by value, since an interpreter's
        ``__main__`` is not the caller's."""
        wire = to_wire(task)
        blob = dumps(wire)
        if names_main(blob):
            blob = dumps_by_value(wire)
        self.bytes_pickled += len(blob)
        return blob, None

    def load_message(self, call: Call) -> tuple[int, bytes]:
        call_id, load = self._call_ids.message(pickle_function(call, call.fn), self.new_task_id)
        assert type(load) is bytes  # nothing shared: the function's buffers travel in the pipe
        return call_id, load

    def send(self, worker: _Worker, payload: bytes) -> None:
        worker.tasks.send_bytes(payload)

    def wait(self, timeout: float | None) -> list[tuple[_Worker, Any]]:
        park_if_exiting()
        watched = {worker.conn: worker for worker in self.workers}
        try:
            ready = self._wake.wait([*watched], timeout)
        finally:
            park_if_exiting()  # the exit hook closed the pipes under this wait
        events: list[tuple[_Worker, Any]] = []
        dead: list[_Worker] = []
        for obj in ready:
            worker = watched[obj]
            raws, ended = read_replies(obj)
            if ended:
                dead.append(worker)
            self.reply_bytes += sum(map(len, raws))
            self.bytes_pickled += sum(map(len, raws))
            events.extend((worker, _load_reply(raw)) for raw in raws)
        for worker in self.workers:
            if worker.ended and worker not in dead:
                dead.append(worker)
        return finish_events(events, dead, lambda raw, _: _load_reply(raw))

    def wake(self) -> None:
        self._wake.wake()

    def kill(self, worker: _Worker) -> None:
        """Abandon the interpreter: it skips what is queued and ends once its item returns."""
        worker.status.cancel_up_to(_SKIP_ALL)
        _stop(worker)

    def reap(self, worker: _Worker) -> int | None:
        park_if_exiting()  # the exit hook is closing this pool: leave the workers to it
        _close(worker)
        if worker in self.workers:
            self.workers.remove(worker)
        return None

    def close(self) -> None:
        """Stop every interpreter, waiting a moment for those still busy (then abandoning
        them)."""
        workers, self.workers = list(self.workers), []
        for worker in workers:
            _stop(worker)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for worker in workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
            _close(worker)
        self._wake.close()


def _stop(worker: _Worker) -> None:
    """Ask the interpreter to end after its running chunk (once: then the caller's ends close;
    under a lock, since the exit hook may close a pool that a daemon thread's map reaps)."""
    with _stopping:
        stop, worker.stop = worker.stop, None
        if stop is not None:
            with contextlib.suppress(OSError):  # full: a stop is pending anyway
                os.write(stop[0], b"!")
            for fd in stop:
                os.close(fd)


def _report(reply_write: int, failure: str) -> None:
    """Tell the caller why an interpreter ended before its time (it failed to start, say): the
    map raises it, instead of taking the worker for one that crashed."""
    error = RuntimeError(f"a worker interpreter failed: {failure.strip().splitlines()[-1]}")
    message = dumps(to_wire(InitFailed(Failure(error, -1, failure, remote=True))))
    with contextlib.suppress(OSError):
        multiprocessing.connection.Connection(os.dup(reply_write), readable=False).send_bytes(
            message
        )


def _close(worker: _Worker) -> None:
    """Let go of the caller's ends of a worker's pipes (asking it to stop first)."""
    _stop(worker)
    worker.tasks.close()
    worker.conn.close()


_stopping = threading.Lock()


def _memory_file(nbytes: int) -> int:
    """A descriptor of ``nbytes`` of zeroed memory that any interpreter of this process can map."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("parallelize-status")
    else:
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, nbytes)
    return fd


def _load_reply(raw: bytes) -> Any:
    """A worker's message, unpickled, its failures explained where an extension module refused
    the interpreter; Unreadable when it cannot be unpickled here."""
    try:
        message = from_wire(pickle.loads(raw))
    except Exception as exc:
        return Unreadable(exc)
    if isinstance(message, InitFailed):
        return InitFailed(_explained(message.failure))
    if isinstance(message, Done) and message.failed:
        values = [_explained(v) if type(v) is Failure else v for v in message.values]
        return message._replace(values=values)
    return message


def _explained(failure: Failure) -> Failure:
    """``failure``, or an ImportError naming the extension module that refused to load in a
    subinterpreter, and what to do about it."""
    found = _REFUSED.search(f"{failure.error}\n{failure.tb or ''}")
    if found is None:
        return failure
    module = found.group(1)
    package = module.partition(".")[0]
    error = ImportError(
        f"{package} cannot be imported in a subinterpreter: its extension module {module} does "
        f'not support loading in subinterpreters. Run this map with backend="process"',
        name=module,
    )
    error.__cause__ = failure.error
    return Failure(error, failure.index, failure.tb, remote=True)


class InterpreterBackend(Backend):
    """Runs jobs on warm :class:`InterpreterPool` objects, one idle pool kept per configuration
    (the least recently used closed first, past :func:`warm_workers` interpreters)."""

    name = "interpreters"

    def __init__(self) -> None:
        check_python()
        self._idle: IdlePools[InterpreterPool] = IdlePools()
        _backends.add(self)

    @contextlib.contextmanager
    def open(self, options: Resolved, *, private: bool = False) -> Iterator[InterpreterPool]:
        init_blob = None
        if options.initializer is not None:
            init = (options.initializer, options.initargs)
            init_blob = dumps_function(init, options.initializer)
        key = _PoolKey((options.workers, init_blob, options.max_tasks_per_worker))
        pool = InterpreterPool(key) if private else self._idle.take(key, InterpreterPool)
        try:
            yield pool
        finally:
            self._checkin(pool, private)

    def _checkin(self, pool: InterpreterPool, private: bool) -> None:
        if private or pool.broken or any(w.queue for w in pool.workers):
            pool.close()
            return
        self._idle.keep(pool, warm_workers())

    def shutdown(self) -> None:
        self._idle.close_all()


# Every pool, the private ones of concurrent maps included, closed at exit.
_all_pools: weakref.WeakSet[InterpreterPool] = weakref.WeakSet()
_backends: weakref.WeakSet[InterpreterBackend] = weakref.WeakSet()


def _shutdown_all() -> None:
    for backend in list(_backends):
        backend.shutdown()
    for pool in list(_all_pools):
        pool.close()


def _before_fork() -> None:
    """A child forked from a process that holds subinterpreters aborts as it starts (CPython
    gh-101437): close the idle ones first. The next map starts them anew; those of a map that
    runs, or waits for its caller, cannot be closed (docs/backends.md says so)."""
    for backend in list(_backends):
        backend.shutdown()


at_exit(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)
