"""Dask specifics on a real ``distributed.LocalCluster`` of processes.

The behaviour every backend keeps runs on Dask in the behaviour suite, ``behaviour/``.

Skipped without the dask extra (``pip install "parallelize[dask]"``); CI installs it and runs these.
Deselect with ``-m "not dask"``. One cluster serves the whole module and is shut down at its end, so
that it never runs beside the Ray session of ``test_ray.py`` on a small machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402 - installed with distributed

from behaviour.workloads import bump, nap, square, tally  # noqa: E402 - after the skip above
from parallelize import WorkerCrashedError, imap, pmap, shared_counter  # noqa: E402
from parallelize._backends import _engine, get_backend  # noqa: E402
from parallelize._backends import dask as dask_backend  # noqa: E402
from parallelize._lifecycle import in_worker  # noqa: E402

pytestmark = [pytest.mark.dask, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One LocalCluster of two single-threaded worker processes, set as the current client.

    The scheduler does not retry a task whose worker died (allowed-failures 0 instead of 3), to
    keep the crash test short: the backend's own isolation of the culprit is what it checks.
    """
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as local, distributed.Client(local) as client:
        yield client
        get_backend("dask").shutdown()  # clients it opened to this cluster close first


def test_plain_script_exits_quietly_with_its_own_cluster(tmp_path: Path) -> None:
    """No client anywhere: a LocalCluster starts, and interpreter exit closes it silently."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from parallelize import pmap

        if __name__ == "__main__":
            assert pmap(abs, range(-50, 0), backend="dask") == list(range(50, 0, -1))
    """))
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True,
                            text=True, timeout=50, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert time.monotonic() - began < 30


@pytest.mark.usefixtures("cluster")
def test_a_counter_moves_into_a_dask_actor_once() -> None:
    """The first map that pickles a counter moves it into an actor; every later map uses that
    actor, however the counter travels (argument, keyword argument, closure)."""
    counter = shared_counter(0)
    pmap(bump, [counter] * 6, [40] * 6, chunksize=1, backend="dask")
    moved = counter._storage  # type: ignore[attr-defined]
    assert type(moved).__name__ == "DaskStorage"
    tally.options(chunksize=1, backend="dask")([40] * 6, by=counter)
    pmap(lambda n: bump(counter, n), [40] * 6, chunksize=1, backend="dask")
    assert counter._storage is moved  # type: ignore[attr-defined]
    assert counter.value == 3 * 240


def test_a_counter_that_crossed_leaves_dev_shm(cluster: Any) -> None:
    """Once in a Dask actor, the counter no longer needs this machine's file."""
    counter = shared_counter(0)
    path = os.path.join("/dev/shm", counter._storage.name)  # type: ignore[attr-defined]
    pmap(bump, [counter] * 4, [10] * 4, backend="dask")
    assert counter.value == 40
    assert not os.path.exists(path)


def _nested(n: int) -> tuple[list[int], bool]:
    return pmap(square, range(n)), in_worker()


def test_nested_map_runs_serially_in_the_task(cluster: Any) -> None:
    """A Dask worker is a daemonic process: a nested map must not try to start a pool in it."""
    assert pmap(_nested, [3, 4], backend="dask") == [([0, 1, 4], True), ([0, 1, 4, 9], True)]
    assert not in_worker()


def _nested_on_dask(n: int) -> list[int]:
    return pmap(square, range(n), backend="dask")


def test_a_nested_map_on_dask_itself_runs_serially(cluster: Any) -> None:
    """Tasks waiting on tasks of their own cluster would hold every slot and wait for ever."""
    assert pmap(_nested_on_dask, [2, 3], backend="dask") == [[0, 1], [0, 1, 4]]


def test_an_in_process_cluster_leaves_the_caller_a_caller(cluster: Any) -> None:
    """Tasks of a processes=False cluster run in the caller's threads: the caller stays a caller,
    and its later process maps still start workers."""
    with distributed.LocalCluster(
        n_workers=1, processes=False, dashboard_address=":0", silence_logs=logging.ERROR
    ) as local:
        assert pmap(_nested, [2], backend="dask", address=local.scheduler_address) == [
            ([0, 1], True)
        ]
        get_backend("dask").shutdown()
    assert not in_worker()
    assert os.getpid() not in pmap(_pid, range(4), workers=2)


def _pid(_: int) -> int:
    return os.getpid()


def test_uses_the_current_client(cluster: Any) -> None:
    assert get_backend("dask").client(None) is cluster  # type: ignore[attr-defined]


def test_address_option_and_environment(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit address wins; then the current client; then PARALLELIZE_DASK_ADDRESS."""
    address = cluster.scheduler.address
    backend = get_backend("dask")
    assert pmap(square, range(10), backend="dask", address=address) == [x * x for x in range(10)]
    own = backend.client(address)  # type: ignore[attr-defined]
    assert own is not cluster
    assert own.scheduler.address == address
    monkeypatch.setenv(dask_backend.ENV_ADDRESS, "tcp://192.0.2.1:8786")
    assert backend.client(None) is cluster  # a current client comes before the variable


def test_tiny_items_travel_in_chunks(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[int] = []
    original = _engine.EngineSet.encode

    def counting(self: Any, task: Any) -> Any:
        submitted.append(len(task.items))
        return original(self, task)

    monkeypatch.setattr(_engine.EngineSet, "encode", counting)
    assert pmap(square, range(20_000), backend="dask") == [x * x for x in range(20_000)]
    assert sum(submitted) == 20_000
    assert len(submitted) < 100


def test_infinite_input_is_never_handed_over_whole(cluster: Any) -> None:
    """client.map refuses iterators: chunks are read from the input as tasks finish."""
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    stream = imap(square, endless(), backend="dask")
    assert [next(stream) for _ in range(1000)] == [x * x for x in range(1000)]
    stream.close()


def test_closing_cancels_outstanding_tasks(cluster: Any) -> None:
    stream = imap(nap, [0.5] * 40, backend="dask")
    next(stream)
    stream.close()

    def idle() -> bool:
        return not any(cluster.processing().values())

    deadline = time.monotonic() + 5
    while not idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idle()


def _die(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


def test_a_worker_death_fails_only_its_item(cluster: Any) -> None:
    """Only the item that kills its worker fails, even when Dask blames the tasks queued with it."""
    out = pmap(_die, range(8), backend="dask", on_error="return")
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
    assert isinstance(out[3], WorkerCrashedError)
    assert out[3].index == 3
    cluster.wait_for_workers(2, timeout=30)


def test_a_counter_whose_worker_died_fails_its_users_without_hanging(cluster: Any) -> None:
    """The actor holding a crossed counter dies with its worker: increments then fail fast."""
    counter = shared_counter(0)
    pmap(bump, [counter] * 2, [1] * 2, backend="dask")
    holder = counter._storage._actor._address  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):  # the worker exits under the call
        cluster.submit(os._exit, 1, workers=[holder], pure=False).result(timeout=30)
    began = time.monotonic()
    out = pmap(bump, [counter] * 2, [1] * 2, backend="dask", on_error="return")
    assert all(isinstance(error, RuntimeError) for error in out), out
    assert time.monotonic() - began < 30
    cluster.wait_for_workers(2, timeout=30)
