"""The exceptions parallelize raises, and how worker failures travel home.

::

    Exception
    ├── ParallelizeError                  base of every error parallelize itself raises
    │   ├── WorkerCrashedError            also a concurrent.futures BrokenProcessPool (in _crash)
    │   ├── SerializationError            also a pickle.PicklingError and a TypeError
    │   └── RemoteError                   stand-in for a worker exception that cannot be pickled
    └── RemoteTraceback                   the worker's formatted traceback, set as ``__cause__``

``WorkerCrashedError`` lives in ``_crash``: only the caller raises it, and its base class would make
every worker import ``concurrent.futures`` (and ``logging``), a third of a worker's start-up.

The user's own exceptions are re-raised with their own type; ``TimeoutError`` (builtin) reports an
item that ran past ``timeout``.
"""

from __future__ import annotations

import pickle


class ParallelizeError(Exception):
    """Base class of the errors that parallelize raises on its own account."""


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


def __getattr__(name: str) -> object:
    """``WorkerCrashedError`` (and its unpickling helper) lived here in 0.1.0: errors pickled
    then still load. Importing ``_crash`` only now keeps ``concurrent.futures`` out of workers."""
    if name in ("WorkerCrashedError", "_rebuild_crash"):
        from . import _crash

        return getattr(_crash, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, formatted there; shown as the cause."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
