"""A process's life around parallelize: exit handlers, and errors made once per process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_a_map_in_an_exit_handler_runs_and_exits(tmp_path: Path, start_method: str) -> None:
    """A user's exit handler may still map, whatever parallelize registered for exit before or
    after it: the pools close after it, and a counter is let go of last."""
    done = _run(
        tmp_path,
        f"""
        import atexit
        from parallelize import pmap

        def report():
            print(pmap(abs, [-1, -2], start_method={start_method!r}), counter.value, flush=True)

        if __name__ == "__main__":
            atexit.register(report)
            from parallelize import shared_counter  # its exit work is registered after report

            counter = shared_counter()
            pmap(lambda _: counter.increment(), range(5), start_method={start_method!r})
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1,", "2]", "5"]
    assert "leaked" not in done.stderr, done.stderr


def test_one_worker_crashed_error_class_however_many_threads_ask(tmp_path: Path) -> None:
    """The class is made on first use; threads that all hit their first crash at once must get
    the same class, or ``except WorkerCrashedError`` would miss some."""
    done = _run(
        tmp_path,
        """
        import threading
        import parallelize._errors as errors

        start = threading.Barrier(8)
        made = []

        def ask():
            start.wait()
            made.append(errors.crash_error("gone", index=1))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        from parallelize import WorkerCrashedError
        print(len({type(error) for error in made}), all(
            isinstance(error, WorkerCrashedError) for error in made))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]
