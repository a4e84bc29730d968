"""The shared counter on this machine: a file in ``/dev/shm``, its lock and its lifetime.

See the package docstring for the design.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import mmap
import operator
import os
import secrets
import struct
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from multiprocessing import resource_tracker
from typing import Any, Final, Protocol, final

from .._lifecycle import at_exit, bootstrapping, on_worker_lost
from . import mutex

__all__ = [
    "CounterEngine",
    "CounterLock",
    "CounterStorage",
    "FileStorage",
    "SharedCounter",
    "crossing",
    "shared_counter",
]

# Memory-backed, and the directory whose entries shm_unlink() removes: that is what lets the
# resource tracker's "shared_memory" cleanup delete a counter file whose creator was SIGKILLed.
_SHM_DIRECTORY: Final = "/dev/shm"
_PREFIX: Final = "parallelize-counter-"
# The file starts with four int64 words: the value, whether the creator's tracker registration is
# still live, the inode of that tracker's pipe (to tell whether we share it), and a magic number.
# The lock (a pthread mutex) lives at byte 64, on a cache line of its own.
_VALUE, _TRACKED, _TRACKER, _MAGIC = 0, 1, 2, 3
_HEADER: Final = 32
_MUTEX_AT: Final = 64
_SIZE: Final = _MUTEX_AT + mutex.MUTEX_SIZE
_MAGIC_NUMBER: Final = int.from_bytes(b"pzcount2", "little")
MIN_VALUE: Final = -(2**63)
MAX_VALUE: Final = 2**63 - 1
# Byte 0 carries the holders' liveness marks; byte 1 serializes the unlink decisions.
_LIVE_BYTE, _RELEASE_BYTE = 0, 1
# ``struct flock`` in native layout (l_type, l_whence, l_start, l_len, l_pid), padded at the end
# the way the C compiler pads it: what F_OFD_SETLK reads.
_FLOCK: Final = struct.Struct("hhqqi0q")
# A releaser holds its exclusive mark only for one unlink and one pipe write; a process adopting a
# counter after fork waits at most this long for it to finish, polling this often.
_ADOPT_PATIENCE: Final = 1.0
_ADOPT_POLL: Final = 5e-3
# mmap keeps a dup() of the descriptor unless told not to (3.13+): one descriptor per counter
# instead of two.
_MMAP_OPTIONS: Final[dict[str, Any]] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


class CounterLock(Protocol):
    """The recursive lock returned by :meth:`SharedCounter.get_lock`."""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc_info: object) -> None: ...


class CounterStorage(CounterLock, Protocol):
    """Where a counter's integer lives: the seam for other engines (issue 6).

    ``add`` is atomic and returns the new value. ``set`` and ``add`` take the storage's own
    recursive lock, so they also work while the caller holds it; ``get`` needs it only where one
    read is not atomic. Pickling a storage must give something that reaches the same integer in
    the receiving process.
    """

    def get(self) -> int: ...
    def set(self, value: int) -> None: ...
    def add(self, delta: int) -> int: ...


class CounterEngine(Protocol):
    """An engine's shared state for counters that cross into its tasks (see :func:`crossing`)."""

    def owns(self, storage: CounterStorage) -> bool:
        """Whether ``storage`` already lives in this engine (no move needed)."""
        ...

    def create(self, value: int) -> CounterStorage:
        """A new storage in this engine holding ``value``."""
        ...


_crossing: contextvars.ContextVar[CounterEngine | None] = contextvars.ContextVar(
    "parallelize_counter_crossing", default=None
)


@contextlib.contextmanager
def crossing(engine: CounterEngine) -> Iterator[None]:
    """Within the block, a :class:`SharedCounter` being pickled first moves into ``engine``.

    A backend wraps its own pickling of the function and items in it; pickling anywhere else is
    unchanged. The move is one-way: the counter lives in the engine from then on.
    """
    token = _crossing.set(engine)
    try:
        yield
    finally:
        _crossing.reset(token)


def _integer(value: object, what: str) -> int:
    """``value`` as an int; TypeError for floats, strings, bools and the like."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"a shared counter's {what} must be an integer, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"a shared counter's {what} must be an integer, not {type(value).__name__}"
        ) from None


def check_range(value: int) -> int:
    if not MIN_VALUE <= value <= MAX_VALUE:
        raise OverflowError(f"{value} does not fit a shared counter (a signed 64-bit integer)")
    return value


def _range_lock(fd: int, kind: int, byte: int, wait: bool = False) -> bool:
    """Set an OFD lock of ``kind`` on one byte; False if another open file holds a conflict."""
    command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _tracker_id() -> int:
    """The inode of this process's resource-tracker pipe (0 if it has none): equal means shared."""
    fd = getattr(resource_tracker._resource_tracker, "_fd", None)
    if fd is None:
        return 0
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return 0


def _same_file(fd: int, ino: int, dev: int) -> bool:
    try:
        stat = os.fstat(fd)
    except OSError:
        return False
    return stat.st_ino == ino and stat.st_dev == dev


class _Handle:
    """This process's OS resources for one counter; kept apart so a finalizer can release them."""

    __slots__ = (
        "address", "closed", "creator", "dev", "fd", "held", "inherited", "ino", "mm", "path",
        "pid", "view",
    )  # fmt: skip

    def __init__(self, path: str, fd: int, creator: bool):
        stat = os.fstat(fd)
        self.path = path
        self.ino = stat.st_ino
        self.dev = stat.st_dev
        self.fd = fd  # ours: holds the liveness mark; -1 after a fork until adopted
        self.pid = os.getpid()
        self.creator = creator
        self.inherited: list[int] = []  # descriptors copied in by fork, closed on release
        self.closed = False
        self.held = 0  # how many times acquire() holds the mutex, over this process's threads
        # Mapped once for this process's life with the counter: a fork child keeps the same shared
        # pages, and the mutex's address stays valid for every thread that may be waiting on it.
        # Through a descriptor of its own, closed at once: a mapping keeps its open file
        # description alive, and with it any liveness mark on it (a fork child's copy of the
        # mapping would then keep a killed parent's mark, and the file would never be removed).
        private = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.mm = mmap.mmap(private, _SIZE, **_MMAP_OPTIONS)
        finally:
            os.close(private)
        self.view = memoryview(self.mm).cast("q")
        self.address = mutex.address_of(self.mm, _MUTEX_AT)

    def forked(self) -> None:
        """In a fork child: what was ours is now only a copy of the parent's."""
        if self.fd >= 0:
            self.inherited.append(self.fd)
            self.fd = -1
        self.creator = False
        self.held = 0  # the parent's threads hold it, not this process's

    def adopt(self) -> None:
        """In a fork child, on first use: open the file afresh and mark ourselves a holder."""
        fd = -1
        for old in self.inherited:  # /proc reopens the very same file, even if already unlinked
            if _same_file(old, self.ino, self.dev):
                fd = os.open(f"/proc/self/fd/{old}", os.O_RDWR | os.O_CLOEXEC)
                break
        if fd < 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            if not _same_file(fd, self.ino, self.dev):
                os.close(fd)
                raise FileNotFoundError(errno.ENOENT, "shared counter no longer exists", self.path)
        self._close_copies()
        deadline = time.monotonic() + _ADOPT_PATIENCE
        while not _range_lock(fd, fcntl.F_RDLCK, _LIVE_BYTE):
            if time.monotonic() > deadline:
                os.close(fd)
                raise OSError(errno.EAGAIN, "shared counter is stuck in release", self.path)
            time.sleep(_ADOPT_POLL)
        self.fd = fd
        self.pid = os.getpid()

    def _close_copies(self) -> None:
        for fd in self.inherited:
            if _same_file(fd, self.ino, self.dev):
                os.close(fd)
        self.inherited.clear()

    def release(self, unmap: bool = True) -> None:
        """Let go of the counter in this process; unlink it if no other process holds it.

        ``unmap=False`` (at exit) keeps the memory mapped: a daemon thread may still be inside
        the lock, and the process's end unmaps it anyway.
        """
        if self.closed:
            return
        self.closed = True
        fd = self.fd
        try:
            if fd >= 0 and self.pid == os.getpid():
                self._decide(fd)
        finally:
            self._close_copies()
            if unmap:
                self.view.release()
                self.mm.close()
            if fd >= 0 and self.pid == os.getpid():
                os.close(fd)
            self.fd = -1

    def _decide(self, fd: int) -> None:
        _range_lock(fd, fcntl.F_WRLCK, _RELEASE_BYTE, wait=True)
        try:
            last = _range_lock(fd, fcntl.F_WRLCK, _LIVE_BYTE)  # atomic upgrade of our own mark
            if last:
                # FileNotFoundError: a fork child's copy of a counter its parent already let go.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            view = self.view
            if view[_TRACKED] and (self.creator or (last and view[_TRACKER] == _tracker_id() != 0)):
                # The creator hands over to the liveness marks, or a creator that died without
                # letting go is unregistered by the last holder sharing its tracker.
                view[_TRACKED] = 0
                resource_tracker.unregister(_shm_name(self.path), "shared_memory")
        finally:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 2, 0))


def _shm_name(path: str) -> str:
    return "/" + os.path.basename(path)


def sweep_orphans() -> None:
    """Unlink the counter files in ``/dev/shm`` that no process holds.

    Called when a worker died or was killed: a holder that dies leaves no one to unlink a counter
    whose creator had already let go (and handed its resource-tracker entry over to the holders'
    liveness marks). A file still marked by a holder, being released, not fully created (no magic
    number yet) or still registered with a resource tracker is left alone.
    """
    try:
        names = os.listdir(_SHM_DIRECTORY)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        path = os.path.join(_SHM_DIRECTORY, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # gone already, or another user's
        try:  # closing the descriptor drops the locks taken here
            if os.fstat(fd).st_size != _SIZE:
                continue
            if not _range_lock(fd, fcntl.F_WRLCK, _RELEASE_BYTE):
                continue
            if not _range_lock(fd, fcntl.F_WRLCK, _LIVE_BYTE):
                continue
            words = struct.unpack("4q", os.pread(fd, _HEADER, 0))
            if words[_MAGIC] == _MAGIC_NUMBER and not words[_TRACKED]:
                named = os.stat(path)  # still this file under that name
                if _same_file(fd, named.st_ino, named.st_dev):
                    os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


@final
class FileStorage:
    """A counter in a small ``/dev/shm`` file, for the processes and threads of this machine.

    One instance per counter per process: reopening a name this process already holds returns the
    same object, so all its copies share one lock.
    """

    __slots__ = ("__weakref__", "_fd", "_handle", "_mutex", "_view", "name")

    def __init__(self, name: str, handle: _Handle):
        self.name = name
        self._handle = handle
        self._fd = handle.fd  # -1 when this process must adopt (after fork) or has let go
        self._view = handle.view
        self._mutex = handle.address
        weakref.finalize(self, _let_go, handle).atexit = False  # exit is _release_all's job

    @classmethod
    def create(cls, value: int) -> FileStorage:
        """A new counter holding ``value``."""
        directory = _SHM_DIRECTORY if os.path.isdir(_SHM_DIRECTORY) else None
        if directory is None:
            raise OSError(errno.ENOENT, "shared_counter needs /dev/shm (Linux)", _SHM_DIRECTORY)
        if mutex.UNAVAILABLE is not None:
            raise OSError(errno.ENOSYS, mutex.UNAVAILABLE)
        name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            resource_tracker.register(_shm_name(path), "shared_memory")
            # The mark before the size: a sweep skips files of any other size, so it never holds
            # this byte of a new counter (which would leave the creator without its mark).
            _range_lock(fd, fcntl.F_RDLCK, _LIVE_BYTE)
            os.ftruncate(fd, _SIZE)
            handle = _Handle(path, fd, creator=True)
            mutex.init(handle.address)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            resource_tracker.unregister(_shm_name(path), "shared_memory")
            raise
        view = handle.view
        view[_VALUE] = value
        view[_TRACKED] = 1
        view[_TRACKER] = _tracker_id()
        view[_MAGIC] = _MAGIC_NUMBER
        return _remember(cls(name, handle))

    @classmethod
    def attach(cls, name: str) -> FileStorage:
        """The counter called ``name``; FileNotFoundError once its last holder has let go."""
        with _here.lock:
            storage = _live.get(name)
        if storage is not None:
            return storage
        if not name.startswith(_PREFIX) or "/" in name:
            raise ValueError(f"{name!r} is not a shared counter's name")
        path = os.path.join(_SHM_DIRECTORY, name)
        gone = FileNotFoundError(
            errno.ENOENT,
            "shared counter no longer exists: every process holding it has let go "
            "(keep a reference until the receiver has unpickled it)",
            path,
        )
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise gone from None
        try:
            # A release that found itself last holds an exclusive mark until it has unlinked.
            if not _range_lock(fd, fcntl.F_RDLCK, _LIVE_BYTE) or os.fstat(fd).st_nlink == 0:
                raise gone
            if os.fstat(fd).st_size < _SIZE:
                raise ValueError(f"{path} is not a shared counter")
            handle = _Handle(path, fd, creator=False)
        except BaseException:
            os.close(fd)
            raise
        if handle.view[_MAGIC] != _MAGIC_NUMBER:
            handle.release()
            raise ValueError(f"{path} is not a shared counter")
        return _remember(cls(name, handle))

    def __reduce__(self) -> tuple[Any, ...]:
        # A module-level function: cloudpickle would ship a classmethod by value, globals and all.
        return (_attach, (self.name,))

    def _forked(self) -> None:
        self._fd = -1
        self._handle.forked()

    def _revive(self) -> None:
        """In a fork child, on first use: adopt the counter (become a holder of the file)."""
        with _here.adopting:
            handle = self._handle
            if handle.closed:
                raise ValueError(f"shared counter {self.name} was released by this process at exit")
            if self._fd < 0:
                handle.adopt()
                self._fd = handle.fd

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock (recursively); False if it was not free in time."""
        if self._fd < 0:
            self._revive()
        if not mutex.lock(self._mutex, block, timeout):
            return False
        self._handle.held += 1
        return True

    def release(self) -> None:
        """Release the lock once; RuntimeError if this thread does not hold it."""
        handle = self._handle
        handle.held -= 1  # while the mutex still excludes the other threads
        try:
            mutex.release(self._mutex)
        except BaseException:
            handle.held += 1
            raise

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def get(self) -> int:
        # No lock needed: the value is an aligned 8-byte word, read in one load, and every
        # writer stores it whole under the lock, so a read sees the value before or after an
        # update, never part of one. The memory stays mapped while this object lives.
        return self._view[_VALUE]

    def set(self, value: int) -> None:
        check_range(value)
        with self:
            self._view[_VALUE] = value

    def add(self, delta: int) -> int:
        # The hot path: one try of the mutex (no system call when it is free, or held by this
        # thread: it is recursive), the update, the unlock. Everything else (held by another
        # thread, a dead holder, a fork child that has not adopted the counter yet) goes the
        # long way, through acquire().
        address = self._mutex
        answer = _trylock(address) if self._fd >= 0 else -1
        if answer and (answer < 0 or not mutex.taken(address, answer)):
            with self:
                value = self._view[_VALUE] = check_range(self._view[_VALUE] + delta)
                return value
        try:
            view = self._view
            value = view[_VALUE] + delta
            if not MIN_VALUE <= value <= MAX_VALUE:
                check_range(value)
            view[_VALUE] = value
        finally:
            _unlock(address)
        return value

    def _close_at_exit(self) -> None:
        # The memory stays mapped: another thread may be inside the lock.
        self._fd = -1
        self._handle.release(unmap=False)

    def __repr__(self) -> str:
        return f"FileStorage({self.name!r})"


def _attach(name: str) -> FileStorage:
    return FileStorage.attach(name)


# Counters let go of while a thread of this process held their lock: the mutex is on that
# thread's robust list, which the kernel walks when the thread ends (to hand it on), so its
# memory stays mapped until the process ends.
_held_at_death: list[_Handle] = []


def _let_go(handle: _Handle) -> None:
    """A FileStorage was garbage-collected: let go of its counter."""
    if handle.held:
        _held_at_death.append(handle)
        handle.release(unmap=False)
    else:
        handle.release()


_trylock = mutex.trylock
_unlock = mutex.unlock


# This process's counters by name, so every copy of one counter shares one lock.
_live: weakref.WeakValueDictionary[str, FileStorage] = weakref.WeakValueDictionary()


class _ThisProcess:
    """Bookkeeping that belongs to one process, started afresh in a fork child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards _live's check-then-insert
        self.birth = threading.Lock()  # one file per deferred counter (see _Deferred)
        self.adopting = threading.Lock()  # one adoption per counter in a fork child


_here = _ThisProcess()


def _remember(storage: FileStorage) -> FileStorage:
    """Record a storage just opened; if another thread opened the same name first, use that one."""
    with _here.lock:
        existing = _live.get(storage.name)
        if existing is None:
            _live[storage.name] = storage
    if existing is not None:
        storage._fd = -1
        storage._handle.release()  # our duplicate, never used: the other one keeps the mark
        return existing
    return storage


def _release_all() -> None:
    """Let go of every counter this process holds (its exit, however multiprocessing ends it)."""
    for storage in list(_live.values()):
        storage._close_at_exit()


def _after_fork_in_child() -> None:
    global _here
    _here = _ThisProcess()
    for storage in list(_live.values()):
        storage._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
# Last of all at exit, in the caller and in every worker (which may hold the caller's counters).
at_exit(_release_all, last=True)
# A worker that did not exit cleanly may have been the last holder of a counter.
on_worker_lost(sweep_orphans)


@final
class _Deferred:
    """The storage of a counter made while ``multiprocessing`` bootstraps this process.

    A spawn or forkserver worker runs the caller's script again, and imports what the script
    imports, so a ``shared_counter()`` at module level is made again there: a copy that is not
    the caller's counter (the caller's reaches the worker pickled, with the function's globals or
    its arguments) and that is usually never used. Its :class:`FileStorage` is created when it is
    first used or pickled; until then it is only ``value``, in this object, so no other process
    can have seen it, and a worker that never uses it leaves no file and tells no resource tracker.
    (A child forked before then gets a copy of the value, not the counter: this copy was never
    shared.) The counters of the caller itself are created at once; their hot path is unchanged.
    """

    __slots__ = ("_file", "_value")

    def __init__(self, value: int):
        self._value = value
        self._file: FileStorage | None = None

    def _born(self) -> FileStorage:
        file = self._file
        if file is None:
            with _here.birth:
                file = self._file
                if file is None:
                    file = self._file = FileStorage.create(self._value)
        return file

    def get(self) -> int:
        return self._born().get()

    def set(self, value: int) -> None:
        self._born().set(value)

    def add(self, delta: int) -> int:
        return self._born().add(delta)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return self._born().acquire(block, timeout)

    def release(self) -> None:
        self._born().release()

    def __enter__(self) -> bool:
        return self._born().acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._born().release()

    def __reduce__(self) -> tuple[Any, ...]:
        return self._born().__reduce__()

    def __repr__(self) -> str:
        if self._file is None:
            return f"_Deferred(value={self._value})"
        return f"_Deferred({self._file!r})"


@final
class SharedCounter:
    """A 64-bit signed integer shared by every process and thread that holds it.

    Create one with :func:`shared_counter`. It pickles to a name, so it can be passed to
    ``multiprocessing.Process``, to ``pmap`` items or arguments, or captured in a closure.
    ``increment`` and ``decrement`` are atomic; for compound updates hold :meth:`get_lock`, a
    recursive lock that also covers setting ``value`` (reading it takes no lock: one atomic
    read). Out-of-range results raise ``OverflowError``
    and leave the value unchanged.

    ``SharedCounter(storage)`` wraps any :class:`CounterStorage`; that is the seam where other
    engines plug in their own shared state. Pickled by a Dask or Ray map, the counter moves into
    that engine (see :func:`crossing`), and this object then reads and updates it there.
    """

    __slots__ = ("__weakref__", "_moving", "_storage")

    def __init__(self, storage: CounterStorage):
        self._storage = storage
        self._moving = threading.Lock()  # one move at a time, when two maps pickle it at once

    @property
    def value(self) -> int:
        """The current value (one atomic read: no update is ever seen half done)."""
        return self._storage.get()

    @value.setter
    def value(self, value: int) -> None:
        self._storage.set(_integer(value, "value"))

    def increment(self, n: int = 1) -> int:
        """Add ``n`` atomically; the new value."""
        return self._storage.add(n if type(n) is int else _integer(n, "step"))

    def decrement(self, n: int = 1) -> int:
        """Subtract ``n`` atomically; the new value."""
        return self._storage.add(-_integer(n, "step"))

    def get_lock(self) -> CounterLock:
        """The counter's recursive lock, shared by every process: hold it for compound updates."""
        return self._storage

    def __reduce__(self) -> tuple[Any, ...]:
        engine = _crossing.get()
        if engine is not None:
            self._move_to(engine)
        return (SharedCounter, (self._storage,))

    def _move_to(self, engine: CounterEngine) -> None:
        """Carry the value into a new storage of ``engine`` (once) and use that from now on."""
        with self._moving:
            old = self._storage
            if engine.owns(old):
                return
            with old:  # holding the old lock: no update through it is lost in the move
                self._storage = engine.create(old.get())

    def __repr__(self) -> str:
        try:
            return f"SharedCounter({self._storage.get()})"
        except (OSError, ValueError):
            return "SharedCounter(<released>)"


def shared_counter(value: int = 0) -> SharedCounter:
    """A new :class:`SharedCounter` starting at ``value``; TypeError if that is not an integer.

    >>> c = shared_counter(1)
    >>> c.increment(2)
    3
    >>> with c.get_lock():
    ...     c.value += 1
    >>> c
    SharedCounter(4)
    """
    start = check_range(_integer(value, "initial value"))
    if bootstrapping():  # a worker running the caller's module-level code again: see _Deferred
        return SharedCounter(_Deferred(start))
    return SharedCounter(FileStorage.create(start))
