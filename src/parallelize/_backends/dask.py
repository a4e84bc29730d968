"""The Dask backend: chunks of the map as tasks of a ``distributed`` cluster.

Which cluster, in order: the one named by an explicit ``address`` option (explicit beats ambient,
as for every option); else the current ``distributed.Client``, the one the user made; else the
scheduler named by ``PARALLELIZE_DASK_ADDRESS``; else a ``LocalCluster`` of worker processes sized
to the usable CPUs, started on first use and closed at interpreter exit. Clients we open are never
made the default, so the user's own Dask code is left alone.

The task body and the worker set the scheduler drives are shared with the Ray backend
(:mod:`._engine`). A ``shared_counter`` that a map pickles moves into a Dask actor on a worker
(:mod:`parallelize._counter.engines`), so tasks on any machine reach it.

``distributed`` itself is imported only when a :class:`DaskBackend` is created.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Final

from .._counter.engines import DaskCounters
from .._cpu import usable_cpus
from .._lifecycle import at_exit
from .._options import Resolved
from ._engine import EngineRun, EngineSet, Outcome, retry_counts, run_remote
from .base import Backend, missing_engine

ENV_ADDRESS: Final = "PARALLELIZE_DASK_ADDRESS"

# A function pickled to at most this many bytes travels inside each task; a larger one (a closure
# over big data) is scattered to every worker once per map instead.
INLINE_CALL: Final = 64 * 1024
# A task the scheduler cancels on its own (its scattered function was lost with a worker) is
# submitted again at most this many times.
MAX_LOST: Final = 3
# At exit, how long the LocalCluster we started gets to close before we stop waiting for it.
CLOSE_TIMEOUT: Final = 10.0


class _DaskTask:
    __slots__ = ("future", "key", "lost", "payload", "start")

    def __init__(self, key: int, start: int, payload: bytes):
        self.key = key  # the engine set's key: stays the same when the task is submitted again
        self.start = start
        self.payload = payload
        self.lost = 0  # times it was cancelled by the scheduler, not by us
        self.future: Any = None  # distributed.Future


# distributed is only partly typed, so its objects are Any here.
class _DaskRun(EngineRun):
    name = "Dask"

    def __init__(self, distributed: Any, client: Any, options: Resolved, blob: bytes, prefix: str):
        self._client = client
        self._distributed = distributed
        self._options = options
        self._task_retries, self._engine_retries = retry_counts(options)
        self.slots = sum(client.nthreads().values())
        self._blob = blob
        self._call: Any = blob if len(blob) <= INLINE_CALL else self._scatter()
        self._prefix = prefix
        self._completed = distributed.as_completed(loop=client.loop)
        self._keys = itertools.count()
        self._tasks: dict[str, _DaskTask] = {}  # future key -> task

    def _scatter(self) -> Any:
        return self._client.scatter(self._blob, hash=False, broadcast=True)

    def submit(self, start: int, payload: bytes) -> Any:
        task = _DaskTask(next(self._keys), start, payload)
        self._launch(task)
        return task.key

    def _launch(self, task: _DaskTask) -> None:
        options = self._options
        task.future = self._client.submit(
            run_remote,
            self._call,
            task.start,
            task.payload,
            self._task_retries,
            options.timeout,
            key=f"{self._prefix}-{uuid.uuid4().hex}",
            pure=False,
            retries=self._engine_retries,
        )
        self._tasks[task.future.key] = task
        self._completed.add(task.future)

    def wait(self, block: bool) -> list[tuple[Any, Outcome | BaseException]]:
        results: list[tuple[Any, Outcome | BaseException]] = []
        while not results:
            done = [f for f in self._completed.next_batch(block=block) if f.key in self._tasks]
            tasks = [self._tasks.pop(f.key) for f in done]
            finished = [t for t in tasks if t.future.status == "finished"]
            try:
                values = self._client.gather([t.future for t in finished])
                results.extend(zip((t.key for t in finished), values, strict=True))
            except Exception:
                results.extend((t.key, _result(t.future)) for t in finished)
            for task in tasks:
                if task.future.status == "finished":
                    continue
                if task.future.status == "cancelled" and task.lost < MAX_LOST:
                    # The scheduler dropped it (the worker holding the scattered function died):
                    # send it again.
                    task.lost += 1
                    if not isinstance(self._call, bytes):
                        self._call = self._scatter()
                    self._launch(task)
                    continue
                results.append((task.key, _result(task.future)))
            if not block:
                break
        return results

    def crashed(self, error: BaseException) -> bool:
        return isinstance(error, self._distributed.KilledWorker)

    def cancel(self, keys: list[Any]) -> None:
        wanted = set(keys)
        dropped = [name for name, task in self._tasks.items() if task.key in wanted]
        futures = [self._tasks.pop(name).future for name in dropped]
        if futures:
            self._client.cancel(futures)


def _result(future: Any) -> Outcome | BaseException:
    try:
        value: Outcome = future.result()
    except BaseException as exc:
        return exc
    return value


class DaskBackend(Backend):
    """Runs jobs on a Dask cluster (see the module docstring for which one)."""

    name = "dask"

    def __init__(self) -> None:
        try:
            import distributed  # the engine is imported only when it is used
        except ImportError as exc:
            raise missing_engine("dask", "distributed", exc) from None
        self._distributed: Any = distributed
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}  # address ("" for our LocalCluster) -> our Client
        self._cluster: Any = None  # the LocalCluster we started, if any
        self._exit_hook = False

    @contextlib.contextmanager
    def open(self, options: Resolved, *, private: bool = False) -> Iterator[EngineSet]:
        address = options.address
        # The cluster starts before pickling only when a shared_counter needs an actor on it.
        counters = DaskCounters(lambda: self.client(address))

        def connect(blob: bytes, prefix: str) -> EngineRun:
            client = self.client(address)
            return _DaskRun(self._distributed, client, options, blob, prefix)

        yield EngineSet(options, counters, connect)

    def client(self, address: str | None) -> Any:
        """The client a map with this ``address`` option runs on (see the module docstring)."""
        if address is None:
            try:
                current = self._distributed.get_client()
            except ValueError:
                pass
            else:
                if current.status not in ("closing", "closed"):
                    return current
            address = os.environ.get(ENV_ADDRESS, "").strip() or None
        key = address or ""
        with self._lock:
            client = self._clients.get(key)
            if client is not None and client.status not in ("closing", "closed"):
                return client
            self._register_exit_hook()
            if address is not None:
                client = self._distributed.Client(address, set_as_default=False)
            else:
                if self._cluster is None:
                    self._cluster = self._distributed.LocalCluster(
                        n_workers=usable_cpus(),
                        threads_per_worker=1,
                        processes=True,
                        # Any free port: the default 8787 warns when another cluster holds it.
                        dashboard_address=":0",
                        silence_logs=logging.ERROR,
                    )
                client = self._distributed.Client(self._cluster, set_as_default=False)
            self._clients[key] = client
            return client

    def _register_exit_hook(self) -> None:
        # The exit hook runs before distributed's own exit hooks, so our cluster closes cleanly
        # instead of being torn down mid-flight by finalizers.
        if not self._exit_hook:
            at_exit(self.shutdown)
            self._exit_hook = True

    def shutdown(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            cluster, self._cluster = self._cluster, None
        for client in clients:
            client.close(timeout=CLOSE_TIMEOUT)
        if cluster is not None:
            cluster.close(timeout=CLOSE_TIMEOUT)
