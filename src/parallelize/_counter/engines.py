"""``shared_counter`` on Dask and Ray: the integer and its lock in a small actor of the engine.

When a map on an engine pickles a counter, the counter moves into one of these storages (see
:func:`parallelize._counter.crossing`). Each counter gets one :class:`CounterHost`: a Ray actor,
or a Dask actor living on a worker (``client.submit(CounterHost, actor=True)``). Both engines run
an actor's ``async`` methods one at a time on a single event loop, so each method is atomic
without a lock of its own, and every operation is one round trip to the actor, from any machine:

* ``add``, ``get`` and ``set`` wait while another holder has the counter's lock;
* the lock is recursive and held by a *holder*, one thread of one process
  (:func:`holder`); a waiting ``acquire`` parks on the actor's event loop, so waiters cost
  nothing, and a timed one gives up on the actor.

The caller's counter keeps the actor alive (Ray counts handles; the Dask storage made by the
caller holds the actor's future). Neither engine is imported here: the backends pass their
module in, and a storage unpickled in a worker imports only its own engine.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import secrets
import threading
import uuid
from typing import Any, Final

from .local import MAX_VALUE, MIN_VALUE, CounterStorage, check_range

# Tells apart processes that share a pid (on two machines, or after a pid is reused).
_PROCESS_TOKEN: Final = secrets.token_hex(8)
# What getting the value back from add() means: the result would not fit in 64 bits.
_OVERFLOW: Final = None
# A call to a Dask counter's actor waits this long at a time, then checks that the worker holding
# the actor is still in the cluster: a counter whose worker died fails its callers, never hangs.
DASK_ACTOR_POLL: Final = 1.0


def holder() -> str:
    """Who holds a counter's lock: this thread of this process (a fork child is another)."""
    return f"{_PROCESS_TOKEN}-{os.getpid()}-{threading.get_ident()}"


class CounterHost:
    """The actor: one counter's integer and its recursive lock, keyed by holder."""

    def __init__(self, value: int) -> None:
        self._value = value
        self._holder: str | None = None
        self._depth = 0
        self._freed: asyncio.Condition | None = None  # made on the actor's own event loop

    def _condition(self) -> asyncio.Condition:
        if self._freed is None:
            self._freed = asyncio.Condition()
        return self._freed

    async def _wait(self, who: str, timeout: float | None) -> bool:
        """Wait (holding the condition) until ``who`` may act; False once ``timeout`` passed."""
        freed = self._condition()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._holder is not None and self._holder != who:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            # On a timeout, wait() has taken the condition back: the loop checks the deadline.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(freed.wait(), left)
        return True

    async def add(self, delta: int, who: str) -> int | None:
        """Add ``delta``; the new value, or None (unchanged) when it would not fit."""
        async with self._condition():
            await self._wait(who, None)
            value = self._value + delta
            if not MIN_VALUE <= value <= MAX_VALUE:
                return _OVERFLOW
            self._value = value
            return value

    async def get(self, who: str) -> int:
        async with self._condition():
            await self._wait(who, None)
            return self._value

    async def set(self, value: int, who: str) -> None:
        async with self._condition():
            await self._wait(who, None)
            self._value = value

    async def acquire(self, who: str, timeout: float | None) -> bool:
        """Take the lock for ``who`` (again, if it holds it); False if not free in ``timeout``."""
        async with self._condition():
            if not await self._wait(who, timeout):
                return False
            self._holder = who
            self._depth += 1
            return True

    async def release(self, who: str) -> bool:
        """Release once; False if ``who`` does not hold the lock."""
        freed = self._condition()
        async with freed:
            if self._holder != who:
                return False
            self._depth -= 1
            if not self._depth:
                self._holder = None
                freed.notify_all()
            return True


class _ActorStorage(abc.ABC):
    """A :class:`~parallelize._counter.CounterStorage` whose every call goes to a CounterHost."""

    @abc.abstractmethod
    def _call(self, method: str, *args: Any) -> Any:
        """Call the actor's ``method`` and wait for its result."""

    def get(self) -> int:
        value: int = self._call("get", holder())
        return value

    def set(self, value: int) -> None:
        self._call("set", check_range(value), holder())

    def add(self, delta: int) -> int:
        value: int | None = self._call("add", delta, holder())
        if value is None:  # _OVERFLOW
            raise OverflowError("the result does not fit a shared counter (a signed 64-bit int)")
        return value

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock (recursively); False if it was not free in time."""
        wait = (None if timeout is None else max(timeout, 0.0)) if block else 0.0
        got: bool = self._call("acquire", holder(), wait)
        return got

    def release(self) -> None:
        """Release the lock once; RuntimeError if this thread does not hold it."""
        if not self._call("release", holder()):
            raise RuntimeError("cannot release a shared counter's lock this thread does not hold")

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# -- Ray ------------------------------------------------------------------------------------------


class RayStorage(_ActorStorage):
    """A counter in a Ray actor of the session ``session``."""

    def __init__(self, actor: Any, session: str):
        import ray  # only where a Ray counter is used

        self._get = ray.get
        self._actor = actor  # ray.actor.ActorHandle: keeps the actor alive
        self.session = session

    def _call(self, method: str, *args: Any) -> Any:
        return self._get(getattr(self._actor, method).remote(*args))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayStorage, (self._actor, self.session))

    def __repr__(self) -> str:
        return f"RayStorage({self._actor!r})"


def ray_session(ray: Any) -> str:
    """The running Ray session, so a counter is not taken for one that lives in an older one."""
    context = ray.get_runtime_context()
    return f"{context.gcs_address}/{context.get_job_id()}"


class RayCounters:
    """The :class:`~parallelize._counter.CounterEngine` of a Ray session; ``connect`` starts it."""

    def __init__(self, ray: Any, connect: Any):
        self._ray = ray
        self._connect = connect  # () -> None: makes sure a session is running
        self._host: Any = None  # CounterHost as a Ray actor class, made on first use

    def owns(self, storage: CounterStorage) -> bool:
        if not isinstance(storage, RayStorage):
            return False
        self._connect()
        return storage.session == ray_session(self._ray)

    def create(self, value: int) -> CounterStorage:
        self._connect()
        if self._host is None:
            # No CPU: the actor only waits for calls, and must not take a slot from the tasks.
            self._host = self._ray.remote(num_cpus=0)(CounterHost)
        return RayStorage(self._host.remote(value), ray_session(self._ray))


# -- Dask -----------------------------------------------------------------------------------------


class DaskStorage(_ActorStorage):
    """A counter in a Dask actor on a worker of the cluster at ``address``."""

    def __init__(self, actor: Any, address: str, future: Any = None):
        self._actor = actor  # distributed.Actor
        self.address = address  # the scheduler's
        self._future = future  # in the process that made it: the future keeps the actor alive

    def _call(self, method: str, *args: Any) -> Any:
        pending = getattr(self._actor, method)(*args)
        while True:
            try:
                return pending.result(timeout=DASK_ACTOR_POLL)
            except TimeoutError:  # a long wait for the lock is fine; a dead actor is not
                if not self._actor_alive():
                    raise RuntimeError(
                        "the Dask worker that held this shared_counter is gone, and the "
                        "counter's value with it"
                    ) from None

    def _actor_alive(self) -> bool:
        """Whether the worker holding the actor is still in the cluster (True when unsure: no
        client of the counter's own cluster at hand, such as a backend's non-default one)."""
        import distributed  # only where a Dask counter is used

        try:
            client = distributed.get_client()
            if getattr(client.scheduler, "address", None) != self.address:
                return True
            workers = client.scheduler_info(n_workers=-1)["workers"]
        except Exception:
            return True
        return self._actor._address in workers

    def __reduce__(self) -> tuple[Any, ...]:
        return (DaskStorage, (self._actor, self.address))

    def __repr__(self) -> str:
        return f"DaskStorage({self._actor!r})"


class DaskCounters:
    """The :class:`~parallelize._counter.CounterEngine` of a Dask cluster; ``client`` gives its
    client (starting it only when a counter crosses)."""

    def __init__(self, client: Any):
        self._client = client  # () -> distributed.Client

    def owns(self, storage: CounterStorage) -> bool:
        if not isinstance(storage, DaskStorage):
            return False
        return bool(storage.address == self._client().scheduler.address)

    def create(self, value: int) -> CounterStorage:
        client = self._client()
        future = client.submit(
            CounterHost, value, actor=True, key=f"parallelize-counter-{uuid.uuid4().hex}"
        )
        with client.as_current():  # the actor binds to this client, which is not the default
            actor = future.result()
        return DaskStorage(actor, client.scheduler.address, future)
