"""The user's initializer: the one place a worker runs it.

A process worker runs its pool's initializer once, at start. An engine worker process (Dask, Ray)
runs a map's initializer before that map's first chunk there, and again only when another map's
initializer ran there since (like a process pool, a process has one initializer at a time). A
thread worker runs it once per thread.

An initializer from ``__main__`` travels by value with its own copy of the script's globals, and
so does a mapped function of ``__main__``: what the initializer assigned (``global model``) is
handed to the mapped function (see :func:`~parallelize._wire.pickling.assigned_globals`), so the
``multiprocessing.Pool`` idiom works.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import Failure
from .._wire.pickling import Pickled, assigned_globals, dumps_function, share_globals


def run_initializer(initializer: Callable[..., object], initargs: Sequence[Any]) -> Failure | None:
    """Run the user's initializer; its failure, if it raised."""
    try:
        initializer(*initargs)
    except BaseException as exc:
        return Failure.capture(exc, -1)
    return None


class _ProcessInit:
    """The initializer this process ran last (its pickle), what it assigned in ``__main__``, and
    how many have run here."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while one runs: once, even with tasks in threads
        self.blob: bytes | None = None
        self.assigned: dict[str, Any] = {}
        self.runs = 0


_here = _ProcessInit()


def initialize(init_blob: bytes) -> Failure | None:
    """Run the pickled ``(initializer, initargs)`` in this worker process, unless it is the one
    that ran here last. Its failure, if it raised (then it counts as not run)."""
    with _here.lock:
        return _run_unless_last(init_blob)


def initialize_for(
    fn: Callable[..., Any], init_blob: bytes, handed: int
) -> tuple[Failure | None, int]:
    """:func:`initialize`, then hand its globals to ``fn`` unless ``fn`` got them from this
    initializer's run already (``handed``: the run it got them from; it may rebind them since).
    The failure, if any, and the run whose globals ``fn`` now has. One lock for both, so that
    two maps' tasks in threads of one process never cross their globals."""
    with _here.lock:
        failure = _run_unless_last(init_blob)
        if failure is not None:
            return failure, handed
        if handed != _here.runs:
            share_globals(fn, _here.assigned)
        return None, _here.runs


def _run_unless_last(init_blob: bytes) -> Failure | None:
    if _here.blob == init_blob:
        return None
    try:
        initializer, initargs = pickle.loads(init_blob)
    except BaseException as exc:  # its module cannot be imported here, say
        return Failure.capture(exc, -1)
    failure = run_initializer(initializer, initargs)
    if failure is not None:
        _here.blob = None
        return failure
    _here.blob, _here.assigned = init_blob, assigned_globals(initializer)
    _here.runs += 1
    return None


class StartInit:
    """An initializer whose arguments pickle only while a process starts: ``multiprocessing``
    locks, queues and shared values, which the standard pool passes in ``initargs``. A starting
    process pickles it (spawn, forkserver) into the usual blob; a forked one gets it as it is."""

    __slots__ = ("initargs", "initializer")

    def __init__(self, initializer: Callable[..., object], initargs: tuple[Any, ...]):
        self.initializer = initializer
        self.initargs = initargs

    def __reduce__(self) -> tuple[Any, ...]:
        # The function as any other; the arguments with multiprocessing's own pickler, which
        # hands the child the descriptors of a queue's pipes, as the standard pool's start does.
        from multiprocessing.reduction import ForkingPickler

        function = dumps_function(self.initializer, self.initializer)
        arguments = bytes(ForkingPickler.dumps(self.initargs))
        return (bytes, (pickle.dumps((Pickled(function), Pickled(arguments))),))


def initialize_started(init: StartInit) -> Failure | None:
    """Run an initializer a forked worker got as it is (see :class:`StartInit`)."""
    with _here.lock:
        failure = run_initializer(init.initializer, init.initargs)
        if failure is None:
            _here.assigned = assigned_globals(init.initializer)
            _here.runs += 1
        return failure


def hand_globals(fn: Callable[..., Any]) -> None:
    """Give a mapped function of ``__main__`` the globals its process's initializer assigned."""
    share_globals(fn, _here.assigned)
