"""The loop a worker runs, in a process of the pool or in a thread of the thread backend.

Messages in: ``(LOAD, call_id, call)`` once per map and worker, ``(TASK, task_id, call_id,
start, items, retries)`` per chunk, ``None`` to stop; and, to a process, ``(GIVE_BACK, names)``
for the reply segments the caller is done with. Messages out: ``(DONE, task_id,
start, values, seconds, failed)`` or ``(CANCELLED, task_id)`` per chunk; from a process,
``(READY,)`` once it can take work, or ``(INIT_FAILED,
failure)`` when the initializer raised. In a process the messages are pickled over a pipe; a
thread passes them as they are.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import multiprocessing.util
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast

from . import _sharedmem as sharedmem
from ._errors import SerializationError
from ._execute import SLOT_WIDTH, Call, Status, run_chunk
from ._serialization import (
    Failure,
    assigned_globals,
    dumps,
    find_unpicklable,
    share_globals,
    unpicklable_error,
)
from ._threadlimits import limit_native_threads

LOAD: Final = 0
TASK: Final = 1
DONE: Final = 2
CANCELLED: Final = 3
INIT_FAILED: Final = 4
GIVE_BACK: Final = 5
READY: Final = 6

# How many maps' functions a worker keeps; the dispatcher mirrors this to know what to resend.
CALL_CACHE: Final = 16
# After its parent is gone, a worker busy in a long item gets this long before it exits anyway,
# so that no orphan outlives the caller.
ORPHAN_GRACE: Final = 1.0

_in_worker = False
_task = threading.local()  # ``active``: this thread runs a Dask or Ray task (see engine_task)
# In a process worker: the globals its initializer from ``__main__`` assigned, for the mapped
# functions of ``__main__`` (see ``_serialization.assigned_globals``).
_initialized: dict[str, Any] = {}


def in_worker() -> bool:
    """True in a worker process, or in a thread running an engine task: a nested map runs
    serially there instead of starting a pool."""
    return _in_worker or getattr(_task, "active", False)


def enter_worker() -> None:
    """Mark this process as a worker (ours, or a Dask or Ray one): nested maps run serially."""
    global _in_worker
    _in_worker = True


@contextlib.contextmanager
def engine_task() -> Iterator[None]:
    """Around a Dask or Ray task: this thread counts as a worker while the task runs.

    Only this thread and only meanwhile: an engine that runs tasks in the caller's own process
    (Dask's ``processes=False``) must not turn the caller into a worker for good.
    """
    saved = getattr(_task, "active", False)
    _task.active = True
    try:
        yield
    finally:
        _task.active = saved


def serve(
    receive: Callable[[], Any],
    send: Callable[[Any], None],
    status: Status,
    max_items: int | None,
) -> None:
    """Run chunks until told to stop, or until ``max_items`` items have run."""
    calls: collections.OrderedDict[int, Call] = collections.OrderedDict()
    done = 0
    while True:
        message = receive()
        if message is None:
            return
        if message[0] == LOAD:
            call = calls[message[1]] = message[2]
            share_globals(call.fn, _initialized)
            if len(calls) > CALL_CACHE:
                calls.popitem(last=False)
            continue
        done += _run_task(message, calls, send, status)
        message = None  # nothing of the chunk stays alive while the worker waits
        if max_items is not None and done >= max_items:
            return


def _run_task(
    message: tuple[Any, ...], calls: dict[int, Call], send: Callable[[Any], None], status: Status
) -> int:
    """Run one chunk and reply; how many items it had. Its items and results die with this frame,
    so an idle worker holds nothing of the last chunk."""
    _, task_id, call_id, start, items, retries = message
    outcome = run_chunk(calls[call_id], task_id, start, items, retries, status)
    if outcome is None:
        send((CANCELLED, task_id))
        return len(items)  # the dispatcher charged them to this worker's budget too
    values, seconds, failed = outcome
    send((DONE, task_id, start, values, seconds, failed))
    return len(items)


def run_initializer(initializer: Any, initargs: Sequence[Any]) -> Failure | None:
    """Run the user's initializer; its failure, if it raised."""
    try:
        initializer(*initargs)
    except BaseException as exc:
        return Failure.capture(exc, -1)
    return None


def _encode_result(message: tuple[Any, ...]) -> bytes:
    """Pickle a worker's reply (large buffers through shared memory); an unpicklable result
    becomes that item's SerializationError."""
    try:
        return sharedmem.dumps_reply(message)
    except Exception:
        pass
    try:
        return dumps(message)  # cloudpickle takes what the standard pickler refused
    except Exception:
        if message[0] != DONE:
            raise
    _, task_id, start, values, seconds, _ = message
    values = list(values)
    while (found := find_unpicklable(values, start)) is not None:
        index, exc = found
        offset = index - start
        values[offset] = Failure.capture(
            unpicklable_error("result", index, values[offset], exc), index
        )
    return dumps((DONE, task_id, start, values, seconds, True))


def map_status(fd: Any, nbytes: int) -> mmap.mmap:
    """In a spawned worker: map the status slots from the descriptor it was sent."""
    own = fd.detach()
    try:
        return mmap.mmap(own, nbytes)
    finally:
        os.close(own)


def process_main(
    inbound: Any,
    conn: Any,
    status_array: Any,
    slot: int,
    init_blob: bytes | None,
    max_items: int | None,
    inherited_fds: Sequence[int],
    native_threads: int,
    replies: tuple[str, int],
    idle_seconds: float,
) -> None:
    """Entry point of a worker process: work comes in on ``inbound``, replies go out on ``conn``."""
    enter_worker()
    sharedmem.configure_replies(*replies)
    limit_native_threads(native_threads)
    # Ctrl-C goes to the whole foreground process group; the parent decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in inherited_fds:  # under fork: the parent's ends of other workers' pipes
        with contextlib.suppress(OSError):
            os.close(fd)
    view = memoryview(status_array).cast("B").cast("q")
    status = cast(Status, view[slot * SLOT_WIDTH : (slot + 1) * SLOT_WIDTH])

    if init_blob is not None:
        initializer, initargs = pickle.loads(init_blob)
        failure = run_initializer(initializer, initargs)
        if failure is not None:
            # The caller may have closed this pipe already: another worker's report came first.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.send_bytes(dumps((INIT_FAILED, failure)))
            return
        _initialized.update(assigned_globals(initializer))

    # Only now is this worker sent work, so a short map is not held up by a slow-starting one.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the caller is gone
        conn.send_bytes(pickle.dumps((READY,)))
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    threading.Thread(target=_read, args=(inbound, inbox), daemon=True, name="reader").start()

    def receive() -> Any:
        while True:
            # Reply segments kept for reuse are freed once the pool has been idle a while.
            idle = idle_seconds if sharedmem.replies_idle() else None
            try:
                raw = inbox.get(timeout=idle)
            except queue.Empty:
                sharedmem.release_replies()
                continue
            if raw is None:
                return None
            try:
                message = sharedmem.load(raw)
            except Exception as exc:  # report it, rather than die with it on stderr alone
                error = SerializationError(f"a worker could not unpickle what it was sent: {exc!r}")
                error.__cause__ = exc
                conn.send_bytes(dumps((INIT_FAILED, Failure.capture(error, -1))))
                return None
            if message[0] != GIVE_BACK:
                return message
            sharedmem.given_back(message[1])

    def send(message: tuple[Any, ...]) -> None:
        conn.send_bytes(_encode_result(message))
        _flush()

    # The caller closed the pipe (it is shutting down, or gone) while this worker was busy:
    # nobody wants the reply, and a traceback about it would only alarm the user.
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            serve(receive, send, status, max_items)
    finally:
        sharedmem.release_replies()
    _flush()


def _read(conn: Any, inbox: queue.SimpleQueue[bytes | None]) -> None:
    """Read the pipe ahead of the main loop: the dispatcher's writes never wait on a busy item."""
    try:
        while True:
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        inbox.put(None)
    # The parent closed the pipe or died. An idle main loop has exited by now; a busy one gets a
    # grace period, then the process ends so that it is not left orphaned.
    time.sleep(ORPHAN_GRACE)
    _flush()
    multiprocessing.util._exit_function()  # type: ignore[attr-defined]  # release what we hold
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
