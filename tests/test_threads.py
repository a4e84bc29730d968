"""What only the thread backend does: items and results not pickled, blocking calls overlapping,
an abandoned thread; and optional engines loaded only when used.

The behaviour every backend keeps, threads included, is the behaviour suite in ``behaviour/``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parallelize import pmap

pytestmark = pytest.mark.timeout(60)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _attempt(log: str) -> int:
    """This call's attempt number, counted in a file that every thread can see."""
    with open(log, "a") as f:
        f.write("x")
    with open(log) as f:
        return len(f.read())


def overrun_and_raise(log: str) -> int:
    """Every attempt runs past any short timeout, then raises."""
    attempt = _attempt(log)
    time.sleep(1.5)
    raise ValueError(f"attempt {attempt}")


def test_an_abandoned_thread_spends_no_more_retries(tmp_path: Path) -> None:
    """A timed-out item's thread cannot be killed: when its attempt finally raises, it must not
    retry on its own while the scheduler runs the item's next attempt elsewhere."""
    log = tmp_path / "attempts"
    out = pmap(overrun_and_raise, [str(log)], backend="thread", timeout=0.3, retries=1,
               on_error="return")
    assert isinstance(out[0], TimeoutError)
    time.sleep(3.5)  # both abandoned attempts have raised by now
    assert log.read_text() == "xx"


def test_threads_share_the_callers_objects() -> None:
    """Items and results are not pickled: the very same objects cross."""
    items = [object() for _ in range(20)]
    assert all(a is b for a, b in zip(pmap(lambda o: o, items, backend="thread"), items,
                                     strict=True))


def test_threads_overlap_blocking_calls() -> None:
    """The point of threads: waiting items (I/O, sleep) overlap even under the GIL."""
    began = time.monotonic()
    pmap(nap, [0.2] * 8, backend="thread", workers=8)
    assert time.monotonic() - began < 1.0


# -- engines load only when used (no engine needs to be installed for these) --------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_no_engine_is_imported_by_local_backends() -> None:
    result = _run(
        "import sys\n"
        "from parallelize import pmap\n"
        "pmap(abs, [-1], backend='thread'); pmap(abs, [-1], backend='serial')\n"
        "print(sorted({'distributed', 'dask', 'ray'} & set(sys.modules)))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("backend", "module"), [("dask", "distributed"), ("ray", "ray")])
def test_missing_engine_names_the_extra(backend: str, module: str) -> None:
    result = _run(
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if not installed\n"
        "from parallelize import pmap\n"
        "try:\n"
        f"    pmap(abs, [-1], backend={backend!r})\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(rf'pip install "parallelize\[{backend}\]"', result.stdout), result.stdout
