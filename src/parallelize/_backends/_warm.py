"""Idle pools kept warm between maps, for the backends whose workers outlive a map (processes
and interpreters): one pool per configuration, the least recently used closed past a budget."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sized
from typing import Generic, Protocol, TypeVar

from .._cpu import usable_cpus
from .._lifecycle import close_each


def warm_workers() -> int:
    """Idle workers kept warm between maps, over every configuration (the most recently used
    pool is kept whatever its size): enough for a program that alternates a few configurations,
    or runs maps inside an imap loop, to find its workers warm. (A function: read when a map
    ends, not when the module is imported.)"""
    return max(8, 4 * usable_cpus())


class Kept(Protocol):
    """What :class:`IdlePools` keeps: a pool with a configuration key, its running workers, and
    a way to stop them."""

    @property
    def key(self) -> object: ...

    @property
    def workers(self) -> Sized: ...

    def close(self) -> None: ...


PoolT = TypeVar("PoolT", bound=Kept)
KeyT = TypeVar("KeyT")


class IdlePools(Generic[PoolT]):
    """The pools a backend keeps warm between maps, the least recently used first: a map takes
    one of its configuration, and a map that ends gives its pool back, as the most recent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held to read or change ``pools``
        self.pools: list[PoolT] = []

    def take(self, key: KeyT, new: Callable[[KeyT], PoolT]) -> PoolT:
        """The most recently used idle pool of configuration ``key``, no longer idle; else
        ``new(key)``."""
        with self.lock:
            for index in range(len(self.pools) - 1, -1, -1):
                if self.pools[index].key == key:
                    return self.pools.pop(index)
        return new(key)

    def keep(
        self, pool: PoolT, budget: int, others: Callable[[PoolT], object] | None = None
    ) -> None:
        """Keep ``pool`` as the most recently used, closing the least recently used others
        while the running workers of all pass ``budget`` (``pool`` is kept whatever its size).
        ``others``, if given, is called under the lock on each other pool still kept."""
        with self.lock:
            self.pools.append(pool)
            evicted = []
            while len(self.pools) > 1 and sum(len(p.workers) for p in self.pools) > budget:
                evicted.append(self.pools.pop(0))
            if others is not None:
                for other in self.pools[:-1]:
                    others(other)
        for old in evicted:  # one pool failing to stop must not keep the others running
            with contextlib.suppress(Exception):
                old.close()

    def close_all(self) -> None:
        """Close every idle pool (at shutdown); then raise the first error any close raised, so
        that one pool failing to stop does not leave the others' workers running."""
        with self.lock:
            idle, self.pools = self.pools, []
        close_each(pool.close for pool in idle)
