"""``parallelize.Pool`` and ``ThreadPool``: the ``multiprocessing.pool`` API, with one import.

Real worker processes throughout; where the standard library would hang (a worker killed
mid-map, a result that never comes), ours raises.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.pool
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from parallelize import ParallelizeError, Pool, ThreadPool, WorkerCrashedError
from support import children_at_most, live_children, script_env

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def nap_square(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise KeyError(f"three {x}")
    return x


def die_on_five(x: int) -> int:
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def pid(_: object) -> int:
    time.sleep(0.01)
    return os.getpid()


_tag: str | None = None


def set_tag(tag: str) -> None:
    global _tag
    _tag = tag


def read_tag(_: object) -> str | None:
    return _tag


@pytest.fixture
def pool() -> Iterator[Pool]:
    with Pool(2) as p:
        yield p
    p.join()


def test_every_method_of_the_standard_pool(start_method: str) -> None:
    """The methods and results of ``multiprocessing.pool.Pool``, under every start method, with a
    lambda and a closure (which the standard pool cannot pickle)."""
    offset = 10
    with Pool(2, context=multiprocessing.get_context(start_method)) as p:
        assert p.map(square, range(10)) == [x * x for x in range(10)]
        assert p.map(lambda x: x + offset, range(3), chunksize=2) == [10, 11, 12]
        assert p.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert p.apply(square, (5,)) == 25
        assert p.apply(nap_square, (), {"x": 3}) == 9
        assert list(p.imap(square, iter(range(20)), chunksize=3)) == [x * x for x in range(20)]
        assert sorted(p.imap_unordered(square, range(20))) == [x * x for x in range(20)]
        assert p.map_async(square, range(5)).get(timeout=30) == [0, 1, 4, 9, 16]
        assert p.starmap_async(pow, [(2, 2)]).get(timeout=30) == [4]
        assert p.map(square, []) == [] and list(p.imap(square, [])) == []
        results = [p.apply_async(square, (i,)) for i in range(30)]
        assert [r.get(timeout=30) for r in results] == [i * i for i in range(30)]


def test_a_ported_program_keeps_its_pool_for_its_whole_run() -> None:
    """The pattern the issue found in a real program: a long-lived pool fed with
    ``imap_unordered(fn, jobs, chunksize=n)``, then ``close()`` and ``join()``; no worker left."""
    before = live_children()
    p = Pool(2)
    total = 0
    for value in p.imap_unordered(square, (i for i in range(1000)), chunksize=50):
        total += value
    assert total == sum(i * i for i in range(1000))
    assert sorted(p.imap_unordered(square, range(10), 3)) == [i * i for i in range(10)]
    p.close()
    p.join()
    assert children_at_most(before) <= before


def test_callbacks_run_before_get_returns(pool: Pool) -> None:
    seen: list[object] = []
    pool.map_async(int, ["1"], callback=seen.append, error_callback=seen.append).wait(30)
    assert seen == [[1]]
    pool.map_async(int, ["a"], callback=seen.append, error_callback=seen.append).wait(30)
    assert isinstance(seen[1], ValueError)
    done = pool.apply_async(square, (4,), callback=seen.append)
    assert done.get(timeout=30) == 16 and seen[2] == 16


def test_an_error_keeps_its_type_and_the_workers_traceback(pool: Pool) -> None:
    """As in the standard library: the item's own exception, its worker traceback a
    ``multiprocessing.pool.RemoteTraceback`` cause; a map raises once all its items ran."""
    with pytest.raises(KeyError, match="three 3") as raised:
        pool.map(fail_on_three, range(6))
    cause = raised.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert "raise KeyError" in cause.tb  # type: ignore[attr-defined]
    assert any("index 3" in note for note in raised.value.__notes__)
    result = pool.map_async(fail_on_three, range(6))
    result.wait(30)
    assert result.ready() and not result.successful()
    values = []
    for value in iter(pool.imap(fail_on_three, range(6))):  # raised in place; then it goes on
        values.append(value)
        if value == 2:
            break
    it = pool.imap(fail_on_three, range(6))
    got = []
    for _ in range(6):
        try:
            got.append(next(it))
        except KeyError:
            got.append("error")
    assert got == [0, 1, 2, "error", 4, 5]
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("method", ["map", "imap", "apply_async"])
def test_a_killed_worker_fails_its_item_instead_of_hanging(method: str) -> None:
    """The standard pool waits forever for an item whose worker was killed; ours raises
    ``WorkerCrashedError`` naming it, and the pool goes on working."""
    with Pool(2) as p:
        where = "index 0" if method == "apply_async" else "index 5"  # an apply has one item
        with pytest.raises(WorkerCrashedError, match=where) as raised:
            if method == "map":
                p.map(die_on_five, range(8))
            elif method == "imap":
                list(p.imap(die_on_five, range(8)))
            else:
                p.apply_async(die_on_five, (5,)).get(timeout=30)
        assert raised.value.exitcode == -signal.SIGKILL
        assert p.map(square, range(4)) == [0, 1, 4, 9]


def test_get_times_out_and_ready_says_so(pool: Pool) -> None:
    result = pool.apply_async(nap_square, (6, 1.0))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.1)
    assert not result.ready()
    with pytest.raises(ValueError, match="not ready"):
        result.successful()
    assert result.get(timeout=30) == 36
    assert result.ready() and result.successful()
    it = pool.imap(nap_square, [(1)], chunksize=1)
    assert it.next(timeout=30) == 1
    slow = pool.imap(nap_square, [1, 2])
    assert slow.next(30) == 1


def test_lifecycle_errors_are_the_standard_librarys() -> None:
    p = Pool(1)
    with pytest.raises(ValueError, match="Pool is still running"):
        p.join()
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(square, (1,))
    p.join()
    with Pool(1) as q:
        pass
    with pytest.raises(ValueError, match="Pool not running"), q:
        pass
    q.join()
    with pytest.raises(NotImplementedError, match="cannot be passed"):
        import pickle

        pickle.dumps(q)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"processes": 0}, ValueError, "Number of processes must be at least 1"),
        ({"processes": -1}, ValueError, "Number of processes must be at least 1"),
        ({"maxtasksperchild": 0}, ValueError, "maxtasksperchild must be a positive int"),
        ({"maxtasksperchild": 0.5}, ValueError, "maxtasksperchild must be a positive int"),
        ({"initializer": 3}, TypeError, "initializer must be a callable"),
        ({"timeout": -1}, ValueError, "timeout must be"),
        ({"backend": "dask"}, ValueError, "not available for a Pool"),
        (
            {"context": multiprocessing.get_context("spawn"), "start_method": "fork"},
            ValueError,
            "start_method='fork' cannot apply",
        ),
    ],
)
def test_bad_arguments_fail_before_any_worker_starts(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    before = live_children()
    with pytest.raises(error, match=match):
        Pool(**kwargs)  # type: ignore[arg-type]
    assert live_children() == before


def test_bad_chunksize_is_refused(pool: Pool) -> None:
    with pytest.raises(ValueError, match="Chunksize must be 1"):
        pool.map(square, [1], chunksize=0)


def test_terminate_stops_running_tasks_at_once() -> None:
    """Tasks that would run for minutes are stopped; results not ready raise instead of
    blocking ``get()`` forever; no worker is left."""
    before = live_children()
    p = Pool(2)
    result = p.map_async(time.sleep, [60] * 100, chunksize=1)
    single = p.apply_async(time.sleep, (60,))
    time.sleep(0.5)
    began = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - began < 10
    with pytest.raises(ParallelizeError, match="terminated"):
        result.get(timeout=5)
    with pytest.raises(ParallelizeError, match="terminated"):
        single.get(timeout=5)
    assert children_at_most(before) <= before


def test_close_then_join_finishes_the_submitted_work() -> None:
    p = Pool(3, maxtasksperchild=1)
    results = [p.apply_async(nap_square, (i, 0.2)) for i in range(6)]
    p.close()
    p.join()
    assert [r.get(timeout=1) for r in results] == [i * i for i in range(6)]


def test_maxtasksperchild_replaces_workers() -> None:
    with Pool(2, maxtasksperchild=5) as p:
        pids = set(p.map(pid, range(40), chunksize=1))
    assert len(pids) >= 8  # 40 items, at most 5 per worker


def test_initializer_runs_in_every_worker(start_method: str) -> None:
    with Pool(2, set_tag, ("ready",), start_method=start_method) as p:
        assert set(p.map(read_tag, range(20), chunksize=1)) == {"ready"}


def test_an_open_pool_dropped_warns_and_leaves_no_process() -> None:
    before = live_children()
    p = Pool(2)
    assert p.map(square, [1, 2]) == [1, 4]
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del p
        gc.collect()
    assert children_at_most(before) <= before


def test_thread_pool_runs_in_this_process() -> None:
    here = os.getpid()
    lock = threading.Lock()  # unpicklable: threads share it
    with ThreadPool(3) as tp:
        assert tp.map(lambda x: (os.getpid(), lock.locked(), x), [1]) == [(here, False, 1)]
        assert sorted(tp.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
        with pytest.raises(KeyError):
            tp.apply(fail_on_three, (3,))


def test_progress_draws_a_bar_per_map(capfd: pytest.CaptureFixture[str]) -> None:
    with Pool(2, progress="squaring") as p:
        assert p.map(square, range(50)) == [x * x for x in range(50)]
    assert "squaring" in capfd.readouterr().err


def test_a_timeout_fails_the_slow_item_only() -> None:
    with Pool(2, timeout=0.5) as p:
        result = p.map_async(time.sleep, [0, 0, 30, 0])
        result.wait(30)
        with pytest.raises(TimeoutError, match="index 2"):
            result.get()
        assert p.map(square, [3]) == [9]


def test_a_worker_started_pool_does_not_leak_warnings(tmp_path: Path) -> None:
    """A pool used and closed properly emits no ResourceWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        p = Pool(1)
        p.map(square, [1])
        p.close()
        p.join()
        del p
        gc.collect()


LEFT_OPEN = """
import time
from parallelize import Pool

if __name__ == "__main__":
    pool = Pool(2)
    pool.map_async(time.sleep, [60] * 4)
    time.sleep(0.5)
    print("exiting", flush=True)
"""


def test_a_pool_left_open_at_exit_stops_its_workers(tmp_path: Path) -> None:
    """As the standard pool's: its workers are stopped at exit (not waited for), and nothing
    is left behind: no process, no warning of leaked semaphores or shared memory."""
    script = tmp_path / "script.py"
    script.write_text(LEFT_OPEN)
    env = script_env()
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    # psutil.Process objects, which know their start time: a pid the system has since given to
    # another process (on a busy machine, within the second) is not mistaken for a survivor.
    workers: dict[int, psutil.Process] = {}
    while child.poll() is None and time.monotonic() - began < 30:
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(child.pid).children(recursive=True):
                workers.setdefault(process.pid, process)
        time.sleep(0.05)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    assert time.monotonic() - began < 20
    assert "Traceback" not in stderr and "leaked" not in stderr, stderr
    assert workers
    # The fork server and the resource tracker notice their parent's exit a moment later.
    _, alive = psutil.wait_procs(list(workers.values()), timeout=3)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running():  # the same process, not a new one with its pid
                assert process.status() == psutil.STATUS_ZOMBIE, process


def refuse() -> None:
    raise RuntimeError("no database")


def test_a_failing_initializer_raises_instead_of_hanging() -> None:
    """The standard pool starts new workers forever while its initializer fails; here the tasks
    waiting for them raise the initializer's error, and so does the next one."""
    with Pool(2, refuse) as p:
        with pytest.raises(RuntimeError, match="no database"):
            p.map(square, range(4))
        with pytest.raises(RuntimeError, match="no database"):
            p.apply(square, (2,))


class _Unpicklable:
    def __reduce__(self) -> object:
        raise RuntimeError("cannot pickle")


def make_lock(_: object) -> object:
    return threading.Lock()  # no pickler takes it


class _Counted:
    alive = 0

    def __new__(cls) -> _Counted:
        cls.alive += 1
        return super().__new__(cls)

    def __del__(self) -> None:
        type(self).alive -= 1


def identity(x: object) -> object:
    return x


def test_pickling_errors_are_the_standard_librarys(pool: Pool) -> None:
    """As in ``multiprocessing.pool``: an argument that does not pickle raises what pickling
    raised; a result that does not pickle, ``MaybeEncodingError``. The pool goes on."""
    pool.map(square, [1])  # not the session's first request: its index is not the feed's
    with pytest.raises(RuntimeError, match="cannot pickle"):
        pool.map(square, [_Unpicklable()] * 3)
    with pytest.raises(multiprocessing.pool.MaybeEncodingError) as raised:  # type: ignore[attr-defined]
        pool.apply(make_lock, (0,))
    assert "lock" in str(raised.value) and raised.value.__cause__ is not None
    assert pool.map(square, range(3)) == [0, 1, 4]


def test_a_finished_map_holds_none_of_its_results(pool: Pool) -> None:
    """CPython's ``test_release_task_refs``: once the caller lets go of a map's arguments and
    results, nothing of the pool keeps them alive."""
    pool.map(identity, [_Counted() for _ in range(10)])
    pool.map_async(identity, [_Counted() for _ in range(10)]).get(timeout=30)
    list(pool.imap(identity, [_Counted() for _ in range(10)]))
    time.sleep(0.1)  # the session's thread may still be between two batches
    gc.collect()
    assert _Counted.alive == 0


_shared: dict[str, object] = {}


def keep(lock: object, queue: object) -> None:
    _shared["lock"], _shared["queue"] = lock, queue


def report(x: int) -> int:
    with _shared["lock"]:  # type: ignore[attr-defined]
        _shared["queue"].put(x)  # type: ignore[attr-defined]
    return x


def test_multiprocessing_locks_and_queues_in_initargs(start_method: str) -> None:
    """The standard pool's idiom: a lock and a queue handed to every worker through
    ``initargs`` (they pickle only while a process starts)."""
    context = multiprocessing.get_context(start_method)
    lock, queue = context.Lock(), context.Queue()
    with Pool(2, keep, (lock, queue), context=context) as p:
        assert p.map(report, range(6), chunksize=1) == list(range(6))
        assert sorted(queue.get(timeout=10) for _ in range(6)) == list(range(6))
    queue.close()
    queue.join_thread()


TERMINATED_AT_EXIT = """
import sys
from parallelize import Pool

if __name__ == "__main__":
    for _ in range(5):
        with Pool(2, start_method=sys.argv[1]) as pool:  # __exit__ terminates
            assert pool.map(abs, range(-50, 0)) == list(range(50, 0, -1))
"""


@pytest.mark.timeout(120)
def test_a_pool_terminated_just_before_exit_closes_quietly(
    tmp_path: Path, start_method: str
) -> None:
    """``terminate()`` (the end of a ``with`` block) hands the pool to its session's thread to
    stop; an exit right after it must neither race that thread's close nor print anything."""
    script = tmp_path / "script.py"
    script.write_text(TERMINATED_AT_EXIT)
    done = subprocess.run(
        [sys.executable, str(script), start_method],
        capture_output=True, text=True, env=script_env(), timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
