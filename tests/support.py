"""Helpers the test modules share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import psutil

import parallelize


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def live_children() -> int:
    """Child processes of this one (workers, a fork server), zombies left out."""
    alive = 0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended meanwhile
            alive += child.status() != psutil.STATUS_ZOMBIE
    return alive


def children_at_most(bound: int, limit: float = 10.0) -> int:
    """``live_children()`` as soon as it is at most ``bound`` (or its value after ``limit``)."""
    deadline = time.monotonic() + limit
    while (count := live_children()) > bound and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def script_env() -> dict[str, str]:
    """The environment for a script run in a new interpreter: it imports the parallelize under
    test, wherever the tests run from."""
    path = [str(Path(parallelize.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}


def close_interpreters() -> None:
    """Close the worker interpreters kept warm. Tests do it once done with them: while one
    lives, ``sys._current_frames()`` (Dask's profiler calls it, so do stack dumps) corrupts
    memory on CPython 3.13 (docs/backends.md)."""
    from parallelize._backends import loaded_backends

    for backend in loaded_backends():
        if backend.name == "interpreters":
            backend.shutdown()
    wait_for_no_interpreters()


def wait_for_no_interpreters(seconds: float = 60.0) -> None:
    """Wait until no subinterpreter lives in this process (an abandoned one ends when its item
    returns). A child forked while one lives crashes as it starts on CPython 3.13 (gh-101437),
    so a later fork test must not meet one."""
    interpreters = sys.modules.get("_interpreters")
    if interpreters is None:
        return
    deadline = time.monotonic() + seconds
    while len(interpreters.list_all()) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
