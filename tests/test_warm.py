"""Warm workers across maps that change their configuration, and maps inside an imap loop: the
pools are kept, one per configuration, within a budget of idle workers."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallelize import imap, pmap
from parallelize._backends._warm import IdlePools, warm_workers
from support import script_env

pytestmark = pytest.mark.timeout(120)


def pid(_: object) -> int:
    return os.getpid()


def _pids(**options: object) -> set[int]:
    return set(pmap(pid, range(8), chunksize=1, **options))


@pytest.mark.parametrize(
    ("option", "values"),
    [
        ("workers", (2, 1)),
        ("start_method", ("fork", "spawn")),
        ("max_tasks_per_worker", (None, 1000)),
    ],
)
def test_alternating_configurations_keep_their_workers(
    option: str, values: tuple[object, object]
) -> None:
    base: dict[str, object] = {"workers": 2, "start_method": "fork"}
    seen: dict[object, set[int]] = {value: set() for value in values}
    for _ in range(3):
        for value in values:
            options = {**base, option: value}
            seen[value] |= _pids(**options)
    for value in values:  # never more processes than one pool of that configuration has
        assert 0 < len(seen[value]) <= ({**base, option: value}["workers"])


def test_a_map_inside_an_imap_loop_finds_its_workers_warm() -> None:
    inner: set[int] = set()
    outer = set()
    for worker in imap(pid, range(6), workers=2, chunksize=1, start_method="fork"):
        outer.add(worker)
        inner |= _pids(workers=2, start_method="fork")
    assert 0 < len(inner) <= 2  # one warm pool served every inner map
    assert not inner & outer  # the outer map's workers were busy: the inner maps have their own


def test_idle_workers_stay_within_the_budget() -> None:
    for workers in range(1, warm_workers() + 2):
        pmap(pid, range(workers), workers=workers, chunksize=1, start_method="fork")
    assert len(multiprocessing.active_children()) <= warm_workers() + 1


class _Pool:
    """Stands in for a pool: a key, some running workers, and a record of being closed."""

    def __init__(self, key: str, workers: int, fails: bool = False):
        self.key = key
        self.workers = [None] * workers
        self.fails = fails
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.fails:
            raise RuntimeError("cannot stop")


def _new(key: str) -> _Pool:
    return _Pool(key, 0)


def test_idle_pools_hand_out_the_most_recent_of_a_configuration() -> None:
    idle: IdlePools[_Pool] = IdlePools()
    older, newer, other = _Pool("a", 1), _Pool("a", 1), _Pool("b", 1)
    for pool in (older, newer, other):
        idle.keep(pool, budget=10)
    assert idle.take("a", _new) is newer
    assert idle.take("a", _new) is older
    assert idle.take("a", _new).workers == []  # none left: a new one
    assert idle.pools == [other]


def test_idle_pools_close_the_least_recently_used_past_the_budget() -> None:
    idle: IdlePools[_Pool] = IdlePools()
    first, second, third = _Pool("a", 2, fails=True), _Pool("b", 2), _Pool("c", 2)
    others: list[_Pool] = []
    idle.keep(first, budget=4)
    idle.keep(second, budget=4)
    idle.keep(third, budget=4, others=others.append)  # one failing to stop stops no other
    assert idle.pools == [second, third]
    assert first.closed and not second.closed and not third.closed
    assert others == [second]  # told of every other pool still kept
    huge = _Pool("d", 9)
    idle.keep(huge, budget=4)  # the most recent is kept whatever its size
    assert idle.pools == [huge]
    assert second.closed and third.closed
    idle.close_all()
    assert huge.closed and idle.pools == []


def test_closing_every_idle_pool_goes_on_past_one_that_fails() -> None:
    idle: IdlePools[_Pool] = IdlePools()
    failing, other = _Pool("a", 1, fails=True), _Pool("b", 1)
    idle.keep(failing, budget=10)
    idle.keep(other, budget=10)
    with pytest.raises(RuntimeError):
        idle.close_all()  # the failure still reaches the caller, once the rest are closed
    assert failing.closed and other.closed and idle.pools == []


SETS_UP_AT_IMPORT = """
import random
from concurrent.futures import ThreadPoolExecutor

EXECUTOR = ThreadPoolExecutor(1)
EXECUTOR.submit(int).result()  # its thread started as the module is imported
SEED = random.SystemRandom().getrandbits(64)  # a module-level generator's state
"""

FORKSERVER_SCRIPT = """
import os, sys
import setup_at_import
from parallelize import pmap


def work(_):
    return os.getpid(), setup_at_import.EXECUTOR.submit(os.getpid).result(), setup_at_import.SEED


if __name__ == "__main__":
    done = pmap(work, range(4), workers=2, chunksize=1, max_tasks_per_worker=1,
                start_method="forkserver")  # a new worker for each item
    print(len({pid for pid, _, _ in done}), all(pid == inner for pid, inner, _ in done),
          len({seed for _, _, seed in done}), flush=True)
"""


def test_forkserver_workers_import_the_script_themselves(tmp_path: Path) -> None:
    """A forkserver worker imports the caller's script (and its modules) itself, as under
    spawn, never inheriting them from the fork server: what a module sets up at import (a
    thread pool with its thread, a generator's state) is then each worker's own (inherited, the
    pool's thread is missing and workers hang on it; the state repeats in every worker)."""
    (tmp_path / "setup_at_import.py").write_text(SETS_UP_AT_IMPORT, encoding="utf-8")
    script = tmp_path / "script.py"
    script.write_text(FORKSERVER_SCRIPT, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=60, check=False, env=script_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "True", "4"]
