"""State the workers share with the map: an initializer's setup, and ``shared_counter``."""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parallelize import imap, pmap, shared_counter

from .conftest import Backend
from .workloads import (
    bump,
    bump_locked,
    read_tag,
    record_worker,
    refuse_to_start,
    set_tag,
    sleep_forever,
    square,
    tally,
    try_lock,
    worker_of,
)

pytestmark = pytest.mark.timeout(60)

# -- the initializer --


def test_initializer_runs_before_the_items(
    backend_options: dict[str, Any], differs: Callable[[str], None]
) -> None:
    """Every item sees what ``initializer(*initargs)`` set up in its worker."""
    differs("initializer")
    tag = uuid.uuid4().hex  # no earlier map can have set it
    out = pmap(read_tag, range(6), initializer=set_tag, initargs=(tag,), **backend_options)
    assert out == [tag] * 6
    assert list(imap(read_tag, range(3), initializer=set_tag, initargs=(tag,),
                     **backend_options)) == [tag] * 3


def test_each_map_sees_its_own_initializer(
    backend_options: dict[str, Any], differs: Callable[[str], None]
) -> None:
    """Workers kept warm between maps run the next map's initializer, not the last one's."""
    differs("initializer")
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    for tag in (first, second, first):
        out = pmap(read_tag, range(4), initializer=set_tag, initargs=(tag,), **backend_options)
        assert out == [tag] * 4


def _assert_initialized_once(backend: Backend, ran: list[tuple[int, int]], log: Path) -> None:
    """Each worker (process or thread, per backend) that ran items ran the initializer once."""
    which = 0 if backend.initializer_per == "process" else 1  # a pid, or a thread id
    lines = log.read_text().splitlines() if log.exists() else []
    initialized = collections.Counter(int(line.split()[which]) for line in lines)
    workers = {worker[which] for worker in ran}
    assert {worker: initialized[worker] for worker in workers} == dict.fromkeys(workers, 1)


def test_initializer_runs_once_per_worker(
    backend: Backend, backend_options: dict[str, Any], differs: Callable[[str], None],
    tmp_path: Path,
) -> None:
    """``initializer`` runs exactly once in each worker that runs items: each worker process
    (each engine worker process on Dask and Ray), each thread on the thread backend."""
    differs("initializer")
    log = tmp_path / "initialized"
    ran = pmap(worker_of, [0.05] * 20, chunksize=1, initializer=record_worker,
               initargs=(str(log),), **backend_options)
    _assert_initialized_once(backend, ran, log)


def test_initializer_runs_once_per_recycled_worker(
    backend: Backend, backend_options: dict[str, Any], differs: Callable[[str], None],
    tmp_path: Path,
) -> None:
    """With ``max_tasks_per_worker=2`` each worker runs at most 2 items and is replaced, and
    every one of the several workers runs the initializer once."""
    differs("recycling")
    differs("initializer")
    log = tmp_path / "initialized"
    ran = pmap(worker_of, [0.01] * 12, chunksize=1, max_tasks_per_worker=2,
               initializer=record_worker, initargs=(str(log),), **backend_options)
    items_per_worker = collections.Counter(pid for pid, _ in ran)
    assert len(items_per_worker) >= 6 and max(items_per_worker.values()) <= 2, items_per_worker
    _assert_initialized_once(backend, ran, log)


def test_a_failing_initializer_raises_in_the_caller(
    backend_options: dict[str, Any], differs: Callable[[str], None]
) -> None:
    """The initializer's own exception reaches the caller, and the next map still runs."""
    differs("initializer")
    with pytest.raises(LookupError, match="no database"):
        pmap(square, range(4), initializer=refuse_to_start, **backend_options)
    assert pmap(square, range(3), **backend_options) == [0, 1, 4]


# -- shared_counter --

TASKS = 6  # more tasks than workers, one chunk each, so increments interleave
TIMES = 40


def test_counter_totals_are_exact_as_argument_keyword_and_closure(
    backend_options: dict[str, Any],
) -> None:
    """Increments from every worker add up exactly, however the counter reached them, and the
    caller's counter is the very one the workers incremented."""
    counter = shared_counter(0)
    tasks, total = [TIMES] * TASKS, TIMES * TASKS
    assert pmap(bump, [counter] * TASKS, tasks, chunksize=1, **backend_options) == tasks
    assert counter.value == total
    tally.options(chunksize=1, **backend_options)(tasks, by=counter)  # a keyword argument
    assert counter.value == 2 * total
    pmap(lambda n: bump(counter, n), tasks, chunksize=1, **backend_options)  # a closure
    assert counter.value == 3 * total
    assert counter.increment() == 3 * total + 1


def test_counter_seed_idiom_under_get_lock(backend_options: dict[str, Any]) -> None:
    """``with counter.get_lock(): counter.value += 1`` (the multiprocessing idiom) is exact,
    and the lock is recursive."""
    counter = shared_counter(5)
    pmap(bump_locked, [counter] * TASKS, [TIMES] * TASKS, chunksize=1, **backend_options)
    assert counter.value == 5 + TASKS * TIMES
    with counter.get_lock():
        counter.value += 1
        with counter.get_lock():  # recursive
            counter.value += 1
    assert counter.value == 7 + TASKS * TIMES


def test_counter_lock_held_by_the_caller_excludes_the_workers(
    backend_options: dict[str, Any], differs: Callable[[str], None]
) -> None:
    """While the caller holds the counter's lock, no worker gets it; once released, they do."""
    differs("caller_lock")
    counter = shared_counter(0)
    pmap(bump, [counter], [1], **backend_options)
    with counter.get_lock():
        assert pmap(try_lock, [counter], **backend_options) == [(False, False)]
    assert pmap(try_lock, [counter], **backend_options) == [(True, True)]


def test_counter_lock_errors_and_range_after_a_map(backend_options: dict[str, Any]) -> None:
    """Once a map has used the counter, releasing an unheld lock is still a RuntimeError and
    the value is still a signed 64-bit integer."""
    counter = shared_counter(0)
    pmap(bump, [counter], [1], **backend_options)
    with pytest.raises(RuntimeError):
        counter.get_lock().release()
    counter.value = 2**63 - 1
    with pytest.raises(OverflowError):
        counter.increment()
    assert counter.value == 2**63 - 1


def test_an_initializer_past_the_timeout_fails_the_map(
    backend_options: dict[str, Any], differs: Callable[[str], None], tmp_path: Path
) -> None:
    """With ``timeout=``, an initializer that never returns fails the map with a TimeoutError
    naming it, instead of hanging; the next map runs."""
    differs("initializer_timeout")
    release = tmp_path / "release"
    began = time.monotonic()
    try:
        with pytest.raises(TimeoutError, match=r"initializer sleep_forever\(\) ran longer"):
            pmap(square, range(4), initializer=sleep_forever, initargs=(str(release),),
                 timeout=1, **backend_options)  # fmt: skip
        assert time.monotonic() - began < 30
        assert pmap(square, range(3), **backend_options) == [0, 1, 4]
    finally:  # abandoned threads and interpreters end (a later fork needs none alive)
        release.touch()
