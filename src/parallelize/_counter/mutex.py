"""The counter's lock: a robust, recursive, process-shared pthread mutex in mapped memory.

Why this lock: taking and giving back a free mutex is a futex compare-and-swap in user space,
with no system call (``flock`` makes two, about 0.5 us each on a virtual machine), and a robust
mutex whose holder dies is handed to the next locker with ``EOWNERDEAD``, where a
``multiprocessing`` semaphore held by a killed process stays taken for ever. glibc and musl have
it; ctypes reaches it. Recursive, so that the kernel's thread id, not a record kept in Python
(which a thread that dies holding it would leave stale), says which thread holds it.

Calls that cannot block (try, unlock, consistent) keep the GIL, which makes them cheaper; a wait
releases it and is cut into slices, so that signal handlers (Ctrl-C) run while a thread waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import time
from typing import Any, Final

__all__ = [
    "MUTEX_SIZE",
    "UNAVAILABLE",
    "address_of",
    "init",
    "lock",
    "release",
    "taken",
    "trylock",
    "unlock",
]

# Room for a pthread_mutex_t on every Linux ABI (40 bytes on x86-64, 48 on aarch64).
MUTEX_SIZE: Final = 64
# Room for a pthread_mutexattr_t (4 bytes on x86-64, 8 on aarch64).
_ATTR_SIZE: Final = 16
_PTHREAD_PROCESS_SHARED: Final = 1
_PTHREAD_MUTEX_ROBUST: Final = 1
_PTHREAD_MUTEX_RECURSIVE: Final = 1
# A blocking wait returns to Python this often, so pending signal handlers get to run.
_SLICE: Final = 0.1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _bind(library: Any, name: str, *argtypes: Any, restype: Any = ctypes.c_int) -> Any:
    function = getattr(library, name)
    if argtypes:  # else the caller passes ctypes objects, which skips converting (faster)
        function.argtypes = list(argtypes)
    function.restype = restype
    return function


_POINTER: Final = ctypes.c_void_p
try:
    _quick = ctypes.PyDLL(None)  # keeps the GIL: for calls that return at once
    _waiting = ctypes.CDLL(None)  # releases the GIL: for calls that may sleep
    # The hot path's two calls take the mutex's address as a c_void_p, and unlock's answer
    # (an error only for a thread that does not hold it) is not read: ~70 ns less a pair.
    trylock: Any = _bind(_quick, "pthread_mutex_trylock")
    unlock: Any = _bind(_quick, "pthread_mutex_unlock", restype=None)
    _checked_unlock = _bind(_quick, "pthread_mutex_unlock", _POINTER)
    _consistent = _bind(_quick, "pthread_mutex_consistent", _POINTER)
    _timedlock = _bind(_waiting, "pthread_mutex_timedlock", _POINTER, ctypes.POINTER(_Timespec))
    _attr_type = _bind(_quick, "pthread_mutexattr_settype", _POINTER, ctypes.c_int)
    _mutex_init = _bind(_quick, "pthread_mutex_init", _POINTER, _POINTER)
    _attr_init = _bind(_quick, "pthread_mutexattr_init", _POINTER)
    _attr_pshared = _bind(_quick, "pthread_mutexattr_setpshared", _POINTER, ctypes.c_int)
    _attr_robust = _bind(_quick, "pthread_mutexattr_setrobust", _POINTER, ctypes.c_int)
    _attr_destroy = _bind(_quick, "pthread_mutexattr_destroy", _POINTER)
    UNAVAILABLE: str | None = None
except (AttributeError, OSError) as exc:  # no robust mutexes in this C library
    UNAVAILABLE = f"shared_counter needs robust process-shared pthread mutexes ({exc})"
_clocklock: Any = None  # glibc 2.30+: a wait on the monotonic clock, which no clock step lengthens
if UNAVAILABLE is None:
    with contextlib.suppress(AttributeError):
        _clocklock = _bind(
            ctypes.CDLL(None),
            "pthread_mutex_clocklock",
            _POINTER,
            ctypes.c_int,
            ctypes.POINTER(_Timespec),
        )


def address_of(buffer: Any, offset: int) -> ctypes.c_void_p:
    """The address of byte ``offset`` of a writable buffer (an ``mmap``), as every function here
    takes it.

    The address is valid as long as the buffer stays mapped; no export of the buffer is kept, so
    it can still be closed.
    """
    anchor = ctypes.c_char.from_buffer(buffer, offset)
    address = ctypes.c_void_p(ctypes.addressof(anchor))
    del anchor
    return address


def init(address: ctypes.c_void_p) -> None:
    """Make the ``MUTEX_SIZE`` bytes at ``address`` a free robust, process-shared mutex."""
    if UNAVAILABLE is not None:
        raise OSError(errno.ENOSYS, UNAVAILABLE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _check(_attr_init(attr))
    try:
        _check(_attr_pshared(attr, _PTHREAD_PROCESS_SHARED))
        _check(_attr_robust(attr, _PTHREAD_MUTEX_ROBUST))
        _check(_attr_type(attr, _PTHREAD_MUTEX_RECURSIVE))
        _check(_mutex_init(address, attr))
    finally:
        _attr_destroy(attr)


def taken(address: ctypes.c_void_p, answer: int) -> bool:
    """Whether a try or a wait that returned ``answer`` took the mutex.

    ``EOWNERDEAD``: the holder died holding it, and it is now ours. The value it guarded is one
    word every holder stores whole, so it is consistent: say so, or the mutex becomes unusable.
    """
    if answer == errno.EOWNERDEAD:
        _check(_consistent(address))
        return True
    if answer in (errno.EBUSY, errno.ETIMEDOUT):
        return False
    _check(answer)
    return True


def lock(address: ctypes.c_void_p, block: bool = True, timeout: float | None = None) -> bool:
    """Take the mutex; False if it was not free within ``timeout`` seconds (or at once)."""
    if taken(address, trylock(address)):
        return True
    if not block:
        return False
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    when = _Timespec()
    while True:
        wait = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
        if wait <= 0:
            return False
        if _clocklock is not None:
            seconds, fraction = divmod(time.clock_gettime(time.CLOCK_MONOTONIC) + wait, 1.0)
        else:  # timedlock reads the wall clock, which a clock step may move
            seconds, fraction = divmod(time.time() + wait, 1.0)
        when.tv_sec = int(seconds)
        when.tv_nsec = min(int(fraction * 1e9), 999_999_999)
        if _clocklock is not None:
            answer = _clocklock(address, time.CLOCK_MONOTONIC, when)
        else:
            answer = _timedlock(address, when)
        if taken(address, answer):
            return True


def release(address: ctypes.c_void_p) -> None:
    """Give the mutex back once; RuntimeError if this thread does not hold it."""
    answer = _checked_unlock(address)
    if answer == errno.EPERM:
        raise RuntimeError("cannot release a shared counter's lock this thread does not hold")
    _check(answer)


def _check(answer: int) -> None:
    if answer:
        raise OSError(answer, f"shared counter lock: {errno.errorcode.get(answer, answer)}")
