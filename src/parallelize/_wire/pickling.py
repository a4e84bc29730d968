"""Pickling what crosses between the caller and a worker: functions, items and results.

* The user's function travels once per map through cloudpickle, so lambdas, closures and
  functions defined in ``__main__`` or interactively work under every start method. A function
  decorated with ``@parallel`` at module level travels as a reference to its decorator (pickling
  it by reference would find the wrapper, not the function), and the caller's ``sys.path`` goes
  along, so a worker started before it changed still finds the user's modules.
* Items and results use the standard pickler (protocol 5), which is fastest; only what it refuses
  falls back to cloudpickle.
* An item whose argument or result does not pickle fails alone, as a ``SerializationError``
  naming it (a :class:`~parallelize._errors.Failure` in its place).
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import types
from collections.abc import Sequence
from typing import Any

from .._errors import Failure, SerializationError

PROTOCOL = 5  # out-of-band buffers and the fastest framing; every supported Python has it


@functools.cache
def _function_pickler() -> type[Any]:
    """The pickler class for functions, made on first use: cloudpickle is slow to import, and
    a worker needs it only to load a function that travelled by value."""
    import cloudpickle

    class FunctionPickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
        """cloudpickle, except that a function decorated with ``@parallel`` at module level
        travels as a reference to its decorator (whose ``__wrapped__`` it is), not by value.

        cloudpickle would ship such a function by value, since its module attribute is the
        wrapper; but a function shipped by value gets a private copy of its module's globals, so
        it would not see what an ``initializer`` set there. By reference, it runs in its real
        module.
        """

        def reducer_override(self, obj: Any) -> Any:
            if type(obj) is types.FunctionType:
                wrapper = _decorator_of(obj)
                if wrapper is not None:
                    return getattr, (wrapper, "__wrapped__")
            return super().reducer_override(obj)

    return FunctionPickler


# The class attribute that marks a ``@parallel`` wrapper (the face sets it; the wire layer below
# it must not import the face to recognise one).
WRAPPER_MARK = "__parallelize_wrapper__"


def _decorator_of(fn: types.FunctionType) -> Any:
    for found in _named(fn):
        wraps = getattr(type(found), WRAPPER_MARK, False) and found.__wrapped__ is fn
        if wraps and by_reference(found):
            return found
    return None


def _holder(obj: Any) -> tuple[Any, str]:
    """What holds ``obj``'s last name (its module, or the class it was defined in), and that
    name; None for the holder if its module is not one a worker imports by name (``__main__``,
    whose worker copy is another script run) or the name does not lead anywhere."""
    module_name = getattr(obj, "__module__", None)
    if module_name in (None, "__main__", "__mp_main__"):
        return None, ""
    holder: object = sys.modules.get(module_name)
    *path, name = getattr(obj, "__qualname__", "<>").split(".")
    for part in path:
        holder = getattr(holder, part, None)
    return holder, name


def _named(obj: Any) -> tuple[Any, Any]:
    """What ``obj``'s module and qualified name find: the attribute, and, in a class, what the
    class itself holds under that name (``staticmethod`` and ``classmethod`` unwrapped). The two
    differ for a ``@parallel`` method, which looking it up binds (``classmethod``)."""
    holder, name = _holder(obj)
    if holder is None:
        return None, None
    stored = vars(holder).get(name) if isinstance(holder, type) else None
    if isinstance(stored, staticmethod | classmethod):
        stored = stored.__func__
    return getattr(holder, name, None), stored


def by_reference(obj: Any) -> bool:
    """Whether ``obj`` can travel as ``module.qualname`` (see :func:`reference`)."""
    return reference(obj) is not None


def reference(obj: Any) -> str | tuple[Any, ...] | None:
    """How ``obj`` travels by reference, as a ``__reduce__`` value: its qualified name when the
    name finds it; when only its class holds it under that name (looking it up binds it, as for a
    ``@parallel`` classmethod), a call that takes it from the class; None when no name finds it,
    or its module is ``__main__``."""
    found, stored = _named(obj)
    if found is obj:
        return str(obj.__qualname__)
    if stored is obj:
        holder, name = _holder(obj)
        return (class_attribute, (holder, name))
    return None


def class_attribute(holder: type, name: str) -> Any:
    """What ``holder`` holds as ``name``, unbound (``staticmethod`` and ``classmethod``
    unwrapped): how a ``@parallel`` classmethod is unpickled."""
    stored = vars(holder)[name]
    return stored.__func__ if isinstance(stored, staticmethod | classmethod) else stored


def dumps_function(obj: Any, fn: Any) -> bytes:
    """Pickle ``obj``, which holds the user's callable ``fn``, for a worker (see
    :func:`pickle_function`)."""
    return pickle.dumps(pickle_function(obj, fn), PROTOCOL)


def pickle_function(obj: Any, fn: Any, *, out_of_band: int | None = None) -> FunctionPickle:
    """Pickle ``obj``, which holds the user's callable ``fn``, for a worker.

    Importable functions travel by reference and run in their real module; lambdas, closures and
    functions of ``__main__`` travel by value. The caller's ``sys.path`` travels along and is
    added to the worker's before unpickling, so a worker started earlier finds modules that the
    caller made importable since. Buffers of ``out_of_band`` bytes or more (a large array the
    function holds) are kept out of the pickle, for the sender to share rather than copy.
    Raises a SerializationError naming ``fn`` when that fails.
    """
    large: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        view = memoryview(buffer)
        if out_of_band is None or view.nbytes < out_of_band or not view.contiguous:
            return True  # in-band
        large.append(buffer)
        return False

    try:
        # The standard pickler when it can: everything by reference, and no cloudpickle to import
        # on either side. Not for anything of __main__, which a worker cannot import by name.
        blob = pickle.dumps(obj, PROTOCOL, buffer_callback=keep)
        if names_main(blob):
            raise pickle.PicklingError("__main__ travels by value")
    except Exception:
        large.clear()
        buffer = io.BytesIO()
        try:
            _function_pickler()(buffer, protocol=PROTOCOL, buffer_callback=keep).dump(obj)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle the function {fn!r} to send it to the workers: {exc}"
            ) from exc
        blob = buffer.getvalue()
    return FunctionPickle(list(sys.path), blob, large)


class FunctionPickle:
    """A pickled function as it travels: loaded only after ``sys.path`` holds the caller's
    entries, with the large buffers that were kept out of its pickle (``buffers``). Pickled as it
    is, those buffers go in-band; a sender that shares them passes them out of band."""

    __slots__ = ("blob", "buffers", "path")

    def __init__(self, path: list[str], blob: bytes, buffers: list[pickle.PickleBuffer]):
        self.path = path
        self.blob = blob
        self.buffers = buffers

    def __reduce__(self) -> tuple[Any, ...]:
        if self.buffers:
            return (_load_with_path, (self.path, self.blob, self.buffers))
        return (_load_with_path, (self.path, self.blob))

    def frozen(self) -> FunctionPickle:
        """The same, with a copy of each buffer as it is now (read-only ones stay read-only): a
        snapshot that another thread writing to the user's array cannot change under us."""
        copies = [
            pickle.PickleBuffer(bytes(raw) if raw.readonly else bytearray(raw))
            for raw in (buffer.raw() for buffer in self.buffers)
        ]
        return FunctionPickle(self.path, self.blob, copies)


def _load_with_path(path: list[str], blob: bytes, buffers: Sequence[Any] = ()) -> Any:
    missing = [entry for entry in path if entry not in sys.path]
    sys.path.extend(missing)
    return pickle.loads(blob, buffers=buffers)


class Pickled:
    """A pickle inside a pickle: ``blob`` is already pickled, and unpickles as what it holds
    (a message that carries it needs no second ``loads`` on the other side)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes):
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.blob,))


# The names ``__main__`` has in the caller and, under spawn or forkserver, in a worker.
_MAIN_NAMES = ("__main__", "__mp_main__")


def assigned_globals(initializer: Any) -> dict[str, Any]:
    """The globals an initializer from ``__main__`` assigned when it ran (``global model``).

    Such an initializer travels by value, with its own copy of the script's globals, and so does
    a mapped function of ``__main__``: left alone, the function would see the caller's values of
    those globals, never what the initializer set. :func:`share_globals` hands them over, so the
    ``multiprocessing.Pool`` idiom works. Names it only reads are not handed over: for those the
    function keeps the caller's values of the moment of the map.
    """
    initializer = _function_of(initializer)
    if not _is_main_function(initializer):
        return {}
    import dis  # lazily: only an initializer of __main__ needs it, and workers start faster

    names: set[str] = set()
    codes = [initializer.__code__]
    while codes:  # its nested functions may declare globals too
        code = codes.pop()
        names.update(i.argval for i in dis.get_instructions(code) if i.opname == "STORE_GLOBAL")
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    scope = initializer.__globals__
    return {name: scope[name] for name in names if name in scope}


def share_globals(fn: Any, assigned: dict[str, Any]) -> None:
    """Give a mapped function of ``__main__`` (or the one a ``partial`` or a bound method wraps)
    the globals its worker's initializer assigned (see :func:`assigned_globals`)."""
    target = _function_of(fn)
    if assigned and _is_main_function(target):
        target.__globals__.update(assigned)


def _function_of(fn: Any) -> Any:
    """The plain function behind a ``partial`` or a bound method, which holds the globals."""
    while True:
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        else:
            return fn


def _is_main_function(fn: Any) -> bool:
    return type(fn) is types.FunctionType and fn.__globals__.get("__name__") in _MAIN_NAMES


def dumps(obj: Any) -> bytes:
    """Pickle with the fast standard pickler, falling back to cloudpickle (lambdas, local classes).

    Raises whatever cloudpickle raises when neither can; callers name the culprit.
    """
    try:
        return pickle.dumps(obj, PROTOCOL)
    except Exception:
        import cloudpickle  # lazily: a worker's start-up need not pay for it

        data: bytes = cloudpickle.dumps(obj, PROTOCOL)
        return data


def dumps_for_engine(obj: Any) -> bytes:
    """Pickle items for a worker that cannot import the caller's ``__main__``: what refers to it
    travels by value (cloudpickle).

    That is any Dask or Ray worker (not started from the user's script), and a spawned process
    worker of a notebook, a REPL or ``python -c``; spawned workers of a script import it anew.
    """
    blob = dumps(obj)
    return dumps_by_value(obj) if names_main(blob) else blob


def dumps_by_value(obj: Any) -> bytes:
    """Pickle with cloudpickle, which sends what belongs to ``__main__`` by value."""
    import cloudpickle  # lazily: a worker's start-up need not pay for it

    data: bytes = cloudpickle.dumps(obj, PROTOCOL)
    return data


def names_main(blob: bytes) -> bool:
    """Whether a pickle may refer to something of ``__main__`` by name."""
    return b"__main__" in blob or b"__mp_main__" in blob


def find_unpicklable(values: Sequence[Any], first_index: int) -> tuple[int, BaseException] | None:
    """The input index and error of the first value that cannot be pickled, if any. A value
    whose pickling raises ``SystemExit`` (its ``__reduce__`` calls ``sys.exit``) counts too."""
    for offset, value in enumerate(values):
        try:
            dumps(value)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return first_index + offset, exc
    return None


def picklable_values(values: Sequence[Any], start: int) -> list[Any]:
    """``values`` (of input indices from ``start``) with each one that does not pickle replaced by
    its item's SerializationError, as a Failure."""
    values = list(values)
    while (found := find_unpicklable(values, start)) is not None:
        index, exc = found
        offset = index - start
        # What pickling raised beyond an error (SystemExit) is the item's own, as the standard
        # library's executor reports it.
        error = (
            unpicklable_error("result", index, values[offset], exc)
            if isinstance(exc, Exception)
            else exc
        )
        values[offset] = Failure.capture(error, index)
    return values


def unpicklable_argument(items: Sequence[Any], start: int, error: Exception) -> tuple[int, Failure]:
    """A chunk did not pickle: the offset of its first unpicklable item, and that item's failure.

    Re-raises ``error`` when every item pickles on its own (then the chunk as a whole is at fault).
    """
    found = find_unpicklable(items, start)
    if found is None:
        raise error
    index, exc = found
    if not isinstance(exc, Exception):  # SystemExit, in the caller: not the item's to report
        raise exc
    offset = index - start
    return offset, Failure(unpicklable_error("argument", index, items[offset], exc), index)


def unpicklable_error(what: str, index: int, value: Any, exc: Exception) -> SerializationError:
    """A SerializationError naming the item, its type and the reason."""
    error = SerializationError(
        f"cannot pickle the {what} of item {index} ({type(value).__name__}): {exc}"
    )
    error.__cause__ = exc
    return error
