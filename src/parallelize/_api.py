"""``pmap`` and ``imap``: validate the call, build the job, hand it to the core.

Everything a user can get wrong is checked here, before any worker starts. How the job runs
(the backend, the scheduler, ordering, progress, ``on_error``) is :mod:`parallelize._core`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from multiprocessing import current_process
from typing import TYPE_CHECKING, Any, TypeVar, Unpack, overload

from ._backends import get_backend

# The default backend is loaded with the API, as the standard library's pool loads its modules on
# import: a first map then pays only for starting workers. Workers import this module only when
# they re-import a user's ``__main__`` that does (spawn and forkserver).
from ._backends import process as _default_backend  # noqa: F401
from ._core.job import Job
from ._core.results import run_list, run_stream
from ._lifecycle import bootstrapping, in_worker
from ._options import Options, Resolved

if TYPE_CHECKING:
    from ._mapoptions import MapOptions

R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")


@overload
def pmap(
    fn: Callable[[T1], R], items: Iterable[T1], /, **options: Unpack[MapOptions]
) -> list[R]: ...
@overload
def pmap(
    fn: Callable[[T1, T2], R],
    items1: Iterable[T1],
    items2: Iterable[T2],
    /,
    **options: Unpack[MapOptions],
) -> list[R]: ...
@overload
def pmap(
    fn: Callable[..., R],
    items1: Iterable[Any],
    items2: Iterable[Any],
    items3: Iterable[Any],
    /,
    *more: Iterable[Any],
    **options: Unpack[MapOptions],
) -> list[R]: ...
def pmap(fn: Callable[..., R], /, *iterables: Iterable[Any], **options: Any) -> list[R]:
    """Apply ``fn`` to every item in parallel; the list of results, like ``list(map(fn, ...))``.

    Several iterables are zipped like the builtin ``map`` (stopping at the shortest). Options:
    ``workers``, ``chunksize``, ``ordered``, ``progress``, ``backend``, ``start_method``,
    ``timeout``, ``retries``, ``on_error``, ``initializer``, ``initargs``,
    ``max_tasks_per_worker``, ``address``, ``max_ahead``, ``max_ahead_bytes``, ``output``,
    ``stats``, ``max_worker_memory``.

    An exception raised by ``fn`` is re-raised here with its own type, the worker's traceback as
    ``__cause__`` and a note naming the item's index, and the rest of the map is cancelled; with
    ``on_error="return"`` it takes the item's place in the list instead, and with
    ``on_error="group"`` every item runs and the failures are raised together as a
    ``MapErrorGroup``.

    >>> pmap(abs, [-1, 2, -3], backend="thread")
    [1, 2, 3]
    """
    return run_list(prepare(fn, iterables, Options.from_kwargs(options, "pmap"), stream=False))


@overload
def imap(
    fn: Callable[[T1], R], items: Iterable[T1], /, **options: Unpack[MapOptions]
) -> Iterator[R]: ...
@overload
def imap(
    fn: Callable[[T1, T2], R],
    items1: Iterable[T1],
    items2: Iterable[T2],
    /,
    **options: Unpack[MapOptions],
) -> Iterator[R]: ...
@overload
def imap(
    fn: Callable[..., R],
    items1: Iterable[Any],
    items2: Iterable[Any],
    items3: Iterable[Any],
    /,
    *more: Iterable[Any],
    **options: Unpack[MapOptions],
) -> Iterator[R]: ...
def imap(fn: Callable[..., R], /, *iterables: Iterable[Any], **options: Any) -> Iterator[R]:
    """Like ``pmap``, but a lazy iterator: results come as they are ready.

    The input is read lazily with a bounded window in flight, so an endless generator works and
    memory stays flat. Breaking out of the loop, closing the iterator or dropping it cancels the
    work still outstanding. With ``ordered=False`` results come in completion order.

    >>> list(imap(len, ["a", "bb"], backend="thread"))
    [1, 2]
    """
    return run_stream(prepare(fn, iterables, Options.from_kwargs(options, "imap"), stream=True))


def input_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items zipping ``iterables`` gives, when every one has a length."""
    if not all(isinstance(iterable, Sized) for iterable in iterables):
        return None
    try:
        return min(len(iterable) for iterable in iterables)  # type: ignore[arg-type]
    except OverflowError:  # range(2**70): it has no length that fits
        return None


def prepare(
    fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], options: Options, *, stream: bool
) -> Job:
    """Check the call and build the job; every error here is raised before any worker starts."""
    where = "imap" if stream else "pmap"
    if not callable(fn):
        raise TypeError(f"{where}() needs a callable as its first argument, got {fn!r}")
    if not iterables:
        raise TypeError(f"{where}() needs at least one iterable of items")
    iterators = []
    for position, iterable in enumerate(iterables, start=2):
        try:
            iterators.append(iter(iterable))
        except TypeError:
            raise TypeError(
                f"argument {position} to {where}() must be iterable, "
                f"got {type(iterable).__name__}: {iterable!r:.80}"
            ) from None
    total = input_length(iterables)
    resolved = _where_it_can_run(options.resolve(), where)
    get_backend(resolved.backend)  # a missing engine fails now, not at the first result
    star = len(iterators) > 1
    items: Iterator[Any] = zip(*iterators, strict=False) if star else iterators[0]
    # A list or range input is sliced into chunks. imap walks a list instead, since the caller
    # may append to it meanwhile; a range cannot change.
    first = iterables[0]
    source: list[Any] | range | None = None
    sliceable = isinstance(first, range) or (type(first) is list and not stream)
    if sliceable and total is not None and not star:
        source = first  # type: ignore[assignment]
    return Job(fn, items, star, total, resolved, stream, source)


def _where_it_can_run(resolved: Resolved, where: str) -> Resolved:
    """The serial backend where a map must not start workers; ``resolved`` elsewhere.

    In a worker (ours, a Dask or Ray task, or any daemonic process such as a
    ``multiprocessing.Pool`` worker) a nested map runs serially: a daemonic process cannot start a
    process pool, and a task that waits on tasks of its own engine can wait for ever for a free
    slot. So does a map that a module runs as it is imported by a spawn or forkserver worker, which
    runs the caller's script again as it starts: ``multiprocessing`` refuses to start processes
    then, and the worker needs the module's results to finish starting. A map that would start
    workers at the top level of the script itself is refused instead: it is the script's own work,
    which belongs under the ``__main__`` guard. Threads are fine everywhere.
    """
    if resolved.backend in ("thread", "serial"):
        return resolved
    if in_worker() or current_process().daemon:
        return resolved.replace(backend="serial")
    if bootstrapping():
        _refuse_in_the_script(where)
        return resolved.replace(backend="serial")
    return resolved


def _refuse_in_the_script(where: str) -> None:
    """RuntimeError if the map runs in the top-level code of the main script (``__mp_main__``).

    The nearest module-level frame says whose top level runs the map: the script's, even through
    functions it calls, or that of a module being imported.
    """
    frame = sys._getframe(1)
    while frame.f_code.co_name != "<module>":
        if frame.f_back is None:
            return
        frame = frame.f_back
    if frame.f_globals.get("__name__") != "__mp_main__":
        return
    raise RuntimeError(
        f"{where}() runs at the top level of the main script ({frame.f_code.co_filename}, line "
        f"{frame.f_lineno}), which spawn and forkserver workers run again as they start: "
        "start the map under 'if __name__ == \"__main__\":'"
    )
