"""``Pool`` and ``ThreadPool``: the ``multiprocessing.pool`` API, over one session.

A port from the standard library is one changed import. Every method becomes a request on the
pool's session (:mod:`parallelize._core.session`): one scheduler, on workers the pool owns, runs
them in the order they were made. What differs, deliberately: a worker killed mid-task fails that
task with ``WorkerCrashedError`` instead of hanging; a result that never came (the pool was
terminated) raises instead of blocking ``get()`` forever; ``chunksize=None`` (the default of every
method) sizes chunks from measured run times; functions travel with cloudpickle.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.pool
import operator
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar, cast

from ._checkpoint import Checkpoint, as_checkpoint
from ._core.checkpoints import Compute, open_store, resumed
from ._core.feed import Request
from ._core.progress import NO_BAR, Bar, open_bar
from ._core.session import Session
from ._errors import Failure, ParallelizeError, RemoteTraceback, SerializationError
from ._options import ENGINES, Options, Resolved
from ._retry import Retry
from ._worker.chunk import invoke

R = TypeVar("R")

RUN: Final = multiprocessing.pool.RUN
CLOSE: Final = multiprocessing.pool.CLOSE
TERMINATE: Final = multiprocessing.pool.TERMINATE


def _terminated() -> ParallelizeError:
    return ParallelizeError("the pool was terminated before this task finished")


def _as_raised(failure: Failure) -> BaseException:
    """A failed item's exception as the standard library's pool raises it: its worker traceback
    as the cause; an argument that did not pickle raises what pickling raised; a result that did
    not pickle in the worker, ``MaybeEncodingError`` (our SerializationError as its cause)."""
    error = failure.exception()
    cause = error.__cause__
    if isinstance(error, SerializationError):
        if not failure.remote and isinstance(cause, Exception):  # pickled (or not) right here
            return cause
        if failure.remote:
            maybe_encoding = multiprocessing.pool.MaybeEncodingError  # type: ignore[attr-defined]
            encoding: Any = maybe_encoding(error, None)
            encoding.value = f"<the result of item {failure.index}>"
            encoding.__cause__ = error
            return cast(BaseException, encoding)
    if type(cause) is RemoteTraceback:
        error.__cause__ = multiprocessing.pool.RemoteTraceback(cause.tb)  # type: ignore[attr-defined]
    return error


def face_options(
    face: str,
    context_is: str,
    context: Any,
    *,
    backend: str,
    start_method: str | None,
    initializer: Callable[..., object] | None,
    initargs: Iterable[Any],
    **given: Any,
) -> Resolved:
    """The options of a ``Pool`` or ``Executor`` (``face``) from its arguments: the start method
    of its ``context`` (``context_is`` names that argument), else one the program set with
    ``multiprocessing.set_start_method``, as the standard classes do, else parallelize's."""
    if backend in ENGINES:
        raise ValueError(
            f"backend={backend!r} is not available for {face} yet; use pmap or imap with "
            f"backend={backend!r}, or {face} on backend='process' or 'thread'"
        )
    if context is not None:
        method = context.get_start_method()
        if start_method is not None and start_method != method:
            raise ValueError(
                f"start_method={start_method!r} cannot apply with {context_is} of start method "
                f"{method!r}: give one of them"
            )
        start_method = method
    elif start_method is None and backend == "process":
        start_method = multiprocessing.get_start_method(allow_none=True)
    given["backend"] = backend
    if initializer is not None:
        given.update(initializer=initializer, initargs=tuple(initargs))
    if start_method is not None:
        given["start_method"] = start_method
    return Options(**given).resolve()


def _report(what: str) -> None:
    """A user's callback raised, in the pool's thread: say so, as an unhandled thread error."""
    print(f"Exception in the {what} of a parallelize pool task:", file=sys.stderr)
    traceback.print_exc()


class ApplyResult(Generic[R]):
    """The result of ``apply_async`` (and, as :class:`MapResult`, of ``map_async``)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        args: Iterator[Any],
        *,
        star: bool,
        chunk: int | None,
        callback: Callable[[R], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        bar: Bar = NO_BAR,
    ):
        self._request = Request(
            fn, args, star=star, chunk=chunk, results=self._results, finish=self._finish
        )
        self._callback = callback
        self._error_callback = error_callback
        self._bar = bar
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._error_at = -1

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> R:
        if not self._event.wait(timeout):
            raise multiprocessing.TimeoutError
        if self._error is not None:
            raise self._error
        value: R = self._value
        return value

    # -- the session's thread --

    def _results(self, position: int, values: list[Any], failed: bool) -> None:
        self._bar.update(len(values))
        if failed:
            for offset, value in enumerate(values):
                if type(value) is Failure and (self._error is None or position < self._error_at):
                    self._error, self._error_at = _as_raised(value), position + offset
                    break
        self._store(position, values)

    def _store(self, position: int, values: list[Any]) -> None:
        self._value = values[0]

    def _finish(self, error: BaseException | None) -> None:
        self._bar.close()
        if error is not None and self._error is None:
            self._error = error
        if self._error is not None:
            self._value = None
            if self._error_callback is not None:
                try:
                    self._error_callback(self._error)
                except Exception:
                    _report("error_callback")
        elif self._callback is not None:
            try:
                self._callback(self._value)
            except Exception:
                _report("callback")
        self._event.set()


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[R]]):
    """The result of ``map_async`` and ``starmap_async``: every value, in input order."""

    def __init__(self, count: int, fn: Callable[..., Any], args: Iterator[Any], **kw: Any):
        super().__init__(fn, args, **kw)
        self._value = [None] * count

    def _store(self, position: int, values: list[Any]) -> None:
        if self._error is None:
            self._value[position : position + len(values)] = values


class IMapIterator(Iterator[R]):
    """The results of ``imap`` (in input order) or ``imap_unordered`` (as they finish).

    ``next(timeout)`` raises ``multiprocessing.TimeoutError`` when no result came in time. An
    item's exception is raised where the item stands; the iterator goes on after it.
    """

    def __init__(
        self, fn: Callable[..., Any], args: Iterator[Any], *, star: bool, chunk: int | None,
        ordered: bool, bar: Bar = NO_BAR, ahead: int | None = None,
    ):  # fmt: skip
        self._request = Request(
            fn, args, star=star, chunk=chunk, results=self._results, finish=self._finish,
            ahead=ahead,
        )  # fmt: skip
        self._ordered = ordered
        self._bar = bar
        self._cond = threading.Condition()
        self._ready: collections.deque[Any] = collections.deque()  # in the order to yield
        self._early: dict[int, Any] = {}  # ordered: values that came before their turn
        self._next = 0  # ordered: the position to yield next
        self._last: BaseException | None = None  # what ends the stream
        self._over = False

    def __iter__(self) -> IMapIterator[R]:
        return self

    def next(self, timeout: float | None = None) -> R:
        try:
            value = self._ready.popleft()  # atomic: the lock is for waiting only
        except IndexError:
            with self._cond:
                if not self._cond.wait_for(lambda: self._ready or self._over, timeout):
                    raise multiprocessing.TimeoutError from None
                if self._ready:
                    value = self._ready.popleft()
                elif self._last is not None:
                    error, self._last = self._last, None
                    raise error from None
                else:
                    raise StopIteration from None
        request = self._request
        if request.ahead is not None and request.feed is not None:
            request.feed.consumed(request, 1)
        if type(value) is Failure:
            raise _as_raised(value)
        result: R = value
        return result

    def cancel(self) -> None:
        """Run no more of its items (those running finish; their results are dropped)."""
        request = self._request
        if request.feed is not None and not request.finished:
            request.feed.cancel(request)

    def __next__(self) -> R:
        return self.next()

    def runs(self, deadline: float | None = None) -> Iterator[list[Any]]:
        """The values as they become ready, a list at a time, failures as ``Failure`` objects
        (a checkpointed map records them); ``TimeoutError`` if ``deadline`` (a
        ``time.monotonic()`` time) passes first."""
        request = self._request
        while True:
            with self._cond:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._cond.wait_for(lambda: self._ready or self._over, timeout):
                    raise TimeoutError
                values = list(self._ready)
                self._ready.clear()
                if not values:
                    if self._last is not None:
                        error, self._last = self._last, None
                        raise error
                    return
            if request.ahead is not None and request.feed is not None:
                request.feed.consumed(request, len(values))
            yield values

    # -- the session's thread --

    def _results(self, position: int, values: list[Any], failed: bool) -> None:
        self._bar.update(len(values))
        with self._cond:
            if not self._ordered:
                self._ready.extend(values)
            else:
                if position != self._next:
                    self._early.update(
                        zip(range(position, position + len(values)), values, strict=True)
                    )
                    return
                self._ready.extend(values)
                self._next += len(values)
                while self._next in self._early:
                    self._ready.append(self._early.pop(self._next))
                    self._next += 1
            self._cond.notify_all()

    def _finish(self, error: BaseException | None) -> None:
        self._bar.close()
        with self._cond:
            self._last = error
            self._over = True
            self._cond.notify_all()


def stream_compute(
    put: Callable[[Request], None], fn: Callable[..., Any], *, star: bool, chunk: int | None,
    ahead: int | None = None, deadline: float | None = None,
) -> Compute:  # fmt: skip
    """How a face's checkpointed map computes its missing items: one ordered stream of them,
    made a request with ``put``, its values taken a run at a time (``IMapIterator.runs``) and
    cancelled when the caller stops."""

    def compute(todo: Iterable[Any]) -> Generator[list[Any], None, None]:
        args = map(tuple, todo) if star else iter(todo)
        stream: IMapIterator[Any] = IMapIterator(
            fn, args, star=star, chunk=chunk, ordered=True, ahead=ahead
        )
        put(stream._request)
        try:
            yield from stream.runs(deadline)
        finally:
            stream.cancel()

    return compute


class Pool:
    """A pool of worker processes with the interface of ``multiprocessing.pool.Pool``.

    ``processes`` (default: the usable CPUs), ``initializer``, ``initargs``, ``maxtasksperchild``
    and ``context`` (whose start method is used) mean what they mean there. Keyword-only, the
    parallelize options ``backend``, ``start_method``, ``progress`` (a bar per map), ``timeout``
    (seconds per item) and ``retries``.
    """

    _backend: str = "process"

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        backend: str | None = None,
        start_method: str | None = None,
        progress: Any = False,
        timeout: float | None = None,
        retries: int | Retry = 0,
    ):
        self._session: Session | None = None
        self._lock = threading.Lock()
        if processes is not None:
            if operator.index(processes) < 1:
                raise ValueError("Number of processes must be at least 1")
            processes = operator.index(processes)
        if maxtasksperchild is not None and (
            type(maxtasksperchild) is not int or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._options: Resolved = face_options(
            "a Pool", "a context", context,
            workers=processes, backend=backend or self._backend, start_method=start_method,
            initializer=initializer, initargs=initargs, max_tasks_per_worker=maxtasksperchild,
            progress=progress, timeout=timeout, retries=retries,
        )  # fmt: skip
        self._processes = self._options.workers
        self._state = RUN  # last: a pool that failed to build is not running (see __del__)

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} state={self._state} pool_size={self._processes}>"

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    # -- submitting --

    def _put(self, request: Request) -> None:
        with self._lock:
            if self._state != RUN:
                raise ValueError("Pool not running")
            session = self._session
            if session is None or session.feed.closed:  # none yet, or its workers failed
                session = self._session = Session(self._options, "parallelize-pool")
            session.put(request)

    def _bar(self, iterable: Any) -> Bar:
        progress = self._options.progress
        if progress is False:
            return NO_BAR
        return open_bar(progress, len(iterable) if hasattr(iterable, "__len__") else None)

    def apply(
        self, func: Callable[..., R], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}
    ) -> R:
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., R],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[R], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> ApplyResult[R]:
        self._check_running()
        item = (func, tuple(args), dict(kwds) or None)
        result: ApplyResult[R] = ApplyResult(
            invoke, iter([item]), star=True, chunk=1,
            callback=callback, error_callback=error_callback,
        )  # fmt: skip
        self._put(result._request)
        return result

    def map(
        self,
        func: Callable[[Any], R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
    ) -> list[R]:
        """As the standard library's; ``checkpoint`` keeps the results in a file, so the map
        run again computes only what it lacks (see ``pmap``)."""
        if checkpoint is not None:
            return self._map_checkpointed(func, iterable, chunksize, checkpoint, star=False)
        return self._map_async(func, iterable, chunksize, None, None, star=False).get()

    def map_async(
        self,
        func: Callable[[Any], R],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[R]:
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=False)

    def starmap(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
    ) -> list[R]:
        """As the standard library's; ``checkpoint`` as for ``map``."""
        if checkpoint is not None:
            return self._map_checkpointed(func, iterable, chunksize, checkpoint, star=True)
        return self._map_async(func, iterable, chunksize, None, None, star=True).get()

    def starmap_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[R]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[R]:
        return self._map_async(func, iterable, chunksize, callback, error_callback, star=True)

    def _map_async(
        self,
        func: Callable[..., R],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[list[R]], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        *,
        star: bool,
    ) -> MapResult[R]:
        self._check_running()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        chunk = _chunksize(chunksize)
        args: Iterator[Any] = iter(items)
        if star:
            args = map(tuple, args)
        result: MapResult[R] = MapResult(
            len(items), func, args, star=star, chunk=chunk,  # type: ignore[arg-type]
            callback=callback, error_callback=error_callback, bar=self._bar(items),
        )  # fmt: skip
        self._put(result._request)
        return result

    def _map_checkpointed(
        self, func: Callable[..., R], iterable: Iterable[Any], chunksize: int | None,
        checkpoint: object, *, star: bool,
    ) -> list[R]:  # fmt: skip
        """``map`` or ``starmap`` with a checkpoint. Every item runs, then the first failure is
        raised: the other items' results are kept in the file."""
        self._check_running()
        spec = as_checkpoint(checkpoint)
        chunk = _chunksize(chunksize)
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        store = open_store(spec, func, len(items))  # type: ignore[arg-type]
        bar = self._bar(items)

        compute = stream_compute(self._put, func, star=star, chunk=chunk)
        out: list[Any] = []
        try:
            with contextlib.closing(resumed(store, items, compute, up_front=True)) as runs:
                for values in runs:
                    out += values
                    bar.update(len(values))
        finally:
            store.close()
            bar.close()
        for value in out:
            if type(value) is Failure:
                raise _as_raised(value)
        return out

    def imap(
        self, func: Callable[[Any], R], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator[R]:
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(
        self, func: Callable[[Any], R], iterable: Iterable[Any], chunksize: int | None = None
    ) -> IMapIterator[R]:
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(
        self, func: Callable[[Any], R], iterable: Iterable[Any], chunksize: int | None, *,
        ordered: bool,
    ) -> IMapIterator[R]:  # fmt: skip
        self._check_running()
        chunk = _chunksize(chunksize)
        result: IMapIterator[R] = IMapIterator(
            func, iter(iterable), star=False, chunk=chunk, ordered=ordered,
            bar=self._bar(iterable),
        )  # fmt: skip
        self._put(result._request)
        return result

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    # -- the lifecycle --

    def close(self) -> None:
        """No more tasks: the workers exit once those submitted are done."""
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE
                if self._session is not None:
                    self._session.close()

    def terminate(self) -> None:
        """Stop the workers now; results not ready by then raise ``ParallelizeError``."""
        with self._lock:
            self._state = TERMINATE
            session = self._session
        if session is not None:
            session.halt(_terminated())

    def join(self) -> None:
        """Wait for the workers to exit, after :meth:`close` or :meth:`terminate`."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        with self._lock:
            session = self._session
        if session is not None:
            session.join()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __del__(self, _warn: Callable[..., None] = warnings.warn, RUN: str = RUN) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)
            session = getattr(self, "_session", None)
            if session is not None:
                session.halt(_terminated())


class ThreadPool(Pool):
    """A ``Pool`` whose workers are threads of this process, like ``multiprocessing``'s."""

    _backend = "thread"

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        progress: Any = False,
        timeout: float | None = None,
        retries: int | Retry = 0,
    ):
        super().__init__(
            processes, initializer, initargs, progress=progress, timeout=timeout, retries=retries
        )


def _chunksize(chunksize: int | None) -> int | None:
    if chunksize is None:
        return None
    if operator.index(chunksize) < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
    return operator.index(chunksize)
