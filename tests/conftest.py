"""Shared fixtures: the backends and start methods every behaviour test runs against."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

START_METHODS = ["fork", "spawn", "forkserver"]
# The same behaviour suite runs on each of these: (backend, start_method).
LOCAL_ENGINES = [
    *(pytest.param(("process", m), id=f"process-{m}") for m in START_METHODS),
    pytest.param(("thread", None), id="thread"),
    pytest.param(("serial", None), id="serial"),
]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=LOCAL_ENGINES)
def engine(request: pytest.FixtureRequest) -> dict[str, object]:
    """Options selecting one backend (and start method): pass as ``**engine``."""
    backend, method = request.param
    options: dict[str, object] = {"backend": backend, "workers": 2}
    if method is not None:
        options["start_method"] = method
    return options


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Path]:
    """A path for a throw-away script, run with this interpreter."""
    yield tmp_path / "script.py"


PYTHON = sys.executable
