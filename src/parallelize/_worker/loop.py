"""The loop a worker runs, in a process of the pool, a subinterpreter, or a thread of the thread
backend.

It reads the messages of :mod:`parallelize._wire.protocol`: in a process or an interpreter,
pickled from a pipe (see :func:`process_main`, :func:`interpreter_main`); in a thread, as the
objects themselves (see :func:`serve`).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import pickle
import queue
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from .._errors import Failure, SerializationError
from .._lifecycle import enter_worker
from .._threadlimits import limit_native_threads
from .._wire import sharedmem
from .._wire.pickling import dumps, picklable_values
from .._wire.protocol import (
    CALL_CACHE,
    READY,
    Call,
    Cancelled,
    Done,
    GiveBack,
    InitFailed,
    Load,
    Output,
    Task,
    from_wire,
    to_wire,
)
from . import output
from .chunk import SLOT_WIDTH, Status, run_chunk
from .init import StartInit, hand_globals, initialize, initialize_started
from .memory import resident_bytes

# After its parent is gone, a worker busy in a long item gets this long before it exits anyway,
# so that no orphan outlives the caller.
ORPHAN_GRACE: Final = 1.0


def serve(
    receive: Callable[[], Any],
    send: Callable[[Any], None],
    status: Status,
    max_items: int | None,
    *,
    remote: bool = False,
) -> None:
    """Run chunks until told to stop, or until ``max_items`` items have run.

    ``remote``: this is a worker process, whose output is captured process-wide (a thread
    worker's, in the caller's process, only for its own thread).
    """
    calls: collections.OrderedDict[int, Call] = collections.OrderedDict()
    done = 0

    def send_output(entries: list[Any]) -> None:
        send(Output(entries))

    def index() -> int:
        return status.index

    capturer = output.Capturer(send_output, index, remote=remote)
    while True:
        message = receive()
        if message is None:
            return
        if type(message) is Load:
            calls[message.call_id] = message.call
            hand_globals(message.call.fn)
            if len(calls) > CALL_CACHE:
                calls.popitem(last=False)
            continue
        ran, retiring = _run_task(message, calls[message.call_id], send, status, capturer)
        done += ran
        message = None  # nothing of the chunk stays alive while the worker waits
        if retiring or (max_items is not None and done >= max_items):
            return


def _run_task(
    task: Task,
    call: Call,
    send: Callable[[Any], None],
    status: Status,
    capturer: output.Capturer,
) -> tuple[int, bool]:
    """Run one chunk and reply (after the chunk's last output): how many items it had, and
    whether the worker is to retire now (over its memory limit). Its items and results die with
    this frame, so an idle worker holds nothing of the last chunk."""
    begun = capturer.begin(call)
    retiring = False
    try:
        if call.memory_limit is None:
            outcome = run_chunk(call, task.task_id, task.start, task.items, task.retries, status)
        else:
            outcome, retiring = _run_within(call, task, status, call.memory_limit)
    finally:
        if begun is not None:
            capturer.end(begun)
    if outcome is None:
        send(Cancelled(task.task_id))
        return len(task.items), False  # the scheduler charged them to this worker's budget too
    values, seconds, failed, measured = outcome
    send(Done(task.task_id, task.start, values, seconds, failed, measured, retiring))
    return len(task.items), retiring


def _run_within(
    call: Call, task: Task, status: Status, limit: int
) -> tuple[tuple[list[Any], float, bool, Any] | None, bool]:
    """Run a chunk item by item, reading the worker's resident memory after each: the outcome
    of the items run, and whether the worker went over ``limit`` (it stops there, to retire
    before it takes more work; the scheduler sends the rest elsewhere)."""
    values: list[Any] = []
    seconds, failed, measured = 0.0, False, None
    for offset in range(len(task.items)):
        index = task.start + offset
        one = run_chunk(
            call, task.task_id, index, task.items[offset : offset + 1], task.retries, status
        )
        if one is None:
            return None, False
        values += one[0]
        seconds += one[1]
        failed = failed or one[2]
        measured = _merged(measured, one[3])
        if one[2] and not call.keep_going:
            break
        if resident_bytes() > limit:
            return (values, seconds, failed, measured), True
    return (values, seconds, failed, measured), False


def _merged(
    total: tuple[int, float, int, int] | None, one: tuple[int, float, int, int] | None
) -> tuple[int, float, int, int] | None:
    """Two measured runs as one: the slower item, the retries and timeouts of both."""
    if total is None or one is None:
        return one or total
    slowest = total if total[1] >= one[1] else one
    return (slowest[0], slowest[1], total[2] + one[2], total[3] + one[3])


def _encode_result(message: Done | Cancelled | Output, shared: bool) -> bytes:
    """Pickle a worker's reply (large buffers through shared memory when ``shared``); an
    unpicklable result becomes that item's SerializationError."""
    if shared:
        try:
            return sharedmem.dumps_reply(to_wire(message))
        except KeyboardInterrupt:
            raise
        except BaseException:  # a result whose pickling calls sys.exit() included
            pass
    try:
        return dumps(to_wire(message))  # cloudpickle takes what the standard pickler refused
    except KeyboardInterrupt:
        raise
    except BaseException:
        if type(message) is not Done:
            raise
    values = picklable_values(message.values, message.start)
    return dumps(to_wire(message._replace(values=values, failed=True)))


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
    init_blob: bytes | StartInit | None,
    max_items: int | None,
    inherited_fds: Sequence[int],
    native_threads: int,
    replies: tuple[str, int],
    idle_seconds: float,
    own_exit_handlers: bool,
) -> None:
    """Entry point of a worker process: work comes in on ``inbound``, replies go out on ``conn``.
    ``own_exit_handlers``: it is a fresh interpreter (spawn), whose ``atexit`` handlers are all
    its own and run as it ends (a forked one's came from its parent, and never run)."""
    enter_worker()
    sharedmem.configure_replies(*replies)
    limit_native_threads(native_threads)
    # Ctrl-C goes to the whole foreground process group; the parent decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in inherited_fds:  # under fork: the parent's ends of other workers' pipes
        with contextlib.suppress(OSError):
            os.close(fd)
    view = memoryview(status_array).cast("B").cast("q")
    status = Status(view[slot * SLOT_WIDTH : (slot + 1) * SLOT_WIDTH])

    def start_reader(inbox: queue.SimpleQueue[bytes | None]) -> None:
        reader = threading.Thread(target=_read, args=(inbound, inbox), daemon=True, name="reader")
        try:
            reader.start()
        except RuntimeError:  # forked by a daemon thread as the caller's interpreter began to
            _end_process()  # shut down (Python 3.12+): no thread can start here, nor work

    # The caller closed the pipe (it is shutting down, or gone) while this worker was busy:
    # nobody wants the reply, and a traceback about it would only alarm the user.
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            _serve_pipes(
                start_reader, conn, status, init_blob, max_items, idle_seconds, shared=True
            )
    finally:
        sharedmem.release_replies()
    _end_process(exit_handlers=own_exit_handlers)


def interpreter_main(
    task_fd: int,
    reply_fd: int,
    status_fd: int,
    stop_fds: tuple[int, int],
    init_blob: bytes | None,
    max_items: int | None,
) -> None:
    """Entry point of a worker subinterpreter, run by a thread of the caller's process: work comes
    in on the pipe ``task_fd``, replies go out on ``reply_fd``, ``status_fd`` is the memory file of
    its status slot, and a byte on the pipe ``stop_fds`` ends it after its chunk. The descriptors
    are its thread's, closed there once this returns; the connections here work on copies."""
    enter_worker()
    inbound, conn = _Pipe(task_fd), _Pipe(reply_fd)
    block = mmap.mmap(status_fd, SLOT_WIDTH * 8, **_NO_DUP)
    status = Status(memoryview(block).cast("B").cast("q"))
    stop_read, stop_write = stop_fds
    readers: list[threading.Thread] = []  # an interpreter ends only once its threads have

    def start_reader(inbox: queue.SimpleQueue[bytes | None]) -> None:
        reader = threading.Thread(
            target=_read_until, args=(inbound, stop_read, inbox), name="reader"
        )
        reader.start()
        readers.append(reader)

    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the caller let go
            _serve_pipes(start_reader, conn, status, init_blob, max_items, None, shared=False)
    finally:
        with contextlib.suppress(OSError):  # the pipe is full: a stop is pending anyway
            os.write(stop_write, b"!")
        for reader in readers:
            reader.join()
        _flush()


class _Pipe:
    """One end of a pipe, framing messages as ``multiprocessing.connection`` does (the caller's
    end is a Connection): an interpreter worker starts faster without importing
    ``multiprocessing``. It does not own its descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def send_bytes(self, data: bytes) -> None:
        size = len(data)
        header = struct.pack("!i", size) if size <= _SMALL else struct.pack("!iQ", -1, size)
        view = memoryview(header + data) if size <= 16384 else None
        if view is None:
            self._write(memoryview(header))
            view = memoryview(data)
        self._write(view)

    def _write(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self.fd, view) :]

    def recv_bytes(self) -> bytes:
        (size,) = struct.unpack("!i", self._read(4))
        if size == -1:
            (size,) = struct.unpack("!Q", self._read(8))
        return self._read(size)

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.fd, size)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


# mmap keeps a dup() of the descriptor unless told not to (3.13+, the Pythons with interpreter
# workers): the thread that runs the interpreter owns it.
_NO_DUP: Final[dict[str, Any]] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
# The largest message whose length fits the short (4-byte) header.
_SMALL: Final = 0x7FFFFFFF


def _serve_pipes(
    start_reader: Callable[[queue.SimpleQueue[bytes | None]], None],
    conn: Any,
    status: Status,
    init_blob: bytes | StartInit | None,
    max_items: int | None,
    idle_seconds: float | None,
    *,
    shared: bool,
) -> None:
    """A pipe worker's life, in a process or an interpreter: run the initializer, say READY,
    then serve the chunks that ``start_reader``'s thread reads into its inbox and reply on
    ``conn``; ``shared``: large buffers of replies go through shared memory."""
    if init_blob is not None:
        status.begin_initializer()
        if isinstance(init_blob, StartInit):
            failure = initialize_started(init_blob)
        else:
            failure = initialize(init_blob)
        if failure is not None:
            # The caller may have closed this pipe already: another worker's report came first.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.send_bytes(dumps(to_wire(InitFailed(failure))))
            return
        status.end_initializer()

    # Only now is this worker sent work, so a short map is not held up by a slow-starting one.
    conn.send_bytes(pickle.dumps(to_wire(READY)))
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    start_reader(inbox)

    def receive() -> Any:
        while True:
            # Reply segments kept for reuse are freed once the pool has been idle a while.
            idle = idle_seconds if shared and sharedmem.replies_idle() else None
            try:
                raw = inbox.get(timeout=idle)
            except queue.Empty:
                sharedmem.release_replies()
                continue
            if raw is None:
                return None
            try:
                message = from_wire(sharedmem.load(raw))
            except Exception as exc:  # report it, rather than die with it on stderr alone
                error = SerializationError(f"a worker could not unpickle what it was sent: {exc!r}")
                error.__cause__ = exc
                conn.send_bytes(dumps(to_wire(InitFailed(Failure.capture(error, -1)))))
                return None
            if type(message) is not GiveBack:
                return message
            sharedmem.given_back(message.names)

    sending = threading.Lock()  # output may come from the user's threads too

    def send(message: Any) -> None:
        if type(message) is Output:  # plain text and records: no buffers to share, no flush
            blob = pickle.dumps(to_wire(message), pickle.HIGHEST_PROTOCOL)
            since = status.waits_to_send()  # a full pipe must not time the item out
            try:
                with sending:
                    conn.send_bytes(blob)
            finally:
                status.sent(since)
            return
        blob = _encode_result(message, shared)
        with sending:
            conn.send_bytes(blob)
        _flush()

    serve(receive, send, status, max_items, remote=True)


def _read_until(conn: Any, stop_fd: int, inbox: queue.SimpleQueue[bytes | None]) -> None:
    """Read the pipe ahead of an interpreter's loop until it ends, the caller closes the pipe, or
    a byte arrives on ``stop_fd``. (poll, not select: an interpreter's descriptors are the
    caller's, whose numbers may pass select's limit of 1024.) Whatever ends it ends the loop."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    try:
        while all(fd != stop_fd for fd, _ in poller.poll()):
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        pass
    finally:
        inbox.put(None)


def _read(conn: Any, inbox: queue.SimpleQueue[bytes | None]) -> None:
    """Read the pipe ahead of the main loop: the scheduler's writes never wait on a busy item."""
    try:
        while True:
            inbox.put(conn.recv_bytes())
    except (EOFError, OSError):
        inbox.put(None)
    # The parent closed the pipe or died. An idle main loop has exited by now; a busy one gets a
    # grace period, then the process ends so that it is not left orphaned.
    time.sleep(ORPHAN_GRACE)
    _end_process()


def _end_process(*, exit_handlers: bool = False) -> None:
    """End this worker process now, its work done: flush its output, release what
    multiprocessing holds for it and, with ``exit_handlers``, run the ``atexit`` handlers, but
    do not wait for threads the user's code left running (a module or an initializer that
    started a non-daemon thread): waiting, the worker would never exit, delay the caller's exit
    until it is killed, and outlive a caller that died (keeping the fork server alive too)."""
    if exit_handlers:
        import atexit

        atexit._run_exitfuncs()
    _flush()
    import multiprocessing.util  # imported by every process multiprocessing starts

    multiprocessing.util._exit_function()  # type: ignore[attr-defined]  # release what we hold
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
