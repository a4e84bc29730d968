"""``@parallel``: turn a function of one item into a parallel map over many.

A thin face over :mod:`parallelize._api`: calling the decorated function is ``pmap`` of the
original with the call's keyword arguments bound, ``.imap`` is ``imap``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Generic,
    ParamSpec,
    TypeVar,
    Unpack,
    overload,
)

from ._api import prepare
from ._core.results import run_list, run_stream
from ._options import OPTION_NAMES, Options
from ._wire.pickling import by_reference

if TYPE_CHECKING:
    from ._mapoptions import MapOptions

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class ParallelFunction(Generic[T, P, R]):
    """A function of one item that, called with iterables, maps itself over them in parallel.

    ``f(items, **kwargs)`` is ``pmap(partial(f.__wrapped__, **kwargs), items)``; ``f.imap`` streams;
    ``f.options(...)`` is a copy with options overridden; ``f.__wrapped__`` is the original.
    """

    __wrapped__: Callable[Concatenate[T, P], R]
    __qualname__: str

    # Lets the pickler tell this wrapper from any other object (``_wire.pickling.WRAPPER_MARK``).
    __parallelize_wrapper__: ClassVar[bool] = True

    def __init__(self, fn: Callable[Concatenate[T, P], R], options: Options):
        if not callable(fn):
            raise TypeError(f"@parallel needs a callable, got {fn!r}")
        functools.update_wrapper(self, fn)
        self._options = options
        self._signature = _signature(fn)

    def __call__(self, items: Iterable[T], /, *iterables: Iterable[Any], **kwargs: Any) -> list[R]:
        """Map over ``items`` (zipped with any further iterables); the list of results."""
        fn = self._bind(1 + len(iterables), kwargs)
        return run_list(prepare(fn, (items, *iterables), self._options, stream=False))

    def imap(self, items: Iterable[T], /, *iterables: Iterable[Any], **kwargs: Any) -> Iterator[R]:
        """Like calling the function, but a lazy iterator of results."""
        fn = self._bind(1 + len(iterables), kwargs)
        return run_stream(prepare(fn, (items, *iterables), self._options, stream=True))

    def options(self, **options: Unpack[MapOptions]) -> ParallelFunction[T, P, R]:
        """A new parallel function with these options overriding the current ones."""
        override = Options.from_kwargs(options, f"{self._name}.options")
        return ParallelFunction(self.__wrapped__, self._options.merged(override))

    def _bind(self, positional: int, kwargs: dict[str, Any]) -> Callable[..., R]:
        if self._signature is not None:
            try:
                self._signature.bind(*range(positional), **kwargs)
            except TypeError as exc:
                raise TypeError(self._misuse(exc, positional, kwargs)) from None
        if not kwargs:
            return self.__wrapped__
        return functools.partial(self.__wrapped__, **kwargs)

    def _misuse(self, exc: TypeError, positional: int, kwargs: dict[str, Any]) -> str:
        message = f"{self._name}() called with {positional} iterable(s) and {sorted(kwargs)}: {exc}"
        options = {name: value for name, value in kwargs.items() if name in OPTION_NAMES}
        if options:
            given = ", ".join(f"{name}={value!r}" for name, value in options.items())
            message += f"; to set a parallelize option, use {self._name}.options({given})"
        return message

    @property
    def _name(self) -> str:
        return getattr(self.__wrapped__, "__name__", type(self.__wrapped__).__name__)

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self._options.given().items())
        return f"<parallel {self.__wrapped__!r}{' (' + given + ')' if given else ''}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A decorated function of an importable module pickles by name, like a plain function;
        # any other (in __main__ or a notebook, local, or made by .options()) carries its
        # function and options, and cloudpickle ships that function by value.
        if by_reference(self):
            return str(self.__qualname__)
        return (ParallelFunction, (self.__wrapped__, self._options))


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
