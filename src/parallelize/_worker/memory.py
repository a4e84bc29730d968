"""A worker process's resident memory, for ``max_worker_memory``: read from Linux's ``/proc``
through a descriptor kept open, a microsecond or two a read."""

from __future__ import annotations

import os
from typing import Final

from .._cpu import STATM

_PAGE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_fd: int | None = None
_pid: int | None = None  # the process that opened it: a forked child opens its own


def resident_bytes() -> int:
    """This process's resident set size, in bytes."""
    global _fd, _pid
    if _fd is None or _pid != os.getpid():
        _fd, _pid = os.open(STATM, os.O_RDONLY | os.O_CLOEXEC), os.getpid()
    fields = os.pread(_fd, 128, 0).split()
    return int(fields[1]) * _PAGE
