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


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Path]:
    """A path for a throw-away script, run with this interpreter."""
    yield tmp_path / "script.py"


PYTHON = sys.executable
