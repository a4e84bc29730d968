"""Shared fixtures of the backend-specific tests (the behaviour suite has its own, in
``behaviour/conftest.py``, over every backend and start method)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

START_METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _no_interpreter_outlives_its_test() -> Iterator[None]:
    """After a test that made worker interpreters: close the idle ones, and wait for any
    abandoned one (an item past its timeout keeps its interpreter until it returns), so that no
    later test forks while one lives (the child would crash as it starts on CPython 3.13).
    Free when no interpreter was ever made."""
    yield
    if "_interpreters" in sys.modules:
        from support import close_interpreters

        close_interpreters()


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Path]:
    """A path for a throw-away script, run with this interpreter."""
    yield tmp_path / "script.py"


PYTHON = sys.executable
