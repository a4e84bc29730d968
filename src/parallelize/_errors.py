"""The exceptions parallelize raises, and how worker failures travel home.

::

    Exception
    ├── ParallelizeError                  base of every error parallelize itself raises
    │   ├── WorkerCrashedError            also a concurrent.futures BrokenProcessPool (RuntimeError)
    │   ├── SerializationError            also a pickle.PicklingError and a TypeError
    │   └── RemoteError                   stand-in for a worker exception that cannot be pickled
    └── RemoteTraceback                   the worker's formatted traceback, set as ``__cause__``

The user's own exceptions are re-raised with their own type; ``TimeoutError`` (builtin) reports an
item that ran past ``timeout``.
"""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool


class ParallelizeError(Exception):
    """Base class of the errors that parallelize raises on its own account."""


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


class SerializationError(ParallelizeError, pickle.PicklingError, TypeError):
    """A function, argument, result or exception could not be pickled to cross to or from a worker.

    The message names what could not be pickled and why; the original error is the ``__cause__``.
    """


class RemoteError(ParallelizeError):
    """Stands in for a worker exception that did not survive pickling (for example one whose
    ``__init__`` needs arguments that ``args`` does not hold).

    It keeps the original ``type_name`` and message; the traceback text is its ``__cause__``.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, formatted there; shown as the cause."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
