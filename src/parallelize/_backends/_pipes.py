"""What the backends whose workers read pickled messages from a pipe share (processes and
interpreters): loading a map's function into a worker once, waking a pool's wait, and reading
the workers' replies. (Keeping their idle pools warm is ``_warm``'s job.)"""

from __future__ import annotations

import contextlib
import math
import multiprocessing.connection
import os
import pickle
import select
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol, TypeVar, cast

from .._wire import sharedmem
from .._wire.pickling import FunctionPickle, Pickled
from .._wire.protocol import Call, Load, Ready, to_wire
from .base import DEAD

# Maps whose function pickles to the same bytes share one id, so a warm worker loads it once;
# a pool remembers the last CALL_IDS_KEPT functions, and at most CALL_BYTES_KEPT of their pickles.
CALL_IDS_KEPT: Final = 64
CALL_BYTES_KEPT: Final = 1 << 28


class CallIds:
    """The call id of each pickled function a pool has loaded, the most recent ones."""

    def __init__(self) -> None:
        # The LOAD message is None once forgotten (forget_shared): made again, with the same id.
        self._ids: dict[bytes, tuple[int, bytes | sharedmem.Owned | None]] = {}
        self._bytes = 0

    def message(
        self, function: FunctionPickle, new_id: Callable[[], int], *, share: bool = False
    ) -> tuple[int, bytes | sharedmem.Owned]:
        """The id of ``function`` (a ``new_id()`` if it is new here), and the LOAD message that
        loads it into a worker (made once per id: a warm map of the same function sends it to no
        worker). With ``share``, the large buffers the function holds wait in shared memory for
        the workers to map, instead of being copied through each worker's pipe."""
        key = pickle.dumps(function, 5)  # its large buffers in-band: the key is what it holds
        known = self._ids.get(key)
        if known is not None and known[1] is not None:
            return known[0], known[1]
        shared = share and bool(function.buffers)
        if shared:  # the key and the segment from one snapshot of the user's arrays
            function = function.frozen()
            key = pickle.dumps(function, 5)
            known = self._ids.get(key)
            if known is not None and known[1] is not None:
                return known[0], known[1]
        if known is None:
            while self._ids and (
                len(self._ids) >= CALL_IDS_KEPT or self._bytes + len(key) > CALL_BYTES_KEPT
            ):
                oldest = next(iter(self._ids))
                del self._ids[oldest]
                self._bytes -= len(oldest)
            self._bytes += len(key)
        call_id = new_id() if known is None else known[0]
        load: bytes | sharedmem.Owned | None = None
        if shared:
            with contextlib.suppress(OSError):  # no segment to be had: through the pipe
                load = sharedmem.dumps_owned(to_wire(Load(call_id, cast(Call, function))))
        if load is None:  # the Call travels as the pickle it already is, and arrives as one
            load = pickle.dumps(to_wire(Load(call_id, cast(Call, Pickled(key)))), 5)
        self._ids[key] = (call_id, load)
        return call_id, load

    def clear(self) -> None:
        """Forget every function (the pool closes)."""
        self._ids.clear()
        self._bytes = 0

    def shares_memory(self) -> bool:
        """Whether some function's data waits in shared memory for workers yet to load it."""
        return any(isinstance(load, sharedmem.Owned) for _, load in self._ids.values())

    def forget_shared(self) -> None:
        """Let the segments of the functions' data go (the pool is idle). Their ids stay: a later
        map of one shares it anew under the same id, which the workers that loaded it keep."""
        for key, (call_id, load) in list(self._ids.items()):
            if isinstance(load, sharedmem.Owned):
                self._ids[key] = (call_id, None)


class WakePipe:
    """A pool's wait on its workers, which any thread can end early: a pipe waited on with theirs.

    One ``poll`` object for the pool's life, changed only when its workers change:
    :func:`multiprocessing.connection.wait` builds and fills a selector per call, a large share
    of the caller's time on a map of a few tiny items. File objects, not bare descriptors: once
    closed, a late wake() fails instead of writing to whatever reused the number.
    """

    __slots__ = ("_poller", "_read", "_watched", "_write")

    def __init__(self) -> None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._read = open(read, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self._write = open(write, "wb", buffering=0)  # noqa: SIM115
        self._poller = select.poll()
        self._poller.register(read, select.POLLIN)
        self._watched: set[int] = set()  # the descriptors registered besides the wake pipe's

    def wait(self, objects: list[Any], timeout: float | None) -> list[Any]:
        """Those of ``objects`` (connections, or descriptors such as process sentinels) that are
        readable or closed within ``timeout`` seconds, or sooner (maybe none) once woken."""
        by_fd = {obj if type(obj) is int else obj.fileno(): obj for obj in objects}
        if by_fd.keys() != self._watched:
            for fd in self._watched - by_fd.keys():
                self._poller.unregister(fd)
            for fd in by_fd.keys() - self._watched:
                self._poller.register(fd, select.POLLIN)
            self._watched = set(by_fd)
        wait_ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        ready = []
        for fd, _ in self._poller.poll(wait_ms):
            obj = by_fd.get(fd)
            if obj is not None:
                ready.append(obj)
            else:  # the wake pipe: every wake pending, so that the next wait blocks again
                self._read.read(4096)
        return ready

    def wake(self) -> None:
        # OSError: the pipe is full, so a wake is pending anyway; ValueError: the pool is closed.
        with contextlib.suppress(OSError, ValueError):
            self._write.write(b"!")

    def close(self) -> None:
        self._write.close()
        self._read.close()


def read_replies(conn: multiprocessing.connection.Connection) -> tuple[list[bytes], bool]:
    """The replies waiting in ``conn``, which a wait found ready, and whether the worker's end
    of it closed (the worker died or ended)."""
    raws = []
    try:
        raws.append(conn.recv_bytes())
        # Every reply already sent, before the scheduler reads the status slot: a finished
        # chunk must not look like one still running (and timing out).
        while _readable(conn):
            raws.append(conn.recv_bytes())
    except (EOFError, OSError):
        return raws, True
    return raws, False


def _readable(conn: multiprocessing.connection.Connection) -> bool:
    """Whether ``conn`` has something to read (or has ended) now: ``conn.poll()`` without the
    selector it builds."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class Replying(Protocol):
    """A worker whose replies come in through a pipe."""

    ready: bool

    @property
    def conn(self) -> multiprocessing.connection.Connection: ...


ReplyingT = TypeVar("ReplyingT", bound=Replying)


def finish_events(
    events: list[tuple[ReplyingT, Any]],
    dead: Iterable[ReplyingT],
    load: Callable[[bytes, ReplyingT], Any],
) -> list[tuple[ReplyingT, Any]]:
    """What a pool's wait returns: ``events``, its workers' messages, each worker that said
    Ready marked so (whoever reads the events, a Ready is never lost); then, for each dead
    worker, the messages it sent before it died (unpickled by ``load``) and DEAD."""
    for worker, event in events:
        if type(event) is Ready:
            worker.ready = True
    for worker in dict.fromkeys(dead):
        events.extend((worker, load(raw, worker)) for raw in _drain(worker.conn))
        events.append((worker, DEAD))
    return events


def _drain(conn: multiprocessing.connection.Connection) -> Iterator[bytes]:
    """The messages a dead worker sent before it died."""
    try:
        while conn.poll():
            yield conn.recv_bytes()
    except (EOFError, OSError):
        return
