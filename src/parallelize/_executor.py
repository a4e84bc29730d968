"""``Executor``: a real ``concurrent.futures.Executor``, over one session.

``submit`` returns a standard ``Future``, so ``wait``, ``as_completed`` and
``loop.run_in_executor`` work as with ``ProcessPoolExecutor``. What differs, deliberately: a
worker that dies fails only the future of the item it ran (with a ``WorkerCrashedError``, which
is also a ``BrokenProcessPool``) and the executor goes on, where the standard library breaks every
pending future; ``map`` sizes chunks itself (``chunksize=None``) and reads its input lazily, with
3.14's ``buffersize`` on every Python; functions travel with cloudpickle.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import multiprocessing
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

from ._api import input_length
from ._checkpoint import Checkpoint, as_checkpoint
from ._core.checkpoints import closed_with, open_store, resumed
from ._core.feed import Request
from ._core.session import Session
from ._errors import Failure, RemoteTraceback, crash_error
from ._options import Resolved
from ._pool import IMapIterator, face_options, stream_compute
from ._retry import Retry
from ._worker.chunk import invoke

P = ParamSpec("P")
R = TypeVar("R")


def _as_raised(failure: Failure) -> BaseException:
    """A failed item's exception, its worker traceback as ``ProcessPoolExecutor`` sets it."""
    error = failure.exception()
    cause = error.__cause__
    if type(cause) is RemoteTraceback:
        error.__cause__ = concurrent.futures.process._RemoteTraceback(cause.tb)  # type: ignore[arg-type]
    return error


class _Submitted:
    """One ``submit``: its future, and the request that runs it."""

    __slots__ = ("future", "request")

    def __init__(
        self, future: concurrent.futures.Future[Any], item: tuple[Any, ...], *, started: bool
    ):
        self.future = future
        begin = None if started else future.set_running_or_notify_cancel
        self.request = Request(
            invoke, iter([item]), star=True, chunk=1,
            results=self._results, finish=self._finish, begin=begin,
        )  # fmt: skip

    def _results(self, position: int, values: list[Any], failed: bool) -> None:
        value = values[0]
        if type(value) is Failure:
            self.future.set_exception(_as_raised(value))
        else:
            self.future.set_result(value)

    def _finish(self, error: BaseException | None) -> None:
        if error is not None and not self.future.done():
            if not self.future.running():
                self.future.set_running_or_notify_cancel()
            if not self.future.done():
                self.future.set_exception(_broken(error))


def _broken(error: BaseException) -> BaseException:
    """Why a call never ran to its end, as ``ProcessPoolExecutor`` says it: the workers as a whole
    failed (an initializer raised, a message could not be read): ``BrokenProcessPool``, with the
    reason as its cause. (The executor goes on: the next call starts workers anew.)"""
    if isinstance(error, concurrent.futures.BrokenExecutor):
        return error
    broken = concurrent.futures.process.BrokenProcessPool(
        f"the executor's workers failed before this call finished: {error!r}"
    )
    broken.__cause__ = error
    return broken


class Executor(concurrent.futures.Executor):
    """Runs calls on worker processes, with the interface of ``ProcessPoolExecutor``.

    ``max_workers`` (default: the usable CPUs), ``mp_context`` (whose start method is used),
    ``initializer``, ``initargs`` and ``max_tasks_per_child`` mean what they mean there.
    Keyword-only, the parallelize options ``backend`` (``"process"``, ``"thread"`` or
    ``"interpreters"``), ``start_method``, ``progress`` (a bar per ``map``), ``timeout`` (seconds
    per item) and ``retries``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str = "process",
        start_method: str | None = None,
        progress: Any = False,
        timeout: float | None = None,
        retries: int | Retry = 0,
    ):
        if max_workers is not None and operator.index(max_workers) <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if type(max_tasks_per_child) is not int:
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._options: Resolved = face_options(
            "an Executor", "an mp_context", mp_context,
            workers=max_workers, backend=backend, start_method=start_method,
            initializer=initializer, initargs=initargs, max_tasks_per_worker=max_tasks_per_child,
            progress=progress, timeout=timeout, retries=retries,
        )  # fmt: skip
        self._max_workers = self._options.workers
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._shutdown = False
        self._waiting: set[concurrent.futures.Future[Any]] = set()  # not started yet
        self._started: set[concurrent.futures.Future[Any]] = set()  # started at submit()
        self._pid = os.getpid()
        _live.add(self)

    def _check_open(self) -> None:
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _put(self, request: Request) -> None:
        with self._lock:
            self._check_open()
            session = self._session
            if session is None or session.feed.closed:  # none yet, or its workers failed
                session = self._session = Session(self._options, "parallelize-executor")
            session.put(request)

    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[R]:
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self._lock:
            # As the standard executor moves calls to its workers' queue at once: the first
            # calls (one per worker, and one more) start now, so cancel() no longer stops them.
            started = len(self._started) <= self._max_workers
            (self._started if started else self._waiting).add(future)
        if started:
            future.set_running_or_notify_cancel()
        submitted = _Submitted(future, (fn, args, kwargs or None), started=started)
        future.add_done_callback(self._discard)
        try:
            self._put(submitted.request)
        except BaseException:
            self._discard(future)
            raise
        return future

    def _discard(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._waiting.discard(future)
            self._started.discard(future)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
    ) -> Iterator[R]:
        """``fn`` over the zipped iterables, results in order, read lazily.

        ``timeout`` counts from this call, as in the standard library; ``chunksize=None`` sizes
        chunks from measured run times; ``buffersize`` bounds the items read ahead of the
        results taken, in chunks (``chunksize`` items each, or one); ``checkpoint`` keeps the
        results in a file, so the map run again computes only what it lacks (see ``pmap``).
        """
        if chunksize is not None and operator.index(chunksize) < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if type(buffersize) is not int:
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        ahead = None if buffersize is None else buffersize * (chunksize or 1)
        if checkpoint is not None:
            spec = as_checkpoint(checkpoint)
            with self._lock:
                self._check_open()
            return self._map_checkpointed(fn, iterables, spec, deadline, chunksize, ahead)
        stream: IMapIterator[R] = IMapIterator(
            fn, zip(*iterables, strict=False), star=True, chunk=chunksize, ordered=True,
            ahead=ahead,
        )  # fmt: skip
        self._put(stream._request)
        return self._results(stream, deadline)

    def _map_checkpointed(
        self, fn: Callable[..., R], iterables: tuple[Iterable[Any], ...], spec: Checkpoint,
        deadline: float | None, chunksize: int | None, ahead: int | None,
    ) -> Iterator[R]:  # fmt: skip
        """``map`` with a checkpoint: its file opened (or refused) now, the items at the first
        ``next()``."""
        items = zip(*iterables, strict=False)
        store = open_store(spec, fn, input_length(iterables))

        compute = stream_compute(
            self._put, fn, star=True, chunk=chunksize, ahead=ahead, deadline=deadline
        )

        def results() -> Generator[R, None, None]:
            try:
                with contextlib.closing(resumed(store, items, compute)) as runs:
                    for values in runs:
                        for value in values:
                            if type(value) is Failure:
                                raise _as_raised(value)
                            yield value
            finally:
                store.close()

        return closed_with(results(), store)

    def _results(self, stream: IMapIterator[R], deadline: float | None) -> Iterator[R]:
        try:
            if deadline is None:
                yield from stream
                return
            while True:
                try:
                    yield stream.next(max(0.0, deadline - time.monotonic()))
                except StopIteration:
                    return
                except multiprocessing.TimeoutError:
                    raise TimeoutError from None
        finally:
            stream.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            session = self._session
            waiting = list(self._waiting) if cancel_futures else []
        for future in waiting:
            future.cancel()
        if session is not None:
            session.close()
            if wait:
                session.join()

    def terminate_workers(self) -> None:
        """Stop every worker now (SIGTERM and SIGKILL alike: a worker is killed at once); futures
        not done by then fail with ``WorkerCrashedError``. The executor is shut down."""
        with self._lock:
            self._shutdown = True
            session = self._session
        if session is not None:
            session.halt(
                crash_error(
                    "the executor's workers were stopped before this call finished", index=None
                )
            )
            session.join()

    kill_workers = terminate_workers

    def __del__(self) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()


# -- the interpreter's exit --

_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_exiting = False  # the interpreter is exiting: no new calls


def _at_interpreter_exit() -> None:
    """As ``concurrent.futures`` does at exit: refuse new calls, and let every call submitted run
    to its end, before the interpreter goes on to its ``atexit`` hooks (among them parallelize's
    own, which stop every worker). An executor a forked child inherited is not its own."""
    global _exiting
    _exiting = True
    for executor in list(_live):
        if executor._pid == os.getpid():
            executor.shutdown(wait=True)


# ``concurrent.futures`` registers its own exit hooks here too (threading's, run before
# ``atexit``'s, while threads may still start); it raises once the interpreter is exiting.
try:
    threading._register_atexit(_at_interpreter_exit)  # type: ignore[attr-defined]
except RuntimeError:  # imported during the interpreter's exit: nothing more will be submitted
    _exiting = True
