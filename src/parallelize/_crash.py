"""The error for a worker process that died, apart from ``_errors``.

Its base class comes from ``concurrent.futures.process``, which imports ``logging`` and much of
``concurrent.futures``: tens of milliseconds that workers never need, and that the caller pays
only once a worker has died.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from ._errors import ParallelizeError


class WorkerCrashedError(ParallelizeError, BrokenProcessPool):
    """A worker process died while it ran an item (signal, ``os._exit``, segfault, OOM killer).

    ``index`` is the input index of the item it was running, or None when that is unknown;
    ``exitcode`` is the process exit code, negative for a signal as in ``Process.exitcode``.
    The dead worker is replaced, so the next map works.
    """

    def __init__(self, message: str, *, index: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.index = index
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_crash, (str(self), self.index, self.exitcode))


def _rebuild_crash(message: str, index: int | None, exitcode: int | None) -> WorkerCrashedError:
    return WorkerCrashedError(message, index=index, exitcode=exitcode)
