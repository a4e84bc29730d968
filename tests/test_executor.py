"""``parallelize.Executor``: a real ``concurrent.futures.Executor``, ported with one import."""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import gc
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallelize import Executor, WorkerCrashedError
from support import children_at_most, live_children

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def die(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_123() -> None:
    raise RuntimeError(123)  # the line the traceback shows


def test_it_is_a_concurrent_futures_executor(start_method: str) -> None:
    """``submit`` returns a standard ``Future``; ``wait``, ``as_completed`` and ``map`` work as
    with ``ProcessPoolExecutor``, under every start method, with a closure."""
    offset = 100
    context = multiprocessing.get_context(start_method)
    with Executor(2, mp_context=context) as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        future = executor.submit(square, 7)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=30) == 49
        assert executor.submit(lambda x, y=0: x + y + offset, 1, y=2).result(timeout=30) == 103
        futures = [executor.submit(square, i) for i in range(20)]
        done, _ = concurrent.futures.wait(futures, timeout=30)
        assert len(done) == 20
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == sorted(
            i * i for i in range(20)
        )
        assert list(executor.map(square, range(10))) == [i * i for i in range(10)]
        assert list(executor.map(pow, [2, 3], [5, 2])) == [32, 9]
        assert list(executor.map(square, [], chunksize=5)) == []


def test_an_error_is_the_futures_exception_with_the_workers_traceback() -> None:
    with Executor(1) as executor:
        error = executor.submit(raise_123).exception(timeout=30)
        assert type(error) is RuntimeError and error.args == (123,)
        cause = error.__cause__
        assert type(cause) is concurrent.futures.process._RemoteTraceback
        assert "raise RuntimeError(123)  # the line the traceback shows" in cause.tb
        results = executor.map(lambda x: 1 // x, [1, 0, 1])
        assert next(results) == 1
        with pytest.raises(ZeroDivisionError):
            next(results)


def test_a_crash_fails_only_its_own_future() -> None:
    """The standard library breaks every pending future when a worker dies; ours fails only the
    one that ran in it, with an error ``except BrokenProcessPool`` still catches."""
    with Executor(2) as executor:
        others = [executor.submit(nap, 0.2) for _ in range(4)]
        crashed = executor.submit(die, None)
        with pytest.raises(concurrent.futures.process.BrokenProcessPool) as raised:
            crashed.result(timeout=30)
        assert isinstance(raised.value, WorkerCrashedError)
        assert [f.result(timeout=30) for f in others] == [0.2] * 4
        assert executor.submit(square, 3).result(timeout=30) == 9


def test_map_times_out_from_the_call() -> None:
    with Executor(2) as executor:
        results = executor.map(nap, [0.0, 5.0], timeout=0.5)
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            list(results)
        assert time.monotonic() - began < 4
        executor.kill_workers()  # not the 5 s the slow item would hold the exit


def test_map_reads_lazily_within_buffersize() -> None:
    """3.14's ``buffersize``, on every Python: no more than that many chunks are read ahead of
    the results taken, so an endless input works."""
    read = 0
    taken = 0

    def source() -> Iterator[int]:
        nonlocal read
        for i in itertools.count():
            read += 1
            yield i

    with Executor(2) as executor:
        results = executor.map(square, source(), buffersize=4)
        for value in results:
            assert value == taken * taken
            taken += 1
            assert read <= taken + 4
            if taken == 50:
                break
        results.close()
        left = executor.map(square, source(), buffersize=2)
        assert next(left) == 0  # then dropped unfinished: shutdown must not wait for it
    with pytest.raises(ValueError, match="buffersize must be None or > 0"):
        Executor(1).map(square, [1], buffersize=0)
    with pytest.raises(TypeError, match="buffersize must be an integer"):
        Executor(1).map(square, [1], buffersize=1.5)  # type: ignore[arg-type]


def test_shutdown_cancels_what_did_not_start() -> None:
    before = live_children()
    executor = Executor(1)
    futures = [executor.submit(nap, 0.3) for _ in range(10)]
    time.sleep(0.1)
    executor.shutdown(wait=True, cancel_futures=True)
    assert futures[0].result() == 0.3
    assert sum(f.cancelled() for f in futures) >= 5
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(square, 1)
    assert children_at_most(before) <= before


def test_a_pending_future_can_be_cancelled() -> None:
    with Executor(1) as executor:
        running = executor.submit(nap, 0.5)
        queued = [executor.submit(nap, 0.5) for _ in range(5)]
        assert queued[-1].cancel()
        assert running.result(timeout=30) == 0.5
    assert queued[-1].cancelled()


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_at_once(how: str) -> None:
    before = live_children()
    executor = Executor(2)
    future = executor.submit(nap, 60)
    time.sleep(0.3)
    began = time.monotonic()
    getattr(executor, how)()
    assert time.monotonic() - began < 10
    assert isinstance(future.exception(timeout=10), WorkerCrashedError)
    assert children_at_most(before) <= before


def test_run_in_executor_does_not_block_the_loop() -> None:
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        ticks = 0
        stop = asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(heartbeat())
        with Executor(2) as executor:
            calls = [loop.run_in_executor(executor, nap, 0.3) for _ in range(2)]
            await asyncio.gather(*calls)
            values = await asyncio.gather(
                *(loop.run_in_executor(executor, square, i) for i in range(5))
            )
        stop.set()
        await beat
        return values, ticks

    values, ticks = asyncio.run(main())
    assert values == [0, 1, 4, 9, 16]
    assert ticks >= 10


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"initializer": 1}, TypeError, "initializer must be a callable"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1"),
        ({"max_tasks_per_child": "2"}, TypeError, "max_tasks_per_child must be an integer"),
        ({"backend": "ray"}, ValueError, "not available for an Executor"),
    ],
)
def test_bad_arguments_are_the_standard_librarys_errors(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Executor(**kwargs)  # type: ignore[arg-type]


def test_thread_backend_runs_in_this_process() -> None:
    lock = threading.Lock()
    with Executor(2, backend="thread") as executor:
        assert executor.submit(lambda: (os.getpid(), lock.locked())).result(30) == (
            os.getpid(),
            False,
        )


def test_max_tasks_per_child_replaces_workers() -> None:
    with Executor(1, max_tasks_per_child=2) as executor:
        pids = {executor.submit(os.getpid).result(timeout=30) for _ in range(6)}
    assert len(pids) >= 3


def _refuse_unpickling() -> None:
    raise pickle.UnpicklingError("refused")


class ErrorAtUnpickle:
    def __reduce__(self) -> tuple[object, ...]:
        return _refuse_unpickling, ()


def make_object(_: object) -> object:
    return type("Made", (), {})()


def test_map_holds_no_result_the_caller_let_go() -> None:
    """CPython's ``test_free_reference``: a result ``map`` yielded is freed once the caller
    drops it."""
    with Executor(2) as executor:
        for obj in executor.map(make_object, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


def test_failed_workers_break_pending_futures_as_the_standard_librarys() -> None:
    """Workers that fail as a whole (here, a message they cannot read) fail the pending futures
    with ``BrokenProcessPool``, the reason as its cause; the next call starts anew."""
    with Executor(2) as executor:
        future = executor.submit(id, ErrorAtUnpickle())
        with pytest.raises(concurrent.futures.process.BrokenProcessPool) as raised:
            future.result(timeout=30)
        assert raised.value.__cause__ is not None
        assert executor.submit(square, 3).result(timeout=30) == 9


def test_pending_calls_finish_at_interpreter_exit(script: Path) -> None:
    """As with ``ProcessPoolExecutor``: calls submitted and never waited for still run before
    the interpreter exits, and a ``submit`` from an exit handler is refused."""
    script.write_text(
        textwrap.dedent("""
            import atexit, time
            from parallelize import Executor

            def late():
                try:
                    executor.submit(print, "never")
                except RuntimeError as exc:
                    print("refused:", exc)

            def slow_print(text):
                time.sleep(0.5)
                print(text, flush=True)

            if __name__ == "__main__":
                atexit.register(late)
                executor = Executor(2)
                executor.submit(slow_print, "apple")
        """)
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n", 1)[0] == "apple"
    assert "refused: cannot schedule new futures after interpreter shutdown" in run.stdout


class _ExitAtPickle:
    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit(3)


def make_exit_at_pickle(_: object) -> object:
    return _ExitAtPickle()


class _Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise RuntimeError("cannot pickle")


def test_what_pickling_a_result_raises_is_the_calls_own() -> None:
    """As in the standard library: a result whose pickling calls ``sys.exit`` fails its call with
    that ``SystemExit``; the worker lives on."""
    with Executor(1) as executor:
        with pytest.raises(SystemExit):
            executor.submit(make_exit_at_pickle, 0).result(timeout=30)
        assert executor.submit(square, 4).result(timeout=30) == 16


def test_an_argument_that_does_not_pickle_names_its_place() -> None:
    with Executor(1) as executor:
        assert executor.submit(square, 2).result(timeout=30) == 4  # not the session's first call
        error = executor.submit(square, _Unpicklable()).exception(timeout=30)
        assert error is not None and "cannot pickle" in str(error)
        assert any("index 0" in note for note in error.__notes__), error.__notes__


def test_the_first_calls_start_at_once_as_the_standard_librarys() -> None:
    """Cancelling right after submitting leaves the first calls (one per worker, and one more)
    running, as the standard executor's eager queue does; the rest are cancelled."""
    executor = Executor(2)
    futures = [executor.submit(nap, 0.1) for _ in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)
    ran = [f for f in futures if not f.cancelled()]
    assert 1 <= len(ran) <= 3
    assert all(f.result() == 0.1 for f in ran)


def test_a_dropped_executor_stops_its_workers() -> None:
    """An executor nobody shuts down, once garbage: its calls finish, then its workers exit."""
    before = live_children()
    executor = Executor(2)
    assert executor.submit(square, 5).result(timeout=30) == 25
    del executor
    gc.collect()
    assert children_at_most(before) <= before
