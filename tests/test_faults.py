"""Faults never hang: crashes, timeouts, retries, error policies, Ctrl-C and worker lifecycle.

Workers are killed with real signals; every test has a timeout, and the bounds on promptness are
generous because a 2-core CI machine is noisy.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from parallelize import WorkerCrashedError, imap, pmap
from support import open_fds

pytestmark = pytest.mark.timeout(90)

PROMPT = 5.0  # seconds; a crash is reported within ~1 ms locally, this bound absorbs CI noise


def kill_self_at(x: int, at: int = 7) -> int:
    if x == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 2


def exit_at_5(x: int) -> int:
    if x == 5:
        os._exit(3)
    return x


def segfault_at_2(x: int) -> int:
    if x == 2:
        # A fork worker inherits pytest's faulthandler, which would dump every thread's stack into
        # the test output. The crash is what is tested, not the dump: a user's own faulthandler
        # in workers is theirs to keep, so the library leaves it alone and the test turns it off.
        faulthandler.disable()
        ctypes.string_at(0)
    return x


def sleep_at_3(x: int) -> int:
    if x == 3:
        time.sleep(60)
    return x


def report_pid_then_sleep(x: int, folder: str) -> int:
    if x == 4:
        Path(folder, "pid").write_text(str(os.getpid()))
        time.sleep(60)
    return x


def flaky(x: int, folder: str, failures: int, crash: bool = False) -> int:
    """Fails (or crashes) the first ``failures`` times it sees ``x == 1``."""
    marker = Path(folder, f"attempts-{x}")
    with marker.open("a") as f:
        f.write(".")
    if x == 1 and len(marker.read_text()) <= failures:
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(f"transient failure of item {x}")
    return x


_initialized: list[Any] = []


def remember(*args: Any) -> None:
    _initialized.extend(args)


def read_initialized(_: int) -> list[Any]:
    return list(_initialized)


def failing_initializer() -> None:
    raise RuntimeError("no database")


def my_pid(_: int) -> int:
    return os.getpid()


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


# -- worker death --


def test_killed_worker_raises_promptly_and_names_the_item(start_method: str) -> None:
    began = time.monotonic()
    with pytest.raises(WorkerCrashedError) as caught:
        pmap(kill_self_at, range(20), workers=2, start_method=start_method)
    assert time.monotonic() - began < PROMPT
    error = caught.value
    assert isinstance(error, RuntimeError)
    assert error.index == 7 and error.exitcode == -signal.SIGKILL
    assert "SIGKILL" in str(error) and "index 7" in str(error)
    assert pmap(kill_self_at, range(5), workers=2, start_method=start_method) == [0, 2, 4, 6, 8]


def test_worker_killed_from_outside(start_method: str, tmp_path: Path) -> None:
    def killer() -> None:
        pid_file = tmp_path / "pid"
        deadline = time.monotonic() + 60
        while (not pid_file.exists() or not pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    task = functools.partial(report_pid_then_sleep, folder=str(tmp_path))
    results = pmap(task, range(10), workers=2, start_method=start_method, on_error="return")
    thread.join()
    assert isinstance(results[4], WorkerCrashedError) and results[4].index == 4
    assert [r for i, r in enumerate(results) if i != 4] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_exit_code_is_reported(start_method: str) -> None:
    with pytest.raises(WorkerCrashedError, match="exited with code 3") as caught:
        pmap(exit_at_5, range(10), workers=2, start_method=start_method)
    assert caught.value.exitcode == 3 and caught.value.index == 5


def test_segfault_in_native_code(start_method: str) -> None:
    with pytest.raises(WorkerCrashedError, match="SIGSEGV") as caught:
        pmap(segfault_at_2, range(6), workers=2, start_method=start_method, chunksize=3)
    assert caught.value.index == 2


@pytest.mark.timeout(120)
def test_segfault_test_prints_no_fatal_error_dump() -> None:
    """The segfault test's output stays clean: its forked worker does not dump every thread's
    stack through the faulthandler it inherits from pytest (60 lines of ``Fatal Python error``)."""
    cell = f"{Path(__file__).name}::test_segfault_in_native_code[fork]"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cell],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "Fatal Python error" not in run.stdout + run.stderr, run.stdout + run.stderr


def test_only_the_crashed_item_is_lost(start_method: str) -> None:
    results = pmap(
        kill_self_at,
        range(40),
        workers=2,
        start_method=start_method,
        on_error="return",
        chunksize=8,
    )
    assert isinstance(results[7], WorkerCrashedError)
    assert [r for i, r in enumerate(results) if i != 7] == [2 * i for i in range(40) if i != 7]


# -- timeouts --


def test_timeout_raises_builtin_timeout_error(start_method: str) -> None:
    began = time.monotonic()
    with pytest.raises(TimeoutError, match=r"index 3 .* timeout of 0\.5 s"):
        pmap(sleep_at_3, range(8), workers=2, timeout=0.5, start_method=start_method)
    assert time.monotonic() - began < 0.5 + PROMPT
    assert pmap(sleep_at_3, [1, 2], workers=2, start_method=start_method) == [1, 2]


def test_timeout_returns_in_place_and_others_complete(start_method: str) -> None:
    results = pmap(
        sleep_at_3, range(12), workers=2, timeout=0.5, start_method=start_method, on_error="return"
    )
    assert isinstance(results[3], TimeoutError)
    assert [r for i, r in enumerate(results) if i != 3] == [i for i in range(12) if i != 3]


def test_timeout_on_threads_abandons_the_item() -> None:
    results = pmap(
        sleep_at_3, range(6), backend="thread", workers=2, timeout=0.3, on_error="return"
    )
    assert isinstance(results[3], TimeoutError) and results[5] == 5


def test_timeout_with_many_short_items_still_works() -> None:
    assert pmap(abs, range(-5000, 0), workers=2, timeout=5.0)[-1] == 1


# -- retries --


@pytest.mark.parametrize("backend", ["process", "thread", "serial"])
def test_retries_rerun_a_failing_item(backend: str, tmp_path: Path) -> None:
    task = functools.partial(flaky, folder=str(tmp_path), failures=2)
    assert pmap(task, range(4), backend=backend, workers=2, retries=2) == [0, 1, 2, 3]
    assert (tmp_path / "attempts-1").read_text() == "..."
    assert (tmp_path / "attempts-0").read_text() == "."


def test_too_few_retries_still_fail(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="transient"):
        pmap(functools.partial(flaky, folder=str(tmp_path), failures=2), range(4), retries=1)


def test_retries_rerun_a_crashed_item(start_method: str, tmp_path: Path) -> None:
    task = functools.partial(flaky, folder=str(tmp_path), failures=1, crash=True)
    assert pmap(task, range(6), workers=2, start_method=start_method, retries=1) == list(range(6))
    assert (tmp_path / "attempts-1").read_text() == ".."


def test_retries_count_overruns_and_raises_alike(tmp_path: Path) -> None:
    """retries=1 with a timeout: two attempts in all, whichever of them raised or ran too long
    (the worker's own retry of a raising item counts when the scheduler times the item out)."""
    from behaviour.workloads import overrun_then_raise, raise_then_overrun

    first, second = tmp_path / "overrun-first", tmp_path / "raise-first"
    out = pmap(overrun_then_raise, [str(first)], timeout=0.5, retries=1, on_error="return")
    assert isinstance(out[0], ValueError) and "attempt 2" in str(out[0])
    out = pmap(raise_then_overrun, [str(second)], timeout=0.5, retries=1, on_error="return")
    assert isinstance(out[0], TimeoutError)
    assert first.read_text() == second.read_text() == "xx"


# -- worker lifecycle --


def test_initializer_runs_once_per_worker(start_method: str) -> None:
    seen = pmap(
        read_initialized,
        range(6),
        workers=2,
        start_method=start_method,
        initializer=remember,
        initargs=("db", 1),
    )
    assert all(value == ["db", 1] for value in seen)


@pytest.mark.timeout(120)
def test_initializer_sets_globals_for_functions_of_main(start_method: str, script: Path) -> None:
    # The multiprocessing.Pool idiom in a script: both functions live in __main__ and travel by
    # value, yet the mapped one sees what the initializer assigned, and globals it only reads
    # keep the caller's values of the moment.
    body = f"""
    MODEL = None
    SCALE = 1

    def load(name):
        global MODEL
        MODEL = name

    def predict(x):
        return (MODEL, x * SCALE)

    @parallel(initializer=load, initargs=("decorated",), workers=2)
    def decorated(x):
        return MODEL

    if __name__ == "__main__":
        SCALE = 10
        options = dict(workers=2, start_method={start_method!r}, initializer=load)
        print(pmap(predict, [1, 2], initargs=("pmap",), **options))
        print(list(imap(lambda x: predict(x), [3], initargs=("imap",), **options)))
        print(decorated.options(start_method={start_method!r})([0]))
    """
    done = run_script(script, body)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == [
        "[('pmap', 10), ('pmap', 20)]",
        "[('imap', 30)]",
        "['decorated']",
    ], done.stdout + done.stderr


def test_initializer_on_threads() -> None:
    seen = pmap(read_initialized, range(3), backend="thread", initializer=lambda: None)
    assert len(seen) == 3


def test_failing_initializer_raises_in_the_caller(start_method: str) -> None:
    with pytest.raises(RuntimeError, match="no database"):
        pmap(
            my_pid, range(4), workers=2, start_method=start_method, initializer=failing_initializer
        )
    assert len(pmap(my_pid, range(4), workers=2, start_method=start_method)) == 4


def test_max_tasks_per_worker_replaces_workers(start_method: str) -> None:
    pids = pmap(my_pid, range(12), workers=2, start_method=start_method, max_tasks_per_worker=2)
    assert max(pids.count(pid) for pid in pids) <= 2, pids
    assert pmap(my_pid, range(2), workers=2, start_method=start_method, max_tasks_per_worker=2)


# -- cancellation --


def slow_item(x: int) -> int:
    time.sleep(0.05 if x else 0)
    return x


def test_break_out_of_imap_frees_the_workers(start_method: str) -> None:
    for value in imap(sleep_at_3, range(100), workers=2, chunksize=1, start_method=start_method):
        if value == 2:
            break
    began = time.monotonic()
    assert pmap(abs, [-1, -2], workers=2, start_method=start_method) == [1, 2]
    assert time.monotonic() - began < PROMPT


def test_exception_in_the_consumer_loop_cancels(start_method: str) -> None:
    with pytest.raises(KeyError):
        for _ in imap(slow_item, range(1000), workers=2, start_method=start_method):
            raise KeyError("consumer")
    assert pmap(abs, [-3], workers=2, start_method=start_method) == [3]


def test_dropped_iterator_cancels(start_method: str) -> None:
    stream = imap(slow_item, range(1000), workers=2, start_method=start_method)
    next(stream)
    del stream
    assert pmap(abs, [-4], workers=2, start_method=start_method) == [4]


def test_faults_leak_no_processes_or_descriptors(start_method: str) -> None:
    pmap(abs, [1, 2], workers=2, start_method=start_method)  # warm the pool first
    fds, procs = open_fds(), len(children())
    for _ in range(3):
        pmap(kill_self_at, range(10), workers=2, start_method=start_method, on_error="return")
        pmap(
            sleep_at_3,
            range(5),
            workers=2,
            start_method=start_method,
            timeout=0.3,
            on_error="return",
        )
        pmap(abs, [1], workers=2, start_method=start_method)
    time.sleep(0.2)
    # A pool refills lazily, so it may hold fewer workers (and their pipes) than before: never more.
    assert open_fds() <= fds
    assert len(children()) <= procs


# -- processes the mapped function starts (docs/errors.md, "Processes your function starts") --

# Seconds the command a test's item starts would run: far longer than the test, so that one
# still running at the end was left running, not slow to finish.
CHILD_SECONDS = 300


def start_child_then(x: int, folder: str, then: str, pdeathsig: bool = False) -> int:
    """Item 1 starts a long command, records its pid and its worker's, then: "timeout" (overruns),
    "crash" (SIGKILL of its worker) or "return" (leaves it running)."""
    if x == 1:
        command = ["sleep", str(CHILD_SECONDS)]
        if pdeathsig:
            command = ["setpriv", "--pdeathsig", "KILL", "--", *command]
        child = subprocess.Popen(command)
        if pdeathsig:  # running: setpriv has asked for the signal and made way for the command
            deadline = time.monotonic() + 10
            while Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep":
                assert time.monotonic() < deadline, "setpriv did not start the command"
                time.sleep(0.001)
        Path(folder, "pids").write_text(f"{os.getpid()} {child.pid}")
        if then == "timeout":
            time.sleep(60)
        elif then == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
    return x


def sigint_ignored_by_a_child(_: int) -> bool:
    """Whether a command started here starts with SIGINT ignored."""
    child = subprocess.Popen(["sleep", str(CHILD_SECONDS)])
    try:
        with open(f"/proc/{child.pid}/status") as status:
            ignored = next(line for line in status if line.startswith("SigIgn:"))
    finally:
        child.kill()
        child.wait()
    return bool(int(ignored.split()[1], 16) & (1 << (signal.SIGINT - 1)))


def _map_leaving_a_child(
    folder: Path, start_method: str, then: str, pdeathsig: bool = False
) -> tuple[list[Any], int, int]:
    """Run item 1 of a map as ``then`` says; the results, its worker's pid and its child's."""
    task = functools.partial(start_child_then, folder=str(folder), then=then, pdeathsig=pdeathsig)
    results = pmap(
        task,
        range(3),
        workers=2,
        chunksize=1,
        start_method=start_method,
        timeout=1.0,
        on_error="return",
        max_tasks_per_worker=1 if then == "return" else None,  # then the worker exits
    )
    worker, child = (int(pid) for pid in (folder / "pids").read_text().split())
    return results, worker, child


@pytest.mark.parametrize(
    ("then", "error"),
    [("timeout", TimeoutError), ("crash", WorkerCrashedError), ("return", None)],
)
def test_a_child_outlives_its_worker(
    start_method: str, then: str, error: type[Exception] | None, tmp_path: Path
) -> None:
    """A command an item started keeps running, orphaned, after its worker was killed (timeout),
    died (crash) or exited (replaced by max_tasks_per_worker): the documented behaviour."""
    results, worker, child = _map_leaving_a_child(tmp_path, start_method, then)
    try:
        assert results[1] == 1 if error is None else isinstance(results[1], error), results
        assert wait_gone([worker]) == []
        # Adopted by init or a subreaper once the worker's last thread has gone.
        deadline = time.monotonic() + PROMPT
        while psutil.Process(child).ppid() == worker and time.monotonic() < deadline:
            time.sleep(0.05)
        assert psutil.Process(child).ppid() != worker
        assert pids_alive([child]) == [child]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("then", ["timeout", "crash"])
def test_a_child_started_with_pdeathsig_dies_with_its_worker(then: str, tmp_path: Path) -> None:
    """The remedy the docs give: ``setpriv --pdeathsig KILL`` ends the command with its worker."""
    results, worker, child = _map_leaving_a_child(tmp_path, "forkserver", then, pdeathsig=True)
    try:
        assert isinstance(results[1], TimeoutError if then == "timeout" else WorkerCrashedError)
        assert wait_gone([worker]) == []
        assert wait_gone([child], seconds=PROMPT) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_children_of_process_workers_ignore_sigint(start_method: str) -> None:
    """Workers ignore SIGINT and the commands they start inherit that, so Ctrl-C does not reach
    them (documented); on threads they are the caller's children and Ctrl-C reaches them."""
    assert pmap(sigint_ignored_by_a_child, [0], workers=1, start_method=start_method) == [True]
    assert pmap(sigint_ignored_by_a_child, [0], backend="thread") == [False]


# -- whole interpreters --

SCRIPT_HEADER = """
import os, signal, sys, time
from parallelize import pmap, imap, parallel
"""


def run_script(
    path: Path, body: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    path.write_text(SCRIPT_HEADER + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := pids_alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.timeout(120)
def test_exit_during_a_map_in_a_daemon_thread_is_quiet(start_method: str, script: Path) -> None:
    # The exit hook closes the pool under the thread's map: the map must not report the workers
    # it stopped as crashes, nor trip over closed process objects or leak shared memory.
    body = f"""
    import threading

    def double(a):
        return a * 2

    def hang(_):
        time.sleep(60)

    if __name__ == "__main__":
        import numpy as np

        options = dict(workers=2, start_method={start_method!r})
        pmap(double, [np.ones(300_000) for _ in range(4)], **options)  # shared-memory segments
        stream = imap(hang, range(4), ordered=False, **options)
        threading.Thread(target=lambda: next(stream), daemon=True).start()

        def short_maps():  # maps that start, end and reap workers while the exit hook runs
            while True:
                pmap(double, range(50), max_tasks_per_worker=10, **options)

        threading.Thread(target=short_maps, daemon=True).start()
        time.sleep(0.5)
    """
    done = run_script(script, body)
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""


@pytest.mark.slow  # ten seconds of waiting: the default suite keeps its time
@pytest.mark.timeout(120)
def test_exit_handler_joining_a_daemon_thread_in_a_map_does_not_hang(script: Path) -> None:
    # An exit handler that runs after parallelize's (registered before the import) waits for a
    # daemon thread whose map lost its pool: the thread must end, not wait forever.
    script.write_text(textwrap.dedent("""
        import atexit, threading, time
        threads = []
        atexit.register(lambda: threads[0].join())
        from parallelize import pmap

        def slow(x):
            time.sleep(0.3)
            return x

        if __name__ == "__main__":
            threads.append(threading.Thread(target=pmap, args=(slow, range(8)), daemon=True))
            threads[0].start()
            time.sleep(0.5)
    """))
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began < 60


def test_exit_with_a_warm_pool_is_quiet(start_method: str, script: Path) -> None:
    body = f"""
    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        pids = set(pmap(pid, range(20), workers=2, start_method={start_method!r}, chunksize=1))
        print(" ".join(map(str, pids)), file=sys.stderr)
    """
    done = run_script(script, body)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    pids = [int(p) for p in done.stderr.split()]
    assert pids and not wait_gone(pids)


def test_worker_output_reaches_the_terminal(start_method: str, script: Path) -> None:
    body = f"""
    def shout(x):
        print(f"item {{x}} says hi")
        print(f"item {{x}} warns", file=sys.stderr)
        return x

    if __name__ == "__main__":
        pmap(shout, range(3), workers=2, start_method={start_method!r})
    """
    done = run_script(script, body)
    assert done.returncode == 0
    for x in range(3):
        assert f"item {x} says hi" in done.stdout
        assert f"item {x} warns" in done.stderr


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_decorated_function_in_a_script(method: str, script: Path) -> None:
    body = f"""
    @parallel(workers=2, start_method={method!r})
    def cube(x, *, plus=0):
        return x ** 3 + plus

    if __name__ == "__main__":
        print(cube(range(5), plus=1), list(cube.imap([2])))
    """
    done = run_script(script, body)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2, 9, 28, 65] [8]"
    assert done.stderr == ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_module_that_maps_when_imported(method: str, tmp_path: Path) -> None:
    """A module that runs a map as it is imported needs no guard: the workers that import it as
    they start (they run the guarded script again) run that map serially instead of trying to
    start workers of their own, and every worker has the module's result."""
    (tmp_path / "mylib.py").write_text(textwrap.dedent(f"""
        from parallelize import imap, parallel, pmap

        def sq(x):
            return x * x

        @parallel(workers=2, start_method={method!r})
        def cube(x):
            return x ** 3

        TABLE = pmap(sq, range(5), workers=2, start_method={method!r})
        STREAMED = list(imap(sq, range(3), workers=2, start_method={method!r}))
        CUBES = cube(range(3))
    """))
    body = f"""
    import mylib

    def look_up(i):
        return mylib.TABLE[i] + mylib.STREAMED[i % 3] + mylib.CUBES[i % 3]

    if __name__ == "__main__":
        print(mylib.TABLE, pmap(look_up, range(5), workers=2, start_method={method!r}))
    """
    done = run_script(tmp_path / "main.py", body, timeout=100)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1, 4, 9, 16] [0, 3, 16, 9, 18]"
    assert done.stderr == ""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_map_at_the_top_level_of_a_script_is_refused_naming_the_line(
    method: str, script: Path
) -> None:
    """The script's own top-level map (even through a function it calls) is the script's work,
    which workers must not run again: each worker says where it is, the caller names the guard."""
    body = f"""
    def main():
        pmap(abs, range(5), workers=2, start_method={method!r})

    main()
    """
    done = run_script(script, body)
    assert done.returncode == 1
    line = script.read_text().splitlines().index("main()") + 1
    assert f"pmap() runs at the top level of the main script ({script}, line {line})" in (
        done.stderr
    )
    assert "WorkerCrashedError" in done.stderr and "__main__" in done.stderr


def _interrupt_once(body: str, tmp_path: Path) -> None:
    """Run a script that prints "ready", then has two workers write ``pid-*`` files in
    ``tmp_path`` and block; press Ctrl-C once (the parent alone) and check that it stops promptly
    with a KeyboardInterrupt and leaves neither worker."""
    path = tmp_path / "interrupt.py"
    path.write_text(SCRIPT_HEADER + textwrap.dedent(body))
    proc = subprocess.Popen(
        [sys.executable, str(path), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("pid-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.name[4:]) for p in tmp_path.glob("pid-*")]
        assert len(workers) == 2
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - began < PROMPT
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err
    assert not wait_gone(workers)


def test_ctrl_c_interrupts_promptly_and_leaves_nothing(start_method: str, tmp_path: Path) -> None:
    body = f"""
    def busy(x):
        with open(os.path.join(sys.argv[1], f"pid-{{os.getpid()}}"), "w"):
            pass
        time.sleep(60)

    if __name__ == "__main__":
        print("ready", flush=True)
        pmap(busy, range(10), workers=2, chunksize=1, start_method={start_method!r})
    """
    _interrupt_once(body, tmp_path)


def test_workers_exit_when_the_parent_is_killed(start_method: str, tmp_path: Path) -> None:
    body = f"""
    def pid(x):
        if x == 0:
            time.sleep(0.2)
        return os.getpid()

    if __name__ == "__main__":
        pids = set(pmap(pid, range(8), workers=2, chunksize=1, start_method={start_method!r}))
        print(" ".join(map(str, pids)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    done = run_script(tmp_path / "orphan.py", body)
    assert done.returncode == -signal.SIGKILL
    pids = [int(p) for p in done.stdout.split()]
    assert pids and not wait_gone(pids)


@pytest.mark.parametrize("parent", ["killed", "exits"])
def test_workers_whose_code_left_a_thread_running_exit_with_the_parent(
    start_method: str, parent: str, tmp_path: Path
) -> None:
    """A worker whose initializer (or an imported module) started a non-daemon thread still
    ends when its work does: waiting for that thread, it outlived a killed parent for good (and
    kept the fork server alive), and held up a parent's normal exit until it was killed."""
    body = f"""
    import threading

    def start_thread():
        threading.Thread(target=threading.Event().wait, daemon=False).start()

    if __name__ == "__main__":
        pids = set(pmap(lambda _: os.getpid(), range(8), workers=2, chunksize=1,
                        initializer=start_thread, start_method={start_method!r}))
        print(" ".join(map(str, pids)), flush=True)
        if {parent!r} == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
    """
    done = run_script(tmp_path / "thread_left.py", body)
    assert done.returncode == (-signal.SIGKILL if parent == "killed" else 0), done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids and not wait_gone(pids)
    if parent == "exits":  # ended on their own, with nothing to report
        assert done.stderr == ""


def test_exit_handlers_run_in_a_worker_that_owns_them(start_method: str, tmp_path: Path) -> None:
    """A spawned worker (a fresh interpreter) runs the ``atexit`` handlers its own code
    registered as it ends; a forked one never runs the handlers its parent had registered."""
    body = f"""
    import atexit

    def note_exit():
        open(os.path.join(sys.argv[1], f"exit-{{os.getpid()}}"), "w").close()

    def register():
        atexit.register(note_exit)

    if __name__ == "__main__":
        atexit.register(print, "caller-exit")
        pids = set(pmap(lambda _: os.getpid(), range(8), workers=2, chunksize=1,
                        initializer=register, start_method={start_method!r}))
        print(" ".join(map(str, pids)), flush=True)
    """
    done = run_script(tmp_path / "handlers.py", body, str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "caller-exit" and done.stdout.count("caller-exit") == 1
    pids = {int(p) for p in lines[0].split()}
    assert not wait_gone(list(pids))
    noted = {int(path.name.removeprefix("exit-")) for path in tmp_path.glob("exit-*")}
    if start_method == "spawn":
        assert pids <= noted  # (a worker that got no item ran its handlers too)
    else:
        assert not noted


# -- stress --


def chaos(x: int, seed: int) -> Any:
    fate = random.Random(seed * 100_003 + x).random()
    if fate < 0.01:
        os.kill(os.getpid(), signal.SIGKILL)
    if fate < 0.02:
        time.sleep(30)
    if fate < 0.04:
        raise ArithmeticError(x)
    if fate < 0.05:
        return threading.Lock()  # cannot be pickled
    return x


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_many_maps_with_random_faults(start_method: str) -> None:
    pmap(abs, [1, 2], workers=2, start_method=start_method)
    fds, procs = open_fds(), len(children())
    for seed in range(15):
        results = pmap(
            functools.partial(chaos, seed=seed),
            range(200),
            workers=2,
            start_method=start_method,
            timeout=1.0,
            on_error="return",
        )
        assert len(results) == 200
        for x, value in enumerate(results):
            fate = random.Random(seed * 100_003 + x).random()
            expected = (
                WorkerCrashedError
                if fate < 0.01
                else TimeoutError
                if fate < 0.02
                else ArithmeticError
                if fate < 0.04
                else TypeError
                if fate < 0.05
                else None
            )
            if expected is None:
                assert value == x
            else:
                assert isinstance(value, expected), (x, value)
    time.sleep(0.2)
    assert open_fds() <= fds
    assert len(children()) <= procs


# -- regressions -----------------------------------------------------------------------------------


def short_sleep(x: int) -> int:
    time.sleep(0.02)
    return x


def fail_first(x: int) -> int:
    if x == 0:
        raise ValueError("first")
    return x


def test_slow_consumer_does_not_make_finished_items_time_out(start_method: str) -> None:
    stream = imap(
        short_sleep,
        range(8),
        workers=2,
        chunksize=1,
        timeout=0.3,
        start_method=start_method,
        on_error="return",
    )
    results = []
    for value in stream:
        results.append(value)
        time.sleep(0.4)  # longer than the timeout: both queued chunks finish meanwhile
    assert results == list(range(8))


def test_retiring_workers_recover_after_a_cancelled_map(start_method: str) -> None:
    options: dict[str, Any] = {
        "workers": 1,
        "chunksize": 1,
        "max_tasks_per_worker": 2,
        "start_method": start_method,
    }
    for _ in range(4):
        with pytest.raises(ValueError, match="first"):
            pmap(fail_first, range(4), **options)
    assert pmap(abs, [-1, -2, -3], **options) == [1, 2, 3]


def test_exit_with_suspended_concurrent_maps(script: Path) -> None:
    body = """
    if __name__ == "__main__":
        a = imap(abs, range(-100, 0), workers=2, chunksize=1)
        b = imap(abs, range(-100, 0), workers=2, chunksize=1)
        print(next(a), next(b))
    """
    done = run_script(script, body, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100", "100"]


def hold_second_worker(flags: str) -> None:
    """Initializer: the first worker starts at once; the second waits until the test says go."""
    try:
        os.close(os.open(os.path.join(flags, "first"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        while not os.path.exists(os.path.join(flags, "go")):
            time.sleep(0.01)


def test_work_goes_to_workers_that_have_started(start_method: str, tmp_path: Path) -> None:
    # A worker still starting up (here: stuck in its initializer) is sent nothing, so a map
    # finishes on the workers that are up instead of waiting for it.
    try:
        out = pmap(
            abs,
            range(-20, 0),
            workers=2,
            start_method=start_method,
            initializer=hold_second_worker,
            initargs=(str(tmp_path),),
        )
        assert out == list(range(20, 0, -1))
    finally:
        (tmp_path / "go").touch()


def test_a_forked_child_starts_its_own_pool(script: Path) -> None:
    # A child made with os.fork must not drive the parent's workers (their pipes are the
    # parent's), nor try to shut them down when it exits.
    body = """
    import os
    if __name__ == "__main__":
        def ppids():
            return set(pmap(lambda x: os.getppid(), range(8), workers=2, start_method="spawn"))

        parent_workers = ppids()
        pid = os.fork()
        if pid == 0:
            ppids_in_child = ppids()
            print("child", ppids_in_child == {os.getpid()}, flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        again = ppids()
        print("parent", os.waitstatus_to_exitcode(status), again == parent_workers == {os.getpid()})
    """
    done = run_script(script, body, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "True", "parent", "0", "True"]
    assert "Error" not in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_concurrent_maps_with_retiring_workers(start_method: str) -> None:
    # Three threads, each on a pool of its own (a private one while another map runs), whose
    # workers retire after every item: workers start, exit and are reaped all the time, and one
    # thread's process start may collect another thread's worker.
    failures: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(6):
                out = pmap(
                    abs,
                    range(-40, 0),
                    workers=2,
                    start_method=start_method,
                    max_tasks_per_worker=1,
                    chunksize=1,
                )
                assert out == list(range(40, 0, -1))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def exit_in_initializer() -> None:
    os._exit(3)


def test_an_initializer_that_dies_is_named(start_method: str) -> None:
    """A worker that dies in its initializer gives an error saying so (not a hint about a
    missing ``__main__`` guard), at once, and the next map starts afresh."""
    with pytest.raises(WorkerCrashedError, match=r"while running the initializer exit_in_init"):
        pmap(my_pid, range(4), workers=2, initializer=exit_in_initializer,
             start_method=start_method)
    assert len(pmap(my_pid, range(4), workers=2, start_method=start_method)) == 4


def test_ctrl_c_stops_a_hanging_initializer_at_once(start_method: str, tmp_path: Path) -> None:
    """Without ``timeout=``, a map whose initializer never returns still stops at the first
    Ctrl-C, and leaves no worker behind."""
    body = f"""
    def stuck():
        with open(os.path.join(sys.argv[1], f"pid-{{os.getpid()}}"), "w"):
            pass
        time.sleep(3600)

    if __name__ == "__main__":
        print("ready", flush=True)
        pmap(abs, range(10), workers=2, initializer=stuck, start_method={start_method!r})
    """
    _interrupt_once(body, tmp_path)


def map_in_a_pool_worker(n: int) -> list[int]:
    return pmap(abs, range(-n, 0))


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_a_map_in_a_multiprocessing_pool_worker_runs_serially(context: str) -> None:
    """A daemonic process cannot start workers: a map there runs serially, as in our own
    workers, instead of failing with 'daemonic processes are not allowed to have children'."""
    import multiprocessing

    with multiprocessing.get_context(context).Pool(2) as pool:
        assert pool.map(map_in_a_pool_worker, [2, 3]) == [[2, 1], [3, 2, 1]]


@pytest.mark.parametrize("gap", [0.03, 0.1])
def test_a_second_ctrl_c_while_stopping_shows_one_interrupt(
    start_method: str, gap: float, tmp_path: Path
) -> None:
    """Ctrl-C in an ``imap`` loop gives busy workers a moment to finish; a second Ctrl-C in that
    moment ends the cleanup at once: one KeyboardInterrupt, no second traceback, no worker
    left."""
    body = f"""
    def busy(x):
        if x > 0:
            time.sleep(60)
        return x

    if __name__ == "__main__":
        for _ in imap(busy, range(10), workers=2, chunksize=1, start_method={start_method!r}):
            print("ready", flush=True)
            time.sleep(60)
    """
    path = tmp_path / "twice.py"
    path.write_text(SCRIPT_HEADER + textwrap.dedent(body))
    proc = subprocess.Popen(
        [sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(0.5)  # both workers are in busy()
        workers = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert err.count("KeyboardInterrupt") == 1, err
    assert "During handling" not in err and "Exception ignored" not in err, err
    assert not wait_gone(workers)
