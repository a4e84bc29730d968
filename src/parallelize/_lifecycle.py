"""The life of a parallelize process: whether it is a worker, and how it ends.

* **Worker state.** :func:`in_worker` is true in a worker process (ours, or a Dask or Ray one)
  and in a thread running an engine task; a map nested there runs serially instead of starting a
  pool inside a worker. :func:`bootstrapping` is true while ``multiprocessing`` starts a process
  by running the caller's main script again: what runs then is a copy of the caller's
  module-level code.
* **Exit.** Pools, engine sessions and shared counters register what to release at exit with
  :func:`at_exit`, the one way parallelize hooks into a process's end. A callback registered
  plainly is an ``atexit`` hook of its own, registered when it is, so it keeps its place among
  the user's and the engines' hooks (``atexit`` runs the last registered first): the process
  pool's runs after a user's exit handler that maps, and an engine session's before its engine's
  own hooks tear it down. A callback registered with ``last=True`` (a counter's release) runs as
  ``multiprocessing``'s very last finalizer, in the caller and in every process
  ``multiprocessing`` starts (which end with ``os._exit``, skipping ``atexit``). Every callback
  runs once per process, and one that raises does not stop the others.
* **A worker lost.** :func:`worker_lost` tells whoever registered with :func:`on_worker_lost`
  (the counter sweep) that a worker process ended without exiting cleanly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Final

# Priority of the finalizer that runs the last=True callbacks: negative ones run last, after the
# finalizers of priority >= 0 and the join of the process's children (so a counter's creator
# usually lets go last and removes the file itself).
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


def bootstrapping() -> bool:
    """True while ``multiprocessing`` prepares this process: a spawn or forkserver worker (or the
    fork server) running the caller's main script again, as ``__mp_main__``, and so importing
    every module the script imports.

    Module-level code that runs then is a copy of the caller's, not a program of its own: a map
    there must not start processes (``multiprocessing`` refuses to), and a counter made there is
    not the caller's counter. ``_inheriting`` is ``multiprocessing``'s own mark for this phase
    (set in ``spawn._main`` and in the fork server's import of ``__main__``), the one its
    ``_check_not_importing_main`` reads to refuse starting a process.
    """
    # No import statement here: it runs on every map, in daemon threads at exit too.
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:  # nothing started this process (nor does it use it)
        return False
    return bool(getattr(multiprocessing.current_process(), "_inheriting", False))


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

# Set once an exit callback starts: pools are being closed under any map still running.
exiting = threading.Event()
_parked = threading.local()
# The callbacks with last=True, run by one finalizer per process.
_last: list[Callable[[], None]] = []
_armed_in: int | None = None  # the pid whose finalizer is registered (None: none ever)
_lock = threading.Lock()


def at_exit(callback: Callable[[], None], *, last: bool = False) -> None:
    """Run ``callback`` once when this process exits (see the module docstring for when)."""
    if not last:
        atexit.register(_run, callback)
        return
    with _lock:
        _last.append(callback)
        _arm()


def close_each(closes: Iterable[Callable[[], object]]) -> None:
    """Call each of ``closes`` (stopping pools, say); one that raises stops none of the others,
    and the first error is raised once all have run."""
    errors: list[Exception] = []
    for close in closes:
        try:
            close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _arm() -> None:
    global _armed_in
    if _armed_in != os.getpid():
        # Lazily: a subinterpreter worker, which never needs it, starts faster without it.
        from multiprocessing import util

        if _armed_in is None:
            util.register_after_fork(_ANCHOR, _rearm)
        util.Finalize(None, _run_last, exitpriority=_FINALIZER_PRIORITY)
        _armed_in = os.getpid()


def _run(callback: Callable[[], None]) -> None:
    """An ``atexit`` hook: a child made by ``os.fork`` inherits it, and runs it too, as it runs
    every hook it inherits; the callbacks handle that (a pool forgets its parent's workers)."""
    exiting.set()
    _call(callback)


def _run_last() -> None:
    for callback in list(_last):
        _call(callback)


def _call(callback: Callable[[], None]) -> None:
    """Run one exit callback; an error is reported, as ``atexit`` does, and the others still run."""
    try:
        callback()
    except Exception:
        import traceback  # lazily: only when an exit callback failed

        print(f"Exception ignored in parallelize exit callback {callback!r}:", file=sys.stderr)
        traceback.print_exc()


class _Anchor:
    """A weak-referenceable object for multiprocessing's after-fork registry."""


def _rearm(_: object) -> None:
    """A process that multiprocessing starts clears the finalizers it inherited: arm anew."""
    global _lock, _armed_in
    _lock = threading.Lock()
    _armed_in = -1  # registered for forks already (the registry is inherited)
    if _last:
        _arm()


# In multiprocessing's after-fork registry from the first arming on: a child started before
# then inherits no finalizer to arm anew.
_ANCHOR: Final = _Anchor()


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
