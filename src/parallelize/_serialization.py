"""Moving functions, items, results and exceptions between processes.

* The user's function travels once per map, by value through cloudpickle, so lambdas, closures,
  functions defined in ``__main__`` and decorated module-level functions (where pickling by
  reference would find the decorator's wrapper, not the function) all work under every start
  method, and a worker started before ``sys.path`` changed still gets the current code.
* Items and results use the standard pickler (protocol 5), which is fastest; only what it refuses
  falls back to cloudpickle.
* A failure in a worker travels as a :class:`Failure`: the exception itself when it survives a
  pickle round trip, else a :class:`RemoteError` stand-in that keeps its type name and message,
  always with the worker's formatted traceback, which becomes ``__cause__`` at home.
"""

from __future__ import annotations

import builtins
import functools
import io
import pickle
import traceback
import types
from typing import Any

import cloudpickle

from ._errors import RemoteError, RemoteTraceback, SerializationError

PROTOCOL = 5  # out-of-band buffers and the fastest framing; every supported Python has it


class _FunctionPickler(cloudpickle.Pickler):
    """A cloudpickle pickler that ships chosen functions by value even when importable."""

    def __init__(self, file: io.BytesIO, by_value: set[int]):
        super().__init__(file, protocol=PROTOCOL)
        self._by_value = by_value

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and id(obj) in self._by_value:
            return self._dynamic_function_reduce(obj)
        return super().reducer_override(obj)


def _user_functions(fn: Any) -> set[int]:
    """The plain functions that make up ``fn``: itself, or the ones inside partials."""
    found: set[int] = set()
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
            continue
        if type(fn) is types.FunctionType:
            found.add(id(fn))
        return found


def dumps_function(obj: Any, fn: Any) -> bytes:
    """Pickle ``obj``, which holds the user's callable ``fn``, shipping ``fn`` by value.

    Raises a SerializationError naming the function when that is impossible.
    """
    buffer = io.BytesIO()
    try:
        _FunctionPickler(buffer, _user_functions(fn)).dump(obj)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the function {fn!r} to send it to the workers: {exc}"
        ) from exc
    return buffer.getvalue()


def dumps(obj: Any) -> bytes:
    """Pickle with the fast standard pickler, falling back to cloudpickle (lambdas, local classes).

    Raises whatever cloudpickle raises when neither can; callers name the culprit.
    """
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, PROTOCOL)


def find_unpicklable(values: list[Any], first_index: int) -> tuple[int, Exception] | None:
    """The input index and error of the first value that cannot be pickled, if any."""
    for offset, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            return first_index + offset, exc
    return None


def unpicklable_error(what: str, index: int, value: Any, exc: Exception) -> SerializationError:
    """A SerializationError naming the item, its type and the reason."""
    error = SerializationError(
        f"cannot pickle the {what} of item {index} ({type(value).__name__}): {exc}"
    )
    error.__cause__ = exc
    return error


class Failure:
    """One item's error, with the input index and the traceback text from where it was raised."""

    __slots__ = ("_ready", "error", "index", "tb")

    def __init__(self, error: BaseException, index: int, tb: str | None = None):
        self.error = error
        self.index = index
        self.tb = tb
        self._ready = False

    @classmethod
    def capture(cls, error: BaseException, index: int) -> Failure:
        """Record ``error`` as raised now, formatting its traceback for a trip home."""
        return cls(error, index, "".join(traceback.format_exception(error)))

    def exception(self) -> BaseException:
        """The exception to raise or return in the caller, with its note and remote traceback."""
        if not self._ready:
            self._ready = True
            # An exception that crossed a pickle lost its traceback: show the worker's text instead.
            if self.tb is not None and self.error.__traceback__ is None:
                self.error.__cause__ = RemoteTraceback(self.tb)
            self.error.add_note(f"(raised by the item at index {self.index}, in a parallelize worker)")
        return self.error

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_failure, (_portable(self.error), self.index, self.tb))

    def __repr__(self) -> str:
        return f"Failure({self.error!r}, index={self.index})"


def _rebuild_failure(error: BaseException, index: int, tb: str | None) -> Failure:
    return Failure(error, index, tb)


def _portable(error: BaseException) -> BaseException:
    """``error`` when it survives a pickle round trip, else a stand-in of the same type name."""
    try:
        clone = pickle.loads(dumps(error))
        if type(clone) is type(error):
            return error
    except Exception:
        pass
    return standin(type(error), str(error))


def _builtin_base(cls: type[BaseException]) -> type[BaseException] | None:
    for base in cls.__mro__:
        if (
            getattr(builtins, base.__name__, None) is base
            and base not in (BaseException, Exception)
        ):
            return base
    return None


@functools.cache
def _standin_class(base: type[BaseException] | None) -> type[RemoteError]:
    if base is None:
        return RemoteError
    namespace = {
        "__module__": RemoteError.__module__,
        "__reduce__": lambda self: (standin_by_name, (self.type_name, self.message, base.__name__)),
    }
    try:
        return type(f"RemoteError_{base.__name__}", (RemoteError, base), namespace)
    except TypeError:  # a builtin whose memory layout cannot be mixed in
        return RemoteError


def standin(cls: type[BaseException], message: str) -> RemoteError:
    """A RemoteError named after ``cls`` that is also its nearest builtin base (``except`` works)."""
    return _standin_class(_builtin_base(cls))(f"{cls.__module__}.{cls.__qualname__}", message)


def standin_by_name(type_name: str, message: str, base_name: str | None) -> RemoteError:
    base = getattr(builtins, base_name, None) if base_name else None
    if not (isinstance(base, type) and issubclass(base, BaseException)):
        base = None
    return _standin_class(base)(type_name, message)
