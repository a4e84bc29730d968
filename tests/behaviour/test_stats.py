"""Stats: ``collect_stats()`` records a ``MapStats`` for every map run inside it, and
``stats=True`` prints the same report to stderr, on every backend."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parallelize import MapStats, collect_stats, imap, pmap

from .workloads import flaky, nap, square

pytestmark = pytest.mark.timeout(90)


def test_every_map_in_the_block_is_recorded(backend_options: dict[str, Any]) -> None:
    with collect_stats() as collected:
        pmap(square, range(100), **backend_options)
        assert list(imap(square, range(10), **backend_options)) == [x * x for x in range(10)]
    pmap(square, range(5), **backend_options)  # after the block: not recorded
    assert [stats.items for stats in collected.maps] == [100, 10]
    for stats in collected.maps:
        assert isinstance(stats, MapStats)
        assert stats.function == "square"
        assert stats.chunks >= 1
        assert stats.workers >= 1
        assert stats.wall_s > 0
        assert stats.compute_s >= 0
        assert stats.overhead_s >= 0
        assert stats.idle_s >= 0
        assert 0 <= stats.startup_s <= stats.wall_s
        assert stats.bytes_pickled >= 0
        assert stats.bytes_shared >= 0
        assert (stats.retries, stats.crashes, stats.timeouts) == (0, 0, 0)
        assert stats.slowest is not None
        assert 0 <= stats.slowest[0] < stats.items
        assert isinstance(stats.diagnosis, list)
        assert "items" in str(stats)
        assert json.loads(json.dumps(stats.to_dict()))["items"] == stats.items


def test_the_slowest_item_is_named(backend_options: dict[str, Any]) -> None:
    """One item far slower than the rest is found, and the diagnosis says so."""
    waits = [0.001] * 12
    waits[7] = 0.3
    with collect_stats() as collected:
        pmap(nap, waits, **backend_options)
    (stats,) = collected.maps
    assert stats.slowest is not None
    index, seconds = stats.slowest
    assert index == 7
    assert seconds >= 0.3
    assert stats.compute_s >= 0.3
    assert any("index 7" in finding for finding in stats.diagnosis), stats.diagnosis


def test_retries_are_counted(backend_options: dict[str, Any], tmp_path: Path) -> None:
    fails_twice = functools.partial(flaky, str(tmp_path), 2)
    with collect_stats() as collected:
        assert pmap(fails_twice, range(3), retries=2, **backend_options) == [0, 1, 2]
    assert collected.maps[0].retries == 6


def test_timeouts_are_counted(
    backend_options: dict[str, Any], differs: Callable[[str], None]
) -> None:
    differs("timeout")
    with collect_stats() as collected:
        out = pmap(nap, [0.01, 1.5, 0.01], timeout=0.5, on_error="return", **backend_options)
    assert isinstance(out[1], TimeoutError)
    assert collected.maps[0].timeouts == 1


def test_a_failed_map_is_recorded_too(backend_options: dict[str, Any]) -> None:
    with collect_stats() as collected, pytest.raises(TypeError):
        pmap(square, [1, "x", 3], **backend_options)
    assert len(collected.maps) == 1


def test_stats_true_prints_the_report_to_stderr(
    backend_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pmap(square, range(20), stats=True, **backend_options)
    err = capsys.readouterr().err
    assert "map of square" in err
    assert "20 items" in err


def test_a_bad_stats_option_fails_before_any_worker_starts(
    backend_options: dict[str, Any],
) -> None:
    with pytest.raises(TypeError, match="stats"):
        pmap(square, range(2), stats="yes", **backend_options)
