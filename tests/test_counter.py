"""shared_counter: exact totals from every route a counter can take into a worker, and no leaks.

Real processes throughout: ``multiprocessing.Process`` under each start method, ``pmap`` with the
counter as an argument, a keyword argument and a closure, a pool that was warm before the counter
existed, threads, and subprocess scripts that check ``/dev/shm`` and the resource tracker.
"""

from __future__ import annotations

import copy
import gc
import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import parallelize
from parallelize import SharedCounter, parallel, pmap, shared_counter

pytestmark = pytest.mark.timeout(60)

WORKERS = 3  # more processes than the 2 cores, so increments really interleave
INCREMENTS = 300


def path_of(counter: SharedCounter) -> str:
    return os.path.join("/dev/shm", counter._storage.name)  # type: ignore[attr-defined]


def wait_until_gone(path: str, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# Targets for multiprocessing.Process: module level, so spawn can find them by name.
def bump(counter: SharedCounter, times: int) -> None:
    for i in range(times):
        if i % 2:
            counter.increment()
        else:
            with counter.get_lock():  # the seed idiom from the multiprocessing docs
                counter.value += 1


def bump_many(counters: list[SharedCounter], times: int) -> None:
    for _ in range(times):
        for counter in counters:
            counter.increment()


def hold_until(counter: SharedCounter, attached: Any, dropped: Any) -> None:
    counter.increment()
    attached.set()
    dropped.wait(30)
    counter.increment()


def hold_lock_then_die(counter: SharedCounter) -> None:
    counter.get_lock().acquire()
    counter.increment()
    os.kill(os.getpid(), signal.SIGKILL)


def hold_drop_and_exit(pickled: bytes) -> None:
    """Take the lock, let go of the counter while holding it, and end the process."""
    counter = pickle.loads(pickled)
    counter.get_lock().acquire()
    del counter
    gc.collect()
    os._exit(0)


def fork_a_holder_then_wait(pickled: bytes, folder: str) -> None:
    """Attach, fork a child that uses the counter and outlives this process, then wait."""
    counter = pickle.loads(pickled)
    if os.fork() == 0:
        counter.increment()  # the child becomes a holder of its own
        Path(folder, "adopted").touch()
        while not Path(folder, "go").exists():
            time.sleep(0.01)
        del counter
        gc.collect()  # the child lets go: the last holder, it must remove the file
        os._exit(0)
    time.sleep(60)  # killed before that


def bump_and_count(counter: SharedCounter, item: int) -> int:
    counter.increment()
    return os.getpid()


# --- the API ------------------------------------------------------------------------------------


def test_exported() -> None:
    assert {"SharedCounter", "shared_counter"} <= set(parallelize.__all__)
    assert parallelize.__all__ == sorted(parallelize.__all__)


def test_basic_operations() -> None:
    counter = shared_counter()
    assert isinstance(counter, SharedCounter)
    assert counter.value == 0
    assert counter.increment() == 1
    assert counter.increment(n=5) == 6
    assert counter.decrement() == 5
    assert counter.decrement(10) == -5
    counter.value = 10
    assert counter.value == 10
    assert repr(counter) == "SharedCounter(10)"
    assert shared_counter(-3).value == -3


@pytest.mark.parametrize("bad", [1.5, "1", None, True, [1]])
def test_bad_input_raises_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="integer"):
        shared_counter(bad)
    counter = shared_counter(1)
    with pytest.raises(TypeError, match="integer"):
        counter.increment(bad)
    with pytest.raises(TypeError, match="integer"):
        counter.decrement(bad)
    with pytest.raises(TypeError, match="integer"):
        counter.value = bad
    assert counter.value == 1


def test_index_types_are_integers() -> None:
    numpy = pytest.importorskip("numpy")
    counter = shared_counter(numpy.int64(2))
    assert counter.increment(numpy.int32(3)) == 5


def test_sixty_four_bit_range() -> None:
    counter = shared_counter(2**63 - 2)
    assert counter.increment() == 2**63 - 1
    with pytest.raises(OverflowError):
        counter.increment()
    assert counter.value == 2**63 - 1
    counter.value = -(2**63)
    with pytest.raises(OverflowError):
        counter.decrement()
    with pytest.raises(OverflowError):
        shared_counter(2**63)
    with pytest.raises(OverflowError):
        counter.value = 2**64


def test_lock_is_recursive_and_covers_value() -> None:
    counter = shared_counter(0)
    lock = counter.get_lock()
    with lock:
        with counter.get_lock():
            counter.value += 1
            counter.increment()
        assert counter.value == 2
    assert lock.acquire(timeout=0)
    lock.release()


def test_lock_excludes_other_threads() -> None:
    counter = shared_counter(0)
    got: list[bool] = []
    with counter.get_lock():
        thread = threading.Thread(
            target=lambda: got.extend([
                counter.get_lock().acquire(block=False),
                counter.get_lock().acquire(timeout=0.05),
            ])
        )
        thread.start()
        thread.join()
    assert got == [False, False]


def test_release_unheld_lock_raises() -> None:
    counter = shared_counter(0)
    with pytest.raises(RuntimeError):
        counter.get_lock().release()


def test_pickle_in_the_same_process_is_the_same_counter() -> None:
    counter = shared_counter(7)
    clone = pickle.loads(pickle.dumps(counter))
    assert clone._storage is counter._storage  # type: ignore[attr-defined]
    clone.increment()
    assert counter.value == 8
    assert copy.deepcopy(counter).increment() == 9


def test_last_holder_frees_the_file() -> None:
    counter = shared_counter(1)
    path = path_of(counter)
    assert os.path.exists(path)
    blob = pickle.dumps(counter)
    del counter
    gc.collect()
    assert not os.path.exists(path)
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        pickle.loads(blob)


def files_of_this_process() -> set[str]:
    prefix = f"parallelize-counter-{os.getpid()}-"
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}


def made_while_bootstrapping(value: int = 0) -> SharedCounter:
    """A counter made as a spawn or forkserver worker makes it while it runs the script again."""
    process = multiprocessing.current_process()
    process._inheriting = True  # type: ignore[attr-defined]  # multiprocessing's own mark
    try:
        return shared_counter(value)
    finally:
        del process._inheriting  # type: ignore[attr-defined]


def test_a_counter_made_while_bootstrapping_has_no_file_until_used() -> None:
    before = files_of_this_process()
    counter = made_while_bootstrapping(5)
    assert files_of_this_process() == before
    assert counter.increment() == 6
    assert len(files_of_this_process() - before) == 1
    with counter.get_lock():
        counter.value += 1
    assert counter.value == 7
    assert pickle.loads(pickle.dumps(counter)).increment() == 8  # the same counter
    assert repr(counter) == "SharedCounter(8)"
    del counter
    gc.collect()
    assert files_of_this_process() == before
    made_while_bootstrapping()  # never used, dropped: nothing to clean up
    assert files_of_this_process() == before


def test_a_counter_made_while_bootstrapping_is_created_once_by_racing_threads() -> None:
    before = files_of_this_process()
    counter = made_while_bootstrapping()
    start = threading.Barrier(8)

    def race() -> None:
        start.wait()
        for _ in range(INCREMENTS):
            counter.increment()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value == 8 * INCREMENTS
    assert len(files_of_this_process() - before) == 1


# --- processes ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_counter_made_while_bootstrapping_reaches_workers(start_method: str) -> None:
    """Pickling creates its file, so it travels as an argument or in a closure like any other."""
    counter = made_while_bootstrapping()
    options: dict[str, Any] = {"workers": 2, "start_method": start_method, "chunksize": 5}
    pmap(bump_and_count, [counter] * 50, range(50), **options)
    pmap(lambda item: counter.increment(), range(50), **options)
    assert counter.value == 100


@pytest.mark.timeout(120)
def test_plain_process(start_method: str) -> None:
    context = multiprocessing.get_context(start_method)
    counter = shared_counter(0)
    processes = [
        context.Process(target=bump, args=(counter, INCREMENTS)) for _ in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        assert process.exitcode == 0
    assert counter.value == WORKERS * INCREMENTS


@pytest.mark.timeout(120)
def test_counter_outlives_its_creator_in_a_holder(start_method: str) -> None:
    context = multiprocessing.get_context(start_method)
    counter = shared_counter(0)
    path = path_of(counter)
    attached, dropped = context.Event(), context.Event()
    process = context.Process(target=hold_until, args=(counter, attached, dropped))
    process.start()
    assert attached.wait(30)
    del counter  # the child still holds it
    gc.collect()
    assert os.path.exists(path)
    dropped.set()
    process.join()
    assert process.exitcode == 0
    assert wait_until_gone(path)  # the child was the last holder and removed it


@pytest.mark.timeout(120)
def test_counter_held_by_a_killed_worker_is_freed(start_method: str) -> None:
    # The creator lets go while a warm worker still holds the counter (in its cached function),
    # then parallelize kills that worker (a timeout): nobody is left to unlink the file, so the
    # pool sweeps counter files that no process holds any more.
    options: dict[str, Any] = {"workers": 1, "start_method": start_method, "backend": "process"}
    counter = shared_counter(0)
    path = path_of(counter)
    assert pmap(lambda _, c=counter: c.increment(), range(3), **options) == [1, 2, 3]
    del counter
    gc.collect()
    assert os.path.exists(path)  # the worker still holds it
    with pytest.raises(TimeoutError):
        pmap(time.sleep, [30], timeout=0.5, **options)
    assert wait_until_gone(path)
    assert pmap(abs, [-1], **options) == [1]  # and the pool goes on


@pytest.mark.timeout(120)
def test_pmap_argument_keyword_and_closure(start_method: str) -> None:
    counter = shared_counter(0)
    items = range(WORKERS * INCREMENTS)
    options: dict[str, Any] = {"workers": WORKERS, "start_method": start_method, "chunksize": 7}

    pmap(bump_and_count, [counter] * len(items), items, **options)
    assert counter.value == len(items)

    pmap(lambda item: counter.increment(), items, **options)  # captured in a lambda
    assert counter.value == 2 * len(items)

    def closure(item: int) -> None:
        with counter.get_lock():
            counter.value += 1

    pmap(closure, items, **options)
    assert counter.value == 3 * len(items)

    @parallel(workers=WORKERS, start_method=start_method, chunksize=7)
    def task(item: int, *, by: SharedCounter) -> None:
        by.increment()

    task(items, by=counter)  # a keyword argument of an @parallel function
    assert counter.value == 4 * len(items)


@pytest.mark.timeout(120)
def test_counter_created_after_the_pool_is_warm(start_method: str) -> None:
    options: dict[str, Any] = {"workers": 2, "start_method": start_method}
    # Items long enough that both workers are up and take some (work only goes to started ones).
    warm = set(pmap(lambda item: time.sleep(0.02) or os.getpid(), range(20), **options))
    assert len(warm) == 2
    counter = shared_counter(0)
    pids = set(pmap(bump_and_count, [counter] * 400, range(400), **options))
    assert counter.value == 400
    assert pids <= warm, "the pool was restarted for the counter"
    later = shared_counter(100)
    pmap(lambda item: later.decrement(), range(100), **options)
    assert later.value == 0


@pytest.mark.parametrize("backend", ["thread", "serial"])
def test_in_process_backends(backend: str) -> None:
    counter = shared_counter(0)
    pmap(lambda item: bump(counter, 10), range(50), backend=backend, workers=4)
    assert counter.value == 500


@pytest.mark.timeout(120)
def test_threads_in_many_processes(start_method: str) -> None:
    counter = shared_counter(0)

    def threaded(item: int) -> None:
        threads = [threading.Thread(target=bump, args=(counter, 100)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    pmap(threaded, range(6), workers=2, start_method=start_method)
    assert counter.value == 6 * 4 * 100


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_many_counters_heavy_contention(start_method: str) -> None:
    counters = [shared_counter(i) for i in range(20)]
    context = multiprocessing.get_context(start_method)
    processes = [
        context.Process(target=bump_many, args=(counters, 200)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    threads = [threading.Thread(target=bump_many, args=(counters, 200)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join()
        assert process.exitcode == 0
    assert [c.value for c in counters] == [i + 7 * 200 for i in range(20)]


# --- fork and death -----------------------------------------------------------------------------


def test_fork_child_does_not_inherit_a_held_lock() -> None:
    counter = shared_counter(0)
    context = multiprocessing.get_context("fork")
    result = context.Queue()

    def child() -> None:
        lock = counter.get_lock()
        free_now = lock.acquire(block=False)  # the parent holds it: must not look recursive
        result.put(free_now)
        assert lock.acquire(timeout=30)
        counter.increment()
        lock.release()

    with counter.get_lock():
        process = context.Process(target=child)
        process.start()
        assert result.get(timeout=30) is False
        counter.increment()
    process.join(30)
    assert process.exitcode == 0
    assert counter.value == 2


def held_by_a_killed_process(start_method: str) -> SharedCounter:
    """A counter at 1 whose lock a process took, then was SIGKILLed holding."""
    counter = shared_counter(0)
    process = multiprocessing.get_context(start_method).Process(
        target=hold_lock_then_die, args=(counter,)
    )
    process.start()
    process.join()
    assert process.exitcode == -signal.SIGKILL
    return counter


@pytest.mark.timeout(120)
def test_lock_of_a_killed_holder_is_released(start_method: str) -> None:
    counter = held_by_a_killed_process(start_method)
    assert counter.get_lock().acquire(timeout=10)
    counter.get_lock().release()
    assert counter.increment() == 2


@pytest.mark.timeout(120)
def test_increment_after_a_killed_holder_takes_the_lock_over(start_method: str) -> None:
    counter = held_by_a_killed_process(start_method)
    assert counter.increment() == 2  # no acquire() first: the plain increment finds it dead
    assert counter.get_lock().acquire(block=False)
    counter.get_lock().release()


@pytest.mark.timeout(60)
def test_a_counter_dropped_while_its_lock_is_held_is_handed_on_at_the_holders_exit() -> None:
    counter = shared_counter(0)
    process = multiprocessing.get_context("spawn").Process(
        target=hold_drop_and_exit, args=(pickle.dumps(counter),)
    )
    process.start()
    process.join(30)
    assert process.exitcode == 0
    assert counter.get_lock().acquire(timeout=10)  # the kernel handed it on
    counter.get_lock().release()
    assert counter.increment() == 1


@pytest.mark.timeout(60)
def test_a_fork_child_that_outlives_a_killed_holder_removes_the_file(tmp_path: Path) -> None:
    counter = shared_counter(0)
    path = path_of(counter)
    process = multiprocessing.get_context("spawn").Process(
        target=fork_a_holder_then_wait, args=(pickle.dumps(counter), str(tmp_path))
    )
    process.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "adopted").exists():
        assert time.monotonic() < deadline and process.is_alive()
        time.sleep(0.01)
    process.kill()
    process.join()  # no timeout: a timed join watches a pipe that the fork child holds open
    assert process.exitcode == -signal.SIGKILL
    del counter
    gc.collect()  # the creator lets go: the child still holds it
    assert os.path.exists(path)
    (tmp_path / "go").touch()
    assert wait_until_gone(path, 20)


def test_a_thread_that_died_holding_the_lock_leaves_no_false_holder() -> None:
    counter = shared_counter(0)
    dead = threading.Thread(target=counter.get_lock().acquire)
    dead.start()
    dead.join()
    assert counter.increment() == 1  # the kernel handed on the dead thread's lock
    holding, done = threading.Event(), threading.Event()

    def holder() -> None:  # a new thread, likely given the dead one's identifier again
        with counter.get_lock():
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(30)
        assert not counter.get_lock().acquire(block=False)  # really held by the other thread
    finally:
        done.set()
        thread.join(30)
    assert counter.increment() == 2


class Interrupted(Exception):
    pass


def test_a_wait_for_the_lock_runs_signal_handlers() -> None:
    counter = shared_counter(0)
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with counter.get_lock():
            held.set()
            done.wait(30)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    thread = threading.Thread(target=holder)
    thread.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        assert held.wait(30)
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            counter.increment()  # waits for the other thread: Ctrl-C must still get through
        assert time.monotonic() - started < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        done.set()
        thread.join(30)
    assert counter.increment() == 1


# --- no leaks -----------------------------------------------------------------------------------

LEAK_SCRIPT = """
import multiprocessing, os, sys
from parallelize import pmap, shared_counter

def bump(counter, times):
    for _ in range(times):
        counter.increment()

def make_inside(item):
    inner = shared_counter(item)  # created in a worker, dropped there
    inner.increment()
    return inner._storage.name

if __name__ == "__main__":
    names = []
    for method in ["fork", "spawn", "forkserver"]:
        early = shared_counter()
        pmap(bump, [early] * 4, [10] * 4, workers=2, start_method=method)  # warms the pool
        late = shared_counter()  # created after the pool is warm
        pmap(lambda item: late.increment(), range(40), workers=2, start_method=method)
        dropped = shared_counter()
        pmap(lambda item: dropped.increment(), range(8), workers=2, start_method=method)
        names.append(dropped._storage.name)
        del dropped  # workers may still hold it: the last one to let go removes it
        context = multiprocessing.get_context(method)
        process = context.Process(target=bump, args=(early, 10))
        process.start()
        process.join()
        names += pmap(make_inside, range(4), workers=2, start_method=method)
        assert early.value == 50 and late.value == 40, (early, late)
        names += [early._storage.name, late._storage.name]
    print("\\n".join(names))
"""


# Warnings are errors, but the resource tracker's leak warning must reach stderr: its process
# swallows an exception raised by warnings.warn, so under a bare -W error it would never show.
SEE_TRACKER_WARNINGS = ["-W", "error", "-W", "always::UserWarning:multiprocessing.resource_tracker"]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_leaks_and_no_tracker_warnings(script: Path) -> None:
    script.write_text(textwrap.dedent(LEAK_SCRIPT), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, *SEE_TRACKER_WARNINGS, str(script)],
        capture_output=True, text=True, timeout=150, check=False, cwd=script.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "resource_tracker" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    names = result.stdout.split()
    assert len(names) == 3 * (3 + 4)
    left = [name for name in names if os.path.exists(f"/dev/shm/{name}")]
    assert not left, "counter files were left in /dev/shm"


MODULE_LEVEL_SCRIPT = """
import json, os, sys, time
from parallelize import pmap, shared_counter

done = shared_counter()  # at module level, as in docs/shared-state.md

def count(item):
    if item == 3:
        time.sleep(60)  # past the timeout: parallelize kills this worker
    done.increment()
    files = [n for n in os.listdir("/dev/shm") if n.startswith("parallelize-counter-")]
    return os.getpid(), os.getppid(), files

if __name__ == "__main__":
    seen = pmap(count, range(12), workers=2, chunksize=1, timeout=2, on_error="return",
                start_method=sys.argv[1])
    print(json.dumps({"pid": os.getpid(), "name": done._storage.name, "value": done.value,
                      "seen": [s for s in seen if isinstance(s, tuple)]}))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_module_level_counter_makes_no_copies_in_workers(script: Path, method: str) -> None:
    """Workers that run the script again as they start (spawn, forkserver) make no counter file
    of their own for the module-level ``shared_counter()``, and one of them killed by a timeout
    leaves no file and no resource-tracker warning behind."""
    script.write_text(textwrap.dedent(MODULE_LEVEL_SCRIPT), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, *SEE_TRACKER_WARNINGS, str(script), method],
        capture_output=True, text=True, timeout=100, check=False, cwd=script.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "resource_tracker" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    out = json.loads(result.stdout)
    assert out["value"] == 11 == len(out["seen"])  # exact, the killed item aside
    ours = {out["pid"]} | {pid for pid, _, _ in out["seen"]} | {ppid for _, ppid, _ in out["seen"]}
    made_by_us = {  # other programs on this machine may have counters of their own
        name for _, _, files in out["seen"] for name in files
        if int(name.removeprefix("parallelize-counter-").split("-")[0]) in ours
    }
    assert made_by_us == {out["name"]}, "workers made counters of their own"
    assert wait_until_gone(f"/dev/shm/{out['name']}")


KILLED_CREATOR_SCRIPT = """
import multiprocessing, os, signal, sys, time
from parallelize import shared_counter

def hold(counter, ready):
    counter.increment()
    ready.set()
    time.sleep({hold_seconds})

if __name__ == "__main__":
    context = multiprocessing.get_context("{method}")
    counter = shared_counter()
    print(counter._storage.name, flush=True)
    ready = context.Event()
    child = context.Process(target=hold, args=(counter, ready))
    child.start()
    ready.wait(30)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("hold_seconds", [0.5, 0.0], ids=["holder-outlives", "alone"])
def test_sigkilled_creator_leaves_nothing(script: Path, hold_seconds: float) -> None:
    """Another holder removes it when it lets go; or else the creator's resource tracker does."""
    script.write_text(
        textwrap.dedent(KILLED_CREATOR_SCRIPT).format(method="spawn", hold_seconds=hold_seconds),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=60, check=False, cwd=script.parent,
    )
    assert result.returncode == -signal.SIGKILL
    name = result.stdout.strip()
    assert name.startswith("parallelize-counter-")
    assert wait_until_gone(f"/dev/shm/{name}", 30)
