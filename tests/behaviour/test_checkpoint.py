"""``checkpoint=`` on every backend: a second run computes only what the file lacks."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from parallelize import pmap

from .workloads import flaky

pytestmark = pytest.mark.timeout(90)


def test_a_second_run_computes_only_what_is_missing(
    backend_options: dict[str, Any], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    fn = functools.partial(flaky, str(work), 0)  # never fails; notes each attempt
    path = tmp_path / "map.ckpt"
    assert pmap(fn, range(8), checkpoint=path, **backend_options) == list(range(8))
    for marker in work.iterdir():
        marker.unlink()
    assert pmap(fn, range(12), checkpoint=path, **backend_options) == list(range(12))
    assert sorted(int(p.name.split("-")[1]) for p in work.iterdir()) == [8, 9, 10, 11]
