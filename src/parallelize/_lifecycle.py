"""The life of a parallelize process: whether it is a worker, and how it ends.

* **Worker state.** :func:`in_worker` is true in a worker process (ours, or a Dask or Ray one)
  and in a thread running an engine task; a map nested there runs serially instead of starting a
  pool inside a worker.
* **One exit hook.** Pools, engine sessions and shared counters register what to release with
  :func:`at_exit`; one hook runs it all, once per process, in ``order``. In the caller it is an
  ``atexit`` hook kept registered after everyone else's (``atexit`` runs hooks last in, first
  out), so pools close before ``multiprocessing`` joins their workers and engine sessions close
  before their engine's own hooks tear them down. In a process that ``multiprocessing`` started
  (which ends with ``os._exit``, skipping ``atexit``), a ``multiprocessing`` finalizer runs it.
* **A worker lost.** :func:`worker_lost` tells whoever registered with :func:`on_worker_lost`
  (the counter sweep) that a worker process ended without exiting cleanly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing import util
from typing import Final

# Priority of the exit finalizer in processes that multiprocessing started: after the finalizers
# of priority >= 0 and the join of the process's own children.
_FINALIZER_PRIORITY: Final = -10
# How long a daemon thread's map waits at exit (see park_if_exiting): far longer than the rest of
# a normal exit takes, short enough that an exit handler joining that thread cannot hang.
EXIT_PARK_SECONDS: Final = 10.0

_in_worker = False
_task = threading.local()  # ``active``: this thread runs a Dask or Ray task (see engine_task)


def in_worker() -> bool:
    """True in a worker process, or in a thread running an engine task."""
    return _in_worker or getattr(_task, "active", False)


def enter_worker() -> None:
    """Mark this process as a worker (ours, or a Dask or Ray one): nested maps run serially."""
    global _in_worker
    _in_worker = True


@contextlib.contextmanager
def engine_task() -> Iterator[None]:
    """Around a Dask or Ray task: this thread counts as a worker while the task runs.

    Only this thread and only meanwhile: an engine that runs tasks in the caller's own process
    (Dask's ``processes=False``) must not turn the caller into a worker for good.
    """
    saved = getattr(_task, "active", False)
    _task.active = True
    try:
        yield
    finally:
        _task.active = saved


# -- exit ---------------------------------------------------------------------------------------

# (order, callback, whether worker processes run it too)
_callbacks: list[tuple[int, Callable[[], None], bool]] = []
_ran_in: int | None = None  # the pid whose exit has run the callbacks
_armed_in: int | None = None  # the pid whose finalizer is registered
_lock = threading.Lock()
# Set once the exit hook starts: pools are being closed under any map still running.
exiting = threading.Event()
_parked = threading.local()


def at_exit(callback: Callable[[], None], order: int = 0, *, in_workers: bool = False) -> None:
    """Run ``callback`` when this process exits, before callbacks of a higher ``order``.

    With ``in_workers``, a worker process that ``multiprocessing`` started runs it at its exit
    too (a counter it holds is its own to let go of); pools and engine sessions are the caller's.
    """
    with _lock:
        _callbacks.append((order, callback, in_workers))
        _arm()


def _arm() -> None:
    # Re-registered on every new callback: it stays the last registered, so it runs first.
    atexit.unregister(_run)
    atexit.register(_run)
    global _armed_in
    if _armed_in != os.getpid() and any(in_workers for _, _, in_workers in _callbacks):
        util.Finalize(None, _run_in_worker, exitpriority=_FINALIZER_PRIORITY)
        _armed_in = os.getpid()


def _run() -> None:
    """Release everything registered, once per process (``atexit``; a child made by ``os.fork``
    inherits the hook and runs it too, like every other ``atexit`` hook)."""
    _run_some(workers_only=False)


def _run_in_worker() -> None:
    """At the exit of a process multiprocessing started, which skips ``atexit``; in the caller,
    ``atexit`` has run everything by then."""
    _run_some(workers_only=True)


def _run_some(*, workers_only: bool) -> None:
    global _ran_in
    if _ran_in == os.getpid():
        return
    _ran_in = os.getpid()
    exiting.set()
    for _, callback, in_workers in sorted(_callbacks, key=_order):
        if in_workers or not workers_only:
            callback()


def _order(entry: tuple[int, Callable[[], None], bool]) -> int:
    return entry[0]


class _Anchor:
    """A weak-referenceable object for multiprocessing's after-fork registry."""


def _rearm(_: object) -> None:
    """A process that multiprocessing starts clears the finalizers it inherited: arm anew."""
    global _lock, _armed_in
    _lock = threading.Lock()
    _armed_in = None
    if _callbacks:
        _arm()


_ANCHOR: Final = _Anchor()
util.register_after_fork(_ANCHOR, _rearm)


def park_if_exiting() -> None:
    """At interpreter exit, a map still running in a daemon thread (the only kind still running
    then) has lost its pool: it waits here, quietly, for the interpreter to discard the thread,
    instead of reporting the workers the exit hook stopped as crashes. If the interpreter is
    still there after ``EXIT_PARK_SECONDS`` (an exit handler waits for that thread), the thread
    ends with ``SystemExit``, which threads end on silently."""
    if not exiting.is_set():  # first: this runs on every wait of every map
        return
    thread = threading.current_thread()
    if not thread.daemon or thread is threading.main_thread():
        return
    if getattr(_parked, "done", False):
        return  # parked once already: let it unwind
    _parked.done = True
    threading.Event().wait(EXIT_PARK_SECONDS)
    raise SystemExit


# -- workers lost -------------------------------------------------------------------------------

_lost_hooks: list[Callable[[], None]] = []


def on_worker_lost(hook: Callable[[], None]) -> None:
    """Call ``hook`` whenever a worker process of this caller ended without exiting cleanly."""
    _lost_hooks.append(hook)


def worker_lost() -> None:
    """A worker process ended uncleanly (killed, crashed): it may have held resources."""
    for hook in _lost_hooks:
        hook()
