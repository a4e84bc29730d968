"""The Dask backend: chunks of the map as tasks of a ``distributed`` cluster.

Which cluster, in order: the one named by an explicit ``address`` option (explicit beats ambient,
as for every option); else the current ``distributed.Client``, the one the user made; else the
scheduler named by ``PARALLELIZE_DASK_ADDRESS``; else a ``LocalCluster`` of worker processes sized
to the usable CPUs, started on first use and closed at interpreter exit. Clients we open are never
made the default, so the user's own Dask code is left alone.

The task body and the caller's loop are shared with the Ray backend (:mod:`._remote`). A
``shared_counter`` that a map pickles moves into a Dask actor on a worker
(:mod:`._counter_engines`), so tasks on any machine reach it.

``distributed`` itself is imported only when a :class:`DaskBackend` is created.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Generator
from typing import Any, Final

from .._cpu import usable_cpus
from ._counter_engines import DaskCounters
from ._remote import Driver, EngineRun, Outcome, encode_call, run_remote, task_name
from .base import Backend, Batch, Job, missing_engine

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
        self.key = key  # the Driver's key: stays the same when the task is submitted again
        self.start = start
        self.payload = payload
        self.lost = 0  # times it was cancelled by the scheduler, not by us
        self.future: Any = None  # distributed.Future


# distributed is only partly typed, so its objects are Any here.
class _DaskRun(EngineRun):
    name = "Dask"

    def __init__(
        self, distributed: Any, client: Any, job: Job, blob: bytes, counters: DaskCounters
    ):
        self.counters = counters
        self._client = client
        self._distributed = distributed
        self._job = job
        self.slots = sum(client.nthreads().values())
        self._blob = blob
        self._call: Any = blob if len(blob) <= INLINE_CALL else self._scatter()
        self._prefix = task_name(job)
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
        options = self._job.options
        task.future = self._client.submit(
            run_remote,
            self._call,
            task.start,
            task.payload,
            options.retries,
            options.timeout,
            key=f"{self._prefix}-{uuid.uuid4().hex}",
            pure=False,
            retries=options.retries,
        )
        self._tasks[task.future.key] = task
        self._completed.add(task.future)

    def wait(self) -> list[tuple[Any, Outcome | BaseException]]:
        results: list[tuple[Any, Outcome | BaseException]] = []
        while not results:
            done = [f for f in self._completed.next_batch(block=True) if f.key in self._tasks]
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
        return results

    def crashed(self, error: BaseException) -> bool:
        return isinstance(error, self._distributed.KilledWorker)

    def cancel(self, keys: list[Any]) -> None:
        wanted = set(keys)
        futures = [task.future for task in self._tasks.values() if task.key in wanted]
        self._tasks.clear()
        self._completed.clear()
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

    def run(self, job: Job) -> Generator[Batch, None, None]:
        address = job.options.address
        # The cluster starts before pickling only when a shared_counter needs an actor on it.
        counters = DaskCounters(lambda: self.client(address))
        blob = encode_call(job, counters)
        client = self.client(address)
        yield from Driver(_DaskRun(self._distributed, client, job, blob, counters), job).run()

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
        # Registered after distributed's own exit hooks, so it runs before them (atexit is LIFO)
        # and our cluster closes cleanly instead of being torn down mid-flight by finalizers.
        if not self._exit_hook:
            atexit.register(self.shutdown)
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
