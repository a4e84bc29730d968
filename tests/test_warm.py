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


FORKSERVER_SCRIPT = """
import os, sys
import numbers  # something the script imports, that workers should inherit
from parallelize import pmap

print("ran", os.getpid(), file=sys.stderr, flush=True)
line = sys.stdin.readline()  # at the top level: the fork server must not wait on the caller's stdin


def where(_):
    return os.getppid(), "numbers" in sys.modules, sys.argv[1:]


if __name__ == "__main__":
    first = pmap(where, range(4), workers=2, chunksize=1, start_method="forkserver")
    other = pmap(where, range(4), workers=1, chunksize=1, start_method="forkserver")
    print(len({ppid for ppid, _, _ in first + other}), all(seen for _, seen, _ in first + other),
          {tuple(argv) for _, _, argv in first + other})
"""


def test_forkserver_workers_inherit_the_script_instead_of_running_it(script: Path) -> None:
    """The fork server imports the caller's script once (with its imports, its argv and its
    stdin at end of file); every worker forked from it, of every pool, starts with it in place
    instead of running the script again (which multiprocessing's own preload of ``__main__``
    fails to spare them before Python 3.13.8)."""
    script.write_text(FORKSERVER_SCRIPT, encoding="utf-8")
    with subprocess.Popen(
        [sys.executable, str(script), "an-argument"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
    ) as done:
        assert done.stdin is not None
        done.stdin.write("one line, and the pipe stays open\n")
        done.stdin.flush()
        try:
            done.wait(timeout=100)
        finally:
            done.kill()
            done.stdin.close()
        out, err = done.stdout.read(), done.stderr.read()  # type: ignore[union-attr]
    assert done.returncode == 0, err
    ran = [line for line in err.splitlines() if line.startswith("ran")]
    assert len(ran) == 2, err  # the caller and the fork server, no worker
    assert out.strip().split(maxsplit=2) == ["1", "True", "{('an-argument',)}"]
