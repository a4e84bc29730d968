"""The exceptions parallelize raises, and how a worker's failure travels home.

::

    Exception
    ├── ParallelizeError                  base of every error parallelize itself raises
    │   ├── MapErrorGroup                 also an ExceptionGroup: every failure of a map
    │   ├── CheckpointError               a checkpoint file this map cannot use
    │   ├── WorkerCrashedError            also a concurrent.futures BrokenProcessPool
    │   ├── SerializationError            also a pickle.PicklingError and a TypeError
    │   └── RemoteError                   stand-in for a worker exception that cannot be pickled
    └── RemoteTraceback                   the worker's formatted traceback, set as ``__cause__``

The user's own exceptions are re-raised with their own type; ``TimeoutError`` (builtin) reports an
item that ran past ``timeout``. A :class:`Failure` records one item's error on its way home.

``WorkerCrashedError`` is made on first use (PEP 562 ``__getattr__``): its base class comes from
``concurrent.futures.process``, which imports ``logging`` and much of ``concurrent.futures``, a
third of a worker's start-up, and only a caller whose worker died needs it.
"""

from __future__ import annotations

import builtins
import pickle
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast


class ParallelizeError(Exception):
    """Base class of the errors that parallelize raises on its own account."""


class CheckpointError(ParallelizeError):
    """A map's ``checkpoint`` file cannot be used: it holds another function's results, another
    map is using it, it is not a checkpoint at all, or it is not safe to unpickle from. The
    message says which."""


class MapErrorGroup(ExceptionGroup[Exception], ParallelizeError):
    """Raised by a map with ``on_error="group"`` once every item has run, if any failed.

    Its ``exceptions`` are the failures in input order (each with its index note and remote
    traceback); ``results`` is the map's whole list, each failed item's exception in its place;
    ``failed_indexes`` are the failed items' input indices. ``except* ValueError:`` catches the
    ``ValueError`` failures of a map. An ``imap`` stream, which keeps no list, raises it with
    ``results`` None, after yielding every good result.
    """

    results: list[Any] | None
    failed_indexes: list[int]

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[Exception],
        *,
        results: list[Any] | None = None,
        failed_indexes: list[int] | None = None,
    ) -> MapErrorGroup:
        group = super().__new__(cls, message, exceptions)
        group.results = results
        group.failed_indexes = failed_indexes if failed_indexes is not None else []
        return group

    def __init__(
        self,
        message: str,
        exceptions: Sequence[Exception],
        *,
        results: list[Any] | None = None,
        failed_indexes: list[int] | None = None,
    ) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> MapErrorGroup:  # type: ignore[override]
        """The group ``except*`` splits off: the same results, some of the failures, and
        their indices."""
        kept = {id(error) for error in excs}
        pairs = zip(self.failed_indexes, self.exceptions, strict=False)
        indexes = [index for index, error in pairs if id(error) in kept]
        return MapErrorGroup(self.message, excs, results=self.results, failed_indexes=indexes)


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


if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool

    class WorkerCrashedError(ParallelizeError, BrokenProcessPool):
        """A worker process died while it ran an item (signal, ``os._exit``, segfault, OOM killer).

        ``index`` is the input index of the item it was running, or None when that is unknown;
        ``exitcode`` is the process exit code, negative for a signal as in ``Process.exitcode``.
        The dead worker is replaced, so the next map works.
        """

        index: int | None
        exitcode: int | None

        def __init__(
            self, message: str, *, index: int | None = None, exitcode: int | None = None
        ): ...


_crash_class: type[WorkerCrashedError] | None = None
_crash_lock = threading.Lock()  # two threads' first crashes must not make two classes


def _crash_error_class() -> type[WorkerCrashedError]:
    global _crash_class
    with _crash_lock:
        if _crash_class is None:
            _crash_class = _make_crash_error_class()
        return _crash_class


def _make_crash_error_class() -> type[WorkerCrashedError]:
    from concurrent.futures.process import BrokenProcessPool  # lazily: see the module docstring

    class _WorkerCrashedError(ParallelizeError, BrokenProcessPool):
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

    # Named as the public class it is, so that pickle and reprs find it where users import it.
    _WorkerCrashedError.__name__ = _WorkerCrashedError.__qualname__ = "WorkerCrashedError"
    _WorkerCrashedError.__module__ = __name__
    return cast("type[WorkerCrashedError]", _WorkerCrashedError)


def __getattr__(name: str) -> object:
    if name == "WorkerCrashedError":
        cls = _crash_error_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def crash_error(
    message: str, *, index: int | None, exitcode: int | None = None
) -> WorkerCrashedError:
    """A new WorkerCrashedError (the class is made on the first call)."""
    return _crash_error_class()(message, index=index, exitcode=exitcode)


def _rebuild_crash(message: str, index: int | None, exitcode: int | None) -> WorkerCrashedError:
    return crash_error(message, index=index, exitcode=exitcode)


class Failure:
    """One item's error, with the input index and the traceback text from where it was raised."""

    __slots__ = ("_ready", "error", "index", "remote", "tb")

    def __init__(
        self, error: BaseException, index: int, tb: str | None = None, *, remote: bool = False
    ):
        self.error = error
        self.index = index
        self.tb = tb
        self.remote = remote  # it crossed from another process
        self._ready = False

    @classmethod
    def capture(cls, error: BaseException, index: int) -> Failure:
        """Record ``error`` as raised now, formatting its traceback for a trip home."""
        import traceback  # only when something failed

        return cls(error, index, "".join(traceback.format_exception(error)))

    def exception(self) -> BaseException:
        """The exception to raise or return in the caller, with its note and remote traceback."""
        if not self._ready:
            self._ready = True
            # An exception that crossed from a worker lost its frames (or, with tblib, has copies
            # that an editor cannot open): the worker's formatted text is the cause. One raised
            # in this process (threads, serial) keeps its frames and gets the same cause, unless
            # it has one of its own, so that every backend reports alike.
            error = self.error
            own_cause = error.__cause__ is not None or error.__suppress_context__  # raise ... from
            if self.tb is not None and (self.remote or not own_cause):
                error.__cause__ = RemoteTraceback(self.tb)
            where = f"by the item at index {self.index}" if self.index >= 0 else "at worker start"
            error.add_note(f"(raised {where}, in a parallelize worker)")
        return self.error

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_failure, (_portable(self.error), self.index, self.tb))

    def __repr__(self) -> str:
        return f"Failure({self.error!r}, index={self.index})"


def _rebuild_failure(error: BaseException, index: int, tb: str | None) -> Failure:
    return Failure(error, index, tb, remote=True)


def _portable(error: BaseException) -> BaseException:
    """``error`` when it survives a pickle round trip, else a stand-in of the same type name."""
    try:
        try:
            blob = pickle.dumps(error, pickle.HIGHEST_PROTOCOL)
        except Exception:  # a local exception class, say: cloudpickle may take it
            import cloudpickle

            blob = cloudpickle.dumps(error, pickle.HIGHEST_PROTOCOL)
        clone = pickle.loads(blob)
        if type(clone) is type(error):
            return error
    except Exception:
        pass
    return standin(type(error), str(error))


def _builtin_base(cls: type[BaseException]) -> type[BaseException] | None:
    for base in cls.__mro__:
        if (
            issubclass(base, BaseException)
            and getattr(builtins, base.__name__, None) is base
            and base not in (BaseException, Exception)
        ):
            return cast(type[BaseException], base)
    return None


_standin_classes: dict[type[BaseException], type[RemoteError]] = {}


def _standin_class(base: type[BaseException] | None) -> type[RemoteError]:
    if base is None:
        return RemoteError
    known = _standin_classes.get(base)
    if known is not None:
        return known
    namespace = {
        "__module__": RemoteError.__module__,
        "__reduce__": lambda self: (standin_by_name, (self.type_name, self.message, base.__name__)),
    }
    try:
        made: type[RemoteError] = type(
            f"RemoteError_{base.__name__}", (RemoteError, base), namespace
        )
    except TypeError:  # a builtin whose memory layout cannot be mixed in
        made = RemoteError
    _standin_classes[base] = made
    return made


def standin(cls: type[BaseException], message: str) -> RemoteError:
    """A RemoteError named after ``cls``, also an instance of its nearest builtin base class, so
    that ``except ValueError`` still catches it."""
    return _standin_class(_builtin_base(cls))(f"{cls.__module__}.{cls.__qualname__}", message)


def standin_by_name(type_name: str, message: str, base_name: str | None) -> RemoteError:
    base = getattr(builtins, base_name, None) if base_name else None
    if not (isinstance(base, type) and issubclass(base, BaseException)):
        base = None
    return _standin_class(base)(type_name, message)
