"""``checkpoint=``: a map run again computes only what its file does not hold (WIP)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from parallelize import Checkpoint, CheckpointError, imap, pmap
from parallelize._checkpoint import summary
from support import script_env

pytestmark = pytest.mark.timeout(120)


def noted(folder: str, x: int) -> int:
    """x*x, noting in ``folder`` that item x was computed."""
    with open(os.path.join(folder, f"ran-{x}"), "a") as f:
        f.write("x")
    if x == 13:
        raise ValueError("thirteen")
    return x * x


def _ran(folder: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in folder.glob("ran-*")}


def _clear(folder: Path) -> None:
    for p in folder.glob("ran-*"):
        p.unlink()


@pytest.mark.parametrize("backend", ["process", "thread", "serial"])
def test_a_second_run_computes_only_what_is_missing(tmp_path: Path, backend: str) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    assert pmap(fn, range(10), checkpoint=path, backend=backend) == [x * x for x in range(10)]
    _clear(work)
    assert pmap(fn, range(15), checkpoint=path, backend=backend, on_error="return")[:13] == [
        x * x for x in range(13)
    ]
    assert _ran(work) == {10, 11, 12, 13, 14}
    _clear(work)
    items = [0, 99, 2, 3]  # the item at position 1 changed: computed again
    assert list(imap(fn, items, checkpoint=path, backend=backend)) == [x * x for x in items]
    assert _ran(work) == {99}


def test_a_map_fully_stored_runs_no_item(tmp_path: Path) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    pmap(fn, range(6), checkpoint=path)
    _clear(work)
    assert pmap(fn, range(6), checkpoint=path) == [x * x for x in range(6)]
    assert _ran(work) == set()


def test_failures_are_not_results(tmp_path: Path) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    out = pmap(fn, [12, 13], checkpoint=path, on_error="return", backend="thread")
    assert isinstance(out[1], ValueError)
    assert (summary(str(path))["done"], summary(str(path))["failed"]) == (1, 1)
    _clear(work)
    pmap(fn, [12, 13], checkpoint=path, on_error="return", backend="thread")
    assert _ran(work) == {13}


def test_another_function_on_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    pmap(abs, [1, -2], checkpoint=path, backend="thread")
    with pytest.raises(CheckpointError, match="len"):
        pmap(len, ["a"], checkpoint=path, backend="thread")
    assert pmap(len, ["ab"], checkpoint=Checkpoint(path, on_mismatch="recompute"),
                backend="thread") == [2]  # fmt: skip


def test_two_maps_on_one_file_the_second_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    stream = imap(abs, range(100), checkpoint=path, backend="thread")
    next(stream)
    with pytest.raises(CheckpointError, match="in use"):
        pmap(abs, range(3), checkpoint=path, backend="thread")
    stream.close()  # type: ignore[attr-defined]
    assert pmap(abs, range(3), checkpoint=path, backend="thread") == [0, 1, 2]


def test_a_bad_checkpoint_option_fails_before_any_worker_starts() -> None:
    with pytest.raises(TypeError, match="checkpoint"):
        pmap(abs, [1], checkpoint=3)


KILLED = """
import os, sys, time
from parallelize import pmap

def slow(x):
    open(os.path.join(sys.argv[2], f"ran-{{x}}"), "a").write("x")
    time.sleep(0.05)
    return x * x

if __name__ == "__main__":
    print(sum(pmap(slow, range(60), checkpoint=sys.argv[1], chunksize=1, workers=2)))
"""


@pytest.mark.timeout(180)
def test_a_map_killed_half_way_resumes_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL the caller mid-map; the second run computes only what the first did not
    deliver, and returns what a fresh run returns."""
    script, path, work = tmp_path / "s.py", tmp_path / "map.ckpt", tmp_path / "work"
    work.mkdir()
    script.write_text(textwrap.dedent(KILLED.format()))
    cmd = [sys.executable, str(script), str(path), str(work)]
    first = subprocess.Popen(cmd, env=script_env(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_ran(work)) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    stored = summary(str(path))["done"]
    assert 0 < stored < 60
    _clear(work)
    done = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, check=True)
    assert int(done.stdout) == sum(x * x for x in range(60))
    assert len(_ran(work)) <= 60 - stored
