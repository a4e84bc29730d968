"""``@parallel``: turn a function of one item into a parallel map over many.

A thin face over :mod:`parallelize._api`: calling the decorated function is ``pmap`` of the
original with the call's keyword arguments bound, ``.imap`` is ``imap``. On a method, looking it
up on an instance (or, for a classmethod, on the class) binds it as Python binds a function, and
the bound form maps with the instance as the first argument of every call.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    Unpack,
    overload,
)

from ._api import prepare
from ._core.results import run_list, run_stream
from ._options import OPTION_NAMES, Options
from ._wire.pickling import reference

if TYPE_CHECKING:
    from ._mapoptions import MapOptions

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
# For binding a method: its instance (or class) S, then its item T2, keywords P2, result R2.
S = TypeVar("S")
T2 = TypeVar("T2")
R2 = TypeVar("R2")
P2 = ParamSpec("P2")
S_contra = TypeVar("S_contra", contravariant=True)
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

# How the wrapped function binds when looked up on a class or an instance: as a function does (to
# the instance), as a classmethod (to the class), or not at all (a staticmethod).
Binding = Literal["function", "classmethod", "staticmethod"]


class _Method(Protocol[S_contra, T_contra, P2, R_co]):
    """A ``ParallelFunction`` of a method, as mypy matches it (see ``ParallelFunction.__get__``)."""

    @property
    def __wrapped__(self) -> Callable[Concatenate[S_contra, T_contra, P2], R_co]: ...


class _Unbound:
    """The ``_target`` of a ``ParallelFunction`` that is not bound to an instance or class."""

    def __repr__(self) -> str:
        return "UNBOUND"


_UNBOUND: Any = _Unbound()


class ParallelFunction(Generic[T, P, R]):
    """A function of one item that, called with iterables, maps itself over them in parallel.

    ``f(items, **kwargs)`` is ``pmap(partial(f.__wrapped__, **kwargs), items)``; ``f.imap`` streams;
    ``f.options(...)`` is a copy with options overridden; ``f.__wrapped__`` is the original.

    On a method, ``obj.f`` is bound like a method: ``obj.f(items)`` maps ``f(obj, item)``, and
    ``obj.f.__wrapped__`` is the bound method. A ``classmethod`` or ``staticmethod`` under (or over)
    the decorator binds the class, or nothing. The instance travels to the workers once per map,
    with the function.

    .. versionchanged:: 0.2.0
       Works on methods, classmethods and staticmethods.
    """

    __wrapped__: Callable[Concatenate[T, P], R]
    __qualname__: str

    # Lets the pickler tell this wrapper from any other object (``_wire.pickling.WRAPPER_MARK``).
    __parallelize_wrapper__: ClassVar[bool] = True

    _binding: Binding

    def __init__(self, fn: Callable[Concatenate[T, P], R], options: Options):
        # Type checkers see the function under a classmethod or staticmethod that @parallel is
        # applied over; at run time it is that wrapper, which binds the class, or nothing.
        raw: Any = fn
        self._binding = "function"
        if isinstance(raw, classmethod):
            self._binding, raw = "classmethod", raw.__func__
        elif isinstance(raw, staticmethod):
            self._binding, raw = "staticmethod", raw.__func__
        if not callable(raw):
            raise TypeError(f"@parallel needs a callable, got {raw!r}")
        functools.update_wrapper(self, raw)
        self._options = options
        self._signature = _signature(raw)
        self._function: Callable[..., R] = self.__wrapped__  # the original, unbound
        self._target: Any = _UNBOUND  # the instance or class a bound form passes first
        self._unbound: ParallelFunction[Any, Any, Any] | None = None  # what a bound one was

    def __call__(self, items: Iterable[T], /, *iterables: Iterable[Any], **kwargs: Any) -> list[R]:
        """Map over ``items`` (zipped with any further iterables); the list of results."""
        if self._called_as_classmethod(items, iterables):
            return self._bound_to(items)(*iterables, **kwargs)
        fn = self._bind(1 + len(iterables), kwargs)
        return run_list(prepare(fn, (items, *iterables), self._options, stream=False))

    def imap(self, items: Iterable[T], /, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[R]:
        """Like calling the function, but a lazy iterator of results."""
        fn = self._bind(1 + len(iterables), kwargs)
        return run_stream(prepare(fn, (items, *iterables), self._options, stream=True))

    async def amap(
        self, items: Iterable[T], /, *iterables: Iterable[Any], **kwargs: Any
    ) -> list[R]:
        """Like calling the function, for ``await``: the event loop stays free meanwhile."""
        from ._aio import run_list_async  # asyncio only for those who use it

        fn = self._bind(1 + len(iterables), kwargs)
        return await run_list_async(prepare(fn, (items, *iterables), self._options, stream=False))

    def aimap(
        self, items: Iterable[T], /, *iterables: Iterable[Any], **kwargs: Any
    ) -> AsyncIterator[R]:
        """Like :meth:`imap`, for ``async for``: the event loop stays free meanwhile."""
        from ._aio import run_stream_async  # asyncio only for those who use it

        fn = self._bind(1 + len(iterables), kwargs)
        return run_stream_async(prepare(fn, (items, *iterables), self._options, stream=True))

    def options(self, **options: Unpack[MapOptions]) -> ParallelFunction[T, P, R]:
        """A new parallel function with these options overriding the current ones."""
        override = Options.from_kwargs(options, f"{self._name}.options")
        copy: ParallelFunction[T, P, R] = _rebuild(
            self._function, self._options.merged(override), self._binding
        )
        if self._target is _UNBOUND:
            return copy
        return copy._bound_to(self._target)

    # -- binding, as a function binds to an instance ---------------------------------------------
    # Type checkers differ in what they solve: mypy the ``_Method`` protocol, pyright the
    # ``ParallelFunction[S, Concatenate[T2, P2], R2]`` self type (for which mypy finds no T2).
    # Where one does not solve an overload, it goes on to the next.

    @overload  # a classmethod, looked up on its class
    def __get__(
        self: _Method[type[S], T2, P2, R2], instance: None, owner: type[S], /
    ) -> ParallelFunction[T2, P2, R2]: ...
    @overload
    def __get__(
        self: ParallelFunction[type[S], Concatenate[T2, P2], R2], instance: None, owner: type[S], /
    ) -> ParallelFunction[T2, P2, R2]: ...
    @overload  # a method (or a staticmethod), looked up on its class: unbound
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload  # a method, looked up on an instance
    def __get__(
        self: _Method[S, T2, P2, R2], instance: S, owner: type[Any] | None = None, /
    ) -> ParallelFunction[T2, P2, R2]: ...
    @overload
    def __get__(
        self: ParallelFunction[S, Concatenate[T2, P2], R2],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> ParallelFunction[T2, P2, R2]: ...
    @overload  # a classmethod, looked up on an instance
    def __get__(
        self: _Method[type[S], T2, P2, R2], instance: S, owner: type[Any] | None = None, /
    ) -> ParallelFunction[T2, P2, R2]: ...
    @overload
    def __get__(
        self: ParallelFunction[type[S], Concatenate[T2, P2], R2],
        instance: S,
        owner: type[Any] | None = None,
        /,
    ) -> ParallelFunction[T2, P2, R2]: ...
    @overload  # a staticmethod, looked up on an instance
    def __get__(self, instance: object, owner: type[Any] | None = None, /) -> Self: ...
    def __get__(
        self, instance: object, owner: type[Any] | None = None, /
    ) -> ParallelFunction[Any, Any, Any]:
        """Bound to ``instance`` (or, for a classmethod, to its class), as the wrapped function
        would be; itself where that function would not bind (on the class, or a builtin)."""
        if self._target is not _UNBOUND or self._binding == "staticmethod":
            return self
        if self._binding == "classmethod":
            return self._bound_to(owner if owner is not None else type(instance))
        getter = getattr(type(self._function), "__get__", None)
        if instance is None or getter is None:
            return self
        method = getter(self._function, instance, owner)
        if not (isinstance(method, types.MethodType) and method.__func__ is self._function):
            return self
        return self._bound_to(instance)

    def _bound_to(self, target: object) -> ParallelFunction[Any, Any, Any]:
        """This function with ``target`` bound as the first argument of every call."""
        bound: ParallelFunction[Any, Any, Any] = object.__new__(ParallelFunction)
        bound.__dict__.update(self.__dict__)
        bound.__wrapped__ = types.MethodType(self._function, target)
        bound.__self__ = target  # type: ignore[attr-defined]  # as a bound method has it
        bound._target = target
        bound._unbound = self
        return bound

    def _called_as_classmethod(self, first: object, rest: tuple[object, ...]) -> bool:
        """Whether ``classmethod`` called this unbound with its class first.

        On Python 3.11 and 3.12, ``@classmethod`` above ``@parallel`` binds through ``__get__``.
        Python 3.13 dropped that: its classmethod calls ``f(cls, items)``, which this tells from
        a map over two iterables by the class holding that very classmethod.
        """
        if self._target is not _UNBOUND or not rest or not isinstance(first, type):
            return False
        me: object = self
        return any(
            isinstance(value, classmethod) and value.__func__ is me
            for klass in first.__mro__
            for value in vars(klass).values()
        )

    # -- the call --------------------------------------------------------------------------------

    def _bind(self, positional: int, kwargs: dict[str, Any]) -> Callable[..., R]:
        bound = self._target is not _UNBOUND
        if self._signature is not None:
            try:
                self._signature.bind(*range(positional + bound), **kwargs)
            except TypeError as exc:
                raise TypeError(self._misuse(exc, positional, kwargs)) from None
        if bound:
            # Not the bound method, which pickles as ``getattr(obj, name)`` and would find this
            # wrapper again in a worker: the function and the instance, which travel once per map.
            return functools.partial(self._function, self._target, **kwargs)
        if not kwargs:
            return self._function
        return functools.partial(self._function, **kwargs)

    def _misuse(self, exc: TypeError, positional: int, kwargs: dict[str, Any]) -> str:
        message = f"{self._name}() called with {positional} iterable(s) and {sorted(kwargs)}: {exc}"
        options = {name: value for name, value in kwargs.items() if name in OPTION_NAMES}
        if options:
            given = ", ".join(f"{name}={value!r}" for name, value in options.items())
            message += f"; to set a parallelize option, use {self._name}.options({given})"
        elif self._target is _UNBOUND and self._under_classmethod():
            message += (
                "; since Python 3.13 a classmethod above @parallel passes its class to calls "
                "only, not to .imap() or .options(): put @parallel above @classmethod instead"
            )
        return message

    def _under_classmethod(self) -> bool:
        """Whether the class that defines this function holds it under a ``classmethod``."""
        holder: object = sys.modules.get(getattr(self, "__module__", None) or "")
        *path, name = getattr(self, "__qualname__", "").split(".")
        for part in path:
            holder = getattr(holder, part, None)
        stored = vars(holder).get(name) if isinstance(holder, type) else None
        return isinstance(stored, classmethod) and (
            getattr(stored.__func__, "_function", None) is self._function
        )

    @property
    def _name(self) -> str:
        return getattr(self._function, "__name__", type(self._function).__name__)

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self._options.given().items())
        return f"<parallel {self.__wrapped__!r}{' (' + given + ')' if given else ''}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A decorated function of an importable module pickles by name, like a plain function;
        # any other (in __main__ or a notebook, local, or made by .options()) carries its
        # function and options, and cloudpickle ships that function by value. A bound one
        # carries the function it was bound from and its instance.
        if self._unbound is not None:
            return (self._unbound._bound_to, (self._target,))
        by_name = reference(self)
        if by_name is not None:
            return by_name
        if self._binding == "function":
            return (ParallelFunction, (self._function, self._options))
        return (_rebuild, (self._function, self._options, self._binding))


def _rebuild(
    fn: Callable[Concatenate[T, P], R], options: Options, binding: Binding
) -> ParallelFunction[T, P, R]:
    """A ``ParallelFunction`` of ``fn`` that binds as ``binding`` says."""
    made = ParallelFunction(fn, options)
    made._binding = binding
    return made


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none
        return None


@overload
def parallel(
    fn: Callable[Concatenate[T, P], R], /, **options: Any
) -> ParallelFunction[T, P, R]: ...
@overload
def parallel(
    fn: None = None, /, **options: Unpack[MapOptions]
) -> Callable[[Callable[Concatenate[T, P], R]], ParallelFunction[T, P, R]]: ...
def parallel(
    fn: Callable[Concatenate[T, P], R] | None = None, /, **options: Any
) -> (
    ParallelFunction[T, P, R]
    | Callable[[Callable[Concatenate[T, P], R]], ParallelFunction[T, P, R]]
):
    """Decorate a function of one item so that calling it on iterables runs a parallel map.

    Use bare (``@parallel``), with options (``@parallel(workers=4, progress=True)``), or as a call
    (``fast = parallel(fn, workers=2)``). Bad options raise at decoration time.

    >>> @parallel(backend="thread")
    ... def double(x, *, times=2):
    ...     return x * times
    >>> double([1, 2, 3]), double([1, 2], times=3)
    ([2, 4, 6], [3, 6])
    """
    parsed = Options.from_kwargs(options, "parallel")
    if fn is None:

        def decorate(fn: Callable[Concatenate[T, P], R]) -> ParallelFunction[T, P, R]:
            return ParallelFunction(fn, parsed)

        return decorate
    return ParallelFunction(fn, parsed)
