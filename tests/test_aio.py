"""``apmap``, ``aimap``, ``f.amap`` and ``f.aimap``: maps for asyncio that never block the loop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from parallelize import MapErrorGroup, aimap, apmap, parallel

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def logged_nap(log: str, seconds: float) -> float:
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return seconds


@parallel(workers=2)
def cube(x: int) -> int:
    return x**3


async def _with_heartbeat(work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``work()``'s result, and how often a 10 ms heartbeat ticked meanwhile."""
    ticks = 0
    stop = asyncio.Event()

    async def beat() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    beating = asyncio.create_task(beat())
    try:
        return await work(), ticks
    finally:
        stop.set()
        await beating


@pytest.mark.parametrize("backend", ["process", "thread", "serial"])
def test_a_map_never_blocks_the_event_loop(backend: str) -> None:
    """A heartbeat coroutine keeps ticking while a 0.6 s map runs."""

    async def work() -> list[float]:
        return await apmap(nap, [0.3, 0.3, 0.3, 0.3], workers=2, chunksize=1, backend=backend)

    values, ticks = asyncio.run(_with_heartbeat(work))
    assert values == [0.3] * 4
    assert ticks >= 20


def test_every_form_returns_what_the_sync_one_does(start_method: str) -> None:
    offset = 1

    async def main() -> list[Any]:
        options: dict[str, Any] = {"workers": 2, "start_method": start_method}
        return [
            await apmap(square, range(10), **options),
            await apmap(lambda x, y: x + y + offset, [1, 2], [10, 20], **options),
            [x async for x in aimap(square, range(10), **options)],
            sorted([x async for x in aimap(square, range(10), ordered=False, **options)]),
            await cube.amap(range(4)),
            [x async for x in cube.aimap(range(4))],
        ]

    squares = [x * x for x in range(10)]
    assert asyncio.run(main()) == [squares, [12, 23], squares, squares, [0, 1, 8, 27]] * 1 + [
        [0, 1, 8, 27]
    ]


def test_errors_follow_on_error() -> None:
    async def main() -> list[Any]:
        with pytest.raises(ZeroDivisionError) as raised:
            await apmap(lambda x: 1 // x, [1, 0, 1], workers=2)
        assert any("index 1" in note for note in raised.value.__notes__)
        got = []
        with pytest.raises(ZeroDivisionError):
            async for value in aimap(lambda x: 1 // x, [1, 1, 0, 1], workers=2, chunksize=1):
                got.append(value)
        assert got == [1, 1]
        return await apmap(lambda x: 1 // x, [1, 0], on_error="return", workers=2)

    one, error = asyncio.run(main())
    assert one == 1 and isinstance(error, ZeroDivisionError)


def test_group_gathers_the_failures_of_an_async_map() -> None:
    async def main() -> tuple[MapErrorGroup, list[int], MapErrorGroup]:
        with pytest.raises(MapErrorGroup) as listed:
            await apmap(lambda x: 1 // x, [1, 0, 1, 0], on_error="group", workers=2)
        got = []
        with pytest.raises(MapErrorGroup) as streamed:
            async for value in aimap(lambda x: 1 // x, [0, 1, 1], on_error="group", workers=2):
                got.append(value)
        return listed.value, got, streamed.value

    listed, got, streamed = asyncio.run(main())
    assert listed.failed_indexes == [1, 3]
    assert listed.results is not None and listed.results[0] == 1
    assert got == [1, 1]
    assert streamed.failed_indexes == [0]


def test_bad_arguments_raise_before_any_await() -> None:
    with pytest.raises(TypeError, match="must be iterable"):
        aimap(square, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        aimap(square, [1], workers=0)
    with pytest.raises(TypeError, match="unexpected option"):
        asyncio.run(apmap(square, [1], colour="red"))


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.parametrize("form", ["apmap", "aimap"])
def test_cancelling_the_task_stops_the_maps_items(form: str, tmp_path: Path) -> None:
    """Items of 30 s each: cancelling the awaiting task stops them at once, and no worker is
    left running them."""
    log = tmp_path / "started"
    log.touch()

    async def consume() -> None:
        if form == "apmap":
            await apmap(logged_nap, [str(log)] * 8, [30] * 8, workers=2, chunksize=1)
        else:
            async for _ in aimap(logged_nap, [str(log)] * 8, [30] * 8, workers=2, chunksize=1):
                pass

    async def main() -> float:
        task = asyncio.create_task(consume())
        while len(log.read_text().split()) < 2:
            await asyncio.sleep(0.05)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - began

    assert asyncio.run(main()) < 5
    pids = {int(line) for line in log.read_text().split()}
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pids)
    assert len(log.read_text().split()) == 2  # nothing else started


def test_aimap_reads_a_bounded_way_ahead() -> None:
    read = 0

    def source() -> Any:
        nonlocal read
        for i in range(1_000_000):
            read += 1
            yield i

    async def main() -> None:
        stream = aimap(square, source(), workers=2, max_ahead=100)
        taken = 0
        async for _ in stream:
            taken += 1
            assert read <= taken + 100 + 4096  # the bound, and a chunk in the making
            if taken == 1000:
                break
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
    assert read < 2000
