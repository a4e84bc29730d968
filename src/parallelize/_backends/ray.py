"""The Ray backend: chunks of the map as Ray tasks.

It uses the running Ray session when there is one (``ray.is_initialized()``); otherwise it calls
``ray.init`` with the ``address`` option, or ``RAY_ADDRESS``, or else starts a quiet local session
sized to the usable CPUs, which it shuts down at interpreter exit. Ray allows one session per
process, so a running session wins over an ``address`` option.

The task body and the worker set the scheduler drives are shared with the Dask backend
(:mod:`._engine`). A ``shared_counter`` that a map pickles moves into a Ray actor
(:mod:`parallelize._counter.engines`).
Ray-specific choices:

* a worker that dies is retried by Ray itself (``max_retries`` = the ``retries`` option);
* closing a map does not cancel its in-flight tasks: ``ray.cancel(force=True)`` can abort the
  calling process on an internal check in Ray 2.60, and a non-forced cancel raises
  ``KeyboardInterrupt`` inside the user's code. At most two tasks per CPU are in flight, each aiming
  at ~100 ms, so they finish quickly and their results are dropped.

``ray`` itself is imported only when a :class:`RayBackend` is created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from .._counter.engines import RayCounters
from .._cpu import usable_cpus
from .._lifecycle import at_exit
from .._options import Resolved
from ._engine import EngineRun, EngineSet, Outcome, retry_counts, run_remote
from .base import Backend, missing_engine


# Ray's objects are Any here: its API is typed only in part.
class _RayRun(EngineRun):
    name = "Ray"

    def __init__(self, ray_module: Any, remote: Any, options: Resolved, blob: bytes, name: str):
        self._ray = ray_module
        self.slots = int(ray_module.cluster_resources().get("CPU", 1))
        self._call = ray_module.put(blob)
        self._retries, engine_retries = retry_counts(options)
        self._remote = remote.options(max_retries=engine_retries, name=name)
        self._timeout = options.timeout
        self._pending: set[Any] = set()  # ObjectRefs of the tasks not yet collected
        exceptions = ray_module.exceptions
        self._crashes = (
            exceptions.WorkerCrashedError,
            exceptions.NodeDiedError,
            exceptions.OutOfMemoryError,
        )

    def submit(self, start: int, payload: bytes) -> Any:
        ref = self._remote.remote(self._call, start, payload, self._retries, self._timeout)
        self._pending.add(ref)
        return ref

    def wait(self, block: bool) -> list[tuple[Any, Outcome | BaseException]]:
        refs = list(self._pending)
        if not refs:
            return []
        ready, rest = self._ray.wait(refs, num_returns=1, timeout=None if block else 0)
        if rest:  # collect whatever else is done too, without waiting
            more, _ = self._ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        self._pending.difference_update(ready)
        try:
            return list(zip(ready, self._ray.get(ready), strict=True))
        except Exception:
            return [(ref, self._get(ref)) for ref in ready]

    def _get(self, ref: Any) -> Outcome | BaseException:
        try:
            value: Outcome = self._ray.get(ref)
        except BaseException as exc:
            return exc
        return value

    def crashed(self, error: BaseException) -> bool:
        return isinstance(error, self._crashes)

    def cancel(self, keys: list[Any]) -> None:
        # No ray.cancel: see the module docstring. Forgetting the refs drops the results.
        self._pending.difference_update(keys)


class RayBackend(Backend):
    """Runs jobs on a Ray cluster (see the module docstring for which one)."""

    name = "ray"

    def __init__(self) -> None:
        try:
            import ray  # the engine is imported only when it is used
        except ImportError as exc:
            raise missing_engine("ray", "ray", exc) from None
        self._ray: Any = ray
        self._lock = threading.Lock()
        self._remote: Any = None
        self._started = False  # we called ray.init, so we shut it down

    @contextlib.contextmanager
    def open(self, options: Resolved, *, private: bool = False) -> Iterator[EngineSet]:
        address = options.address
        # The session starts before pickling only when a shared_counter needs an actor in it.
        counters = RayCounters(self._ray, lambda: self._ensure_session(address))

        def connect(blob: bytes, name: str) -> EngineRun:
            self._ensure_session(address)
            if self._remote is None:
                self._remote = self._ray.remote(num_cpus=1)(run_remote)
            return _RayRun(self._ray, self._remote, options, blob, name)

        yield EngineSet(options, counters, connect)

    def _ensure_session(self, address: str | None) -> None:
        with self._lock:
            if self._ray.is_initialized():
                return
            address = address or os.environ.get("RAY_ADDRESS", "").strip() or None
            if address is not None:
                self._ray.init(address=address, logging_level=logging.ERROR)
            else:
                self._ray.init(
                    num_cpus=usable_cpus(), include_dashboard=False, logging_level=logging.ERROR
                )
            self._started = True
            # Registered after ray.init registered its own exit hook, so ours runs first.
            at_exit(self.shutdown)

    def shutdown(self) -> None:
        with self._lock:
            started, self._started = self._started, False
            if started and self._ray.is_initialized():
                self._ray.shutdown()
