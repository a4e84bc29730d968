"""Stats read and shown (the diagnosis, the report, the JSON, the plot), and workers' output
through the faces and above the progress bar. The behaviour over every backend is in
``tests/behaviour/test_output.py`` and ``tests/behaviour/test_stats.py``."""

from __future__ import annotations

import io
import json
import logging
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from parallelize import Executor, MapStats, Pool, collect_stats, imap, pmap

pytestmark = pytest.mark.timeout(60)


def _stats(**changes: Any) -> MapStats:
    figures: dict[str, Any] = {
        "function": "work",
        "backend": "process",
        "items": 1000,
        "chunks": 10,
        "workers": 2,
        "workers_used": 2,
        "wall_s": 1.0,
        "compute_s": 1.8,
        "overhead_s": 0.1,
        "idle_s": 0.1,
        "tail_s": 0.05,
        "startup_s": 0.01,
        "bytes_pickled": 1000,
        "bytes_shared": 0,
        "retries": 0,
        "replacements": 0,
        "crashes": 0,
        "timeouts": 0,
        "slowest": (3, 0.01),
        "timeline": [(0, 0.0, 0.5, 0.45), (1, 0.0, 0.9, 0.85)],
    }
    figures.update(changes)
    return MapStats(**figures)


def test_a_healthy_map_has_no_finding() -> None:
    stats = _stats()
    assert stats.diagnosis == []
    assert "no problem found" in str(stats)


@pytest.mark.parametrize(
    ("changes", "finding"),
    [
        ({"compute_s": 0.003, "overhead_s": 0.012, "idle_s": 0.0}, "overhead is 80%"),
        ({"slowest": (41, 0.38)}, "the item at index 41 took 38% of the wall time"),
        ({"idle_s": 3.0, "tail_s": 0.0}, "the input iterator is the bottleneck"),
        ({"idle_s": 3.0, "tail_s": 3.0}, "split unevenly"),
        ({"startup_s": 0.8}, "starting the workers took 80%"),
        ({"bytes_pickled": 2 * 10**9}, "2 GB of items and results"),
        ({"workers_used": 1}, "only 1 of the 2 workers ran items"),
        ({"crashes": 2}, "workers died 2 times"),
        ({"timeouts": 3}, "3 items ran past the timeout"),
    ],
)
def test_each_finding_names_its_figure_and_its_fix(changes: dict[str, Any], finding: str) -> None:
    stats = _stats(**changes)
    assert any(finding in text for text in stats.diagnosis), stats.diagnosis
    assert finding in str(stats)


def test_to_dict_is_plain_json() -> None:
    stats = _stats(slowest=(7, 0.5))
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["slowest"] == [7, 0.5]
    assert data["items"] == 1000
    assert data["timeline"][0] == [0, 0.0, 0.5, 0.45]
    assert isinstance(data["diagnosis"], list)


def test_plot_draws_a_row_per_worker(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    with collect_stats() as collected:
        pmap(abs, range(-50, 50), workers=2, chunksize=10)
    figure = collected.maps[0].plot()
    (ax,) = figure.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["worker 0", "worker 1"]
    figure.savefig(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 1000


def shout(x: int) -> int:
    print(f"line {x}")
    logging.getLogger("parallelize.tests.faces").warning("record %d", x)
    return x


def test_pool_and_executor_forward_output(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with Pool(2) as pool:
        assert pool.map(shout, range(4)) == list(range(4))
    with Executor(2) as executor:
        assert list(executor.map(shout, range(4, 6))) == [4, 5]
    assert sorted(capsys.readouterr().out.splitlines()) == [f"line {i}" for i in range(6)]
    records = [r for r in caplog.records if r.name == "parallelize.tests.faces"]
    assert sorted(r.getMessage() for r in records) == [f"record {i}" for i in range(6)]
    assert sorted(r.item_index for r in records) == [0, 0, 1, 1, 2, 3]  # type: ignore[attr-defined]


def test_lines_go_to_the_current_stdout_and_above_the_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redirected stdout gets whole lines; the bar (on stderr) is cleared around them."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        pmap(shout, range(20), workers=2, progress=True)
    assert sorted(buffer.getvalue().splitlines()) == sorted(f"line {i}" for i in range(20))
    assert "line" not in capsys.readouterr().out


def test_streams_are_given_back_after_a_thread_map() -> None:
    before = sys.stdout, sys.stderr
    pmap(shout, range(3), backend="thread", workers=2)
    assert (sys.stdout, sys.stderr) == before


def test_async_maps_and_pools_are_recorded() -> None:
    """An asyncio map is one map; a Pool's or an Executor's whole life is one, recorded as it
    ends."""
    import asyncio

    from parallelize import apmap

    with collect_stats() as collected:
        assert asyncio.run(apmap(abs, range(-5, 5), workers=2)) == [abs(x) for x in range(-5, 5)]
        with Executor(2) as executor:
            assert list(executor.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
    functions = [stats.function for stats in collected.maps]
    assert functions == ["abs", "parallelize-executor"]
    assert [stats.items for stats in collected.maps] == [10, 6]


def torrent(x: int) -> int:
    """Print about a megabyte: more than the pipe to the caller holds."""
    line = "." * 99
    for _ in range(10_000):
        print(line)
    return x


def test_output_waiting_for_a_slow_consumer_does_not_count_against_the_timeout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stream's consumer that is slow to ask for more leaves the pipe full; the item waiting
    to print is not running, and must not time out for it."""
    import time

    got = []
    for value in imap(torrent, range(3), workers=1, timeout=1.0, chunksize=1):
        got.append(value)
        time.sleep(1.5)
    assert got == [0, 1, 2]
    assert len(capsys.readouterr().out.splitlines()) == 30_000


def test_derived_groups_keep_their_own_indexes() -> None:
    from parallelize import MapErrorGroup

    group = MapErrorGroup(
        "3 failed",
        [KeyError(1), ValueError(2), KeyError(3)],
        results=[None] * 8,
        failed_indexes=[0, 4, 7],
    )
    keys, rest = group.split(KeyError)
    assert keys is not None and rest is not None
    assert keys.failed_indexes == [0, 7]
    assert rest.failed_indexes == [4]
    assert keys.results is group.results
