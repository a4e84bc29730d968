"""Ray specifics on a real local Ray session.

The behaviour every backend keeps runs on Ray in the behaviour suite, ``behaviour/``.

Skipped without the ray extra (``pip install "parallelize[ray]"``); CI installs it and runs these.
Deselect with ``-m "not ray"``. One session serves the whole module and is shut down at its end, so
that it never runs beside the LocalCluster of ``test_dask.py`` on a small machine.
"""

from __future__ import annotations

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

ray = pytest.importorskip("ray")

from behaviour.workloads import bump, nap, square, tally  # noqa: E402 - after the skip above
from parallelize import WorkerCrashedError, imap, pmap, shared_counter  # noqa: E402
from parallelize._backends import _engine  # noqa: E402 - the worker set Ray shares with Dask
from parallelize._lifecycle import in_worker  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def session() -> Iterator[None]:
    """One local Ray session of two CPUs, started here, so the backend uses the running one."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_plain_script_exits_quietly_with_its_own_session(tmp_path: Path) -> None:
    """No session anywhere: a quiet local one starts, and interpreter exit shuts it down."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from parallelize import pmap

        assert pmap(abs, range(-50, 0), backend="ray") == list(range(50, 0, -1))
    """))
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=50, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == ""
    assert time.monotonic() - began < 30


@pytest.mark.usefixtures("session")
def test_a_counter_moves_into_a_ray_actor_once() -> None:
    """The first map that pickles a counter moves it into an actor; every later map uses that
    actor, however the counter travels (argument, keyword argument, closure)."""
    counter = shared_counter(0)
    pmap(bump, [counter] * 6, [40] * 6, chunksize=1, backend="ray")
    moved = counter._storage  # type: ignore[attr-defined]
    assert type(moved).__name__ == "RayStorage"
    tally.options(chunksize=1, backend="ray")([40] * 6, by=counter)
    pmap(lambda n: bump(counter, n), [40] * 6, chunksize=1, backend="ray")
    assert counter._storage is moved  # type: ignore[attr-defined]
    assert counter.value == 3 * 240


def _nested(n: int) -> tuple[list[int], bool]:
    return pmap(square, range(n)), in_worker()


@pytest.mark.usefixtures("session")
def test_nested_map_runs_serially_in_the_task() -> None:
    assert pmap(_nested, [3, 4], backend="ray") == [([0, 1, 4], True), ([0, 1, 4, 9], True)]


def _nested_on_ray(n: int) -> list[int]:
    return pmap(square, range(n), backend="ray")


@pytest.mark.usefixtures("session")
def test_a_nested_map_on_ray_itself_runs_serially() -> None:
    assert pmap(_nested_on_ray, [2, 3], backend="ray") == [[0, 1], [0, 1, 4]]


class Point:
    """Stands for a class of the user's script: see the test below."""

    def __init__(self, x: int):
        self.x = x


def _x(point: Point) -> int:
    return point.x


@pytest.mark.usefixtures("session")
def test_items_of_a_class_from_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers never import the user's script: its classes travel by value."""
    monkeypatch.setattr(Point, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Point", Point, raising=False)
    assert pmap(_x, [Point(1), Point(2)], backend="ray") == [1, 2]


@pytest.mark.usefixtures("session")
def test_tiny_items_travel_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[int] = []
    original = _engine.EngineSet.encode

    def counting(self: Any, task: Any) -> Any:
        submitted.append(len(task.items))
        return original(self, task)

    monkeypatch.setattr(_engine.EngineSet, "encode", counting)
    assert pmap(square, range(20_000), backend="ray") == [x * x for x in range(20_000)]
    assert sum(submitted) == 20_000
    assert len(submitted) < 100


@pytest.mark.usefixtures("session")
def test_closing_drops_in_flight_tasks_without_cancelling_them() -> None:
    """In-flight chunks finish on their own (no forced cancel); the session stays usable."""
    stream = imap(nap, [0.3] * 40, backend="ray")
    next(stream)
    stream.close()
    assert pmap(square, range(10), backend="ray") == [x * x for x in range(10)]


def _die(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


@pytest.mark.usefixtures("session")
def test_a_worker_death_fails_only_its_item() -> None:
    """Ray retries the task (max_retries = retries); after that only the culprit item fails."""
    out = pmap(_die, range(8), backend="ray", on_error="return", retries=1)
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5, 6, 7]
    assert isinstance(out[3], WorkerCrashedError)
    assert out[3].index == 3
