"""Failure policies on every backend: ``on_error="group"`` and ``parallelize.Retry``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parallelize import (
    MapErrorGroup,
    ParallelizeError,
    Retry,
    WorkerCrashedError,
    collect_stats,
    imap,
    pmap,
)

from .conftest import Backend
from .workloads import die_once, fail_on_three, hoard, overrun_once, picky, resident

pytestmark = pytest.mark.timeout(90)


def _attempts(folder: Path, x: int) -> list[float]:
    path = folder / f"attempts-{x}"
    return [float(t) for t in path.read_text().split()] if path.exists() else []


# -- on_error="group" --


def test_group_runs_every_item_then_raises_every_failure(
    backend_options: dict[str, Any],
) -> None:
    items = [3, 1, 3, 2, 3]
    with pytest.raises(MapErrorGroup) as caught:
        pmap(fail_on_three, items, on_error="group", **backend_options)
    group = caught.value
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, ParallelizeError)
    assert group.failed_indexes == [0, 2, 4]
    assert [str(error) for error in group.exceptions] == ["bad item 3"] * 3
    assert all(isinstance(error, ValueError) for error in group.exceptions)
    assert group.results[1] == 1
    assert group.results[3] == 2
    assert [group.results[i] for i in (0, 2, 4)] == list(group.exceptions)
    assert "index 2" in "".join(group.exceptions[1].__notes__)


def test_group_is_caught_with_except_star(backend_options: dict[str, Any]) -> None:
    caught: list[BaseException] = []
    try:
        pmap(fail_on_three, range(6), on_error="group", ordered=False, **backend_options)
    except* ValueError as group:
        caught.extend(group.exceptions)
    assert len(caught) == 1


def test_group_without_failures_returns_the_results(backend_options: dict[str, Any]) -> None:
    assert pmap(fail_on_three, [1, 2], on_error="group", **backend_options) == [1, 2]


def test_group_in_a_stream_comes_after_every_good_result(
    backend_options: dict[str, Any],
) -> None:
    seen: list[int] = []
    with pytest.raises(MapErrorGroup) as caught:
        for value in imap(fail_on_three, range(8), on_error="group", **backend_options):
            seen.append(value)
    assert seen == [0, 1, 2, 4, 5, 6, 7]
    assert caught.value.failed_indexes == [3]
    assert caught.value.results is None  # a stream holds no list


# -- Retry --


def test_retry_only_what_on_names(backend_options: dict[str, Any], tmp_path: Path) -> None:
    """OSError is retried; the ValueError of bad data fails at once, tried once."""
    fn = functools.partial(picky, str(tmp_path))
    out = pmap(fn, [0, 1, 2], retries=Retry(3, on=OSError), on_error="return", **backend_options)
    assert out[:2] == [0, 1]
    assert isinstance(out[2], ValueError)
    assert len(_attempts(tmp_path, 1)) == 2
    assert len(_attempts(tmp_path, 2)) == 1


def test_retry_backoff_holds_the_item_back_not_the_others(
    backend_options: dict[str, Any], tmp_path: Path
) -> None:
    """The retry of item 1 waits its backoff; meanwhile the other items finish."""
    fn = functools.partial(picky, str(tmp_path))
    retry = Retry(2, backoff=0.4, on=OSError)
    out = list(imap(fn, [1, 0, 3, 4], retries=retry, ordered=False, **backend_options))
    assert out[-1] == 1  # the held-back item came last
    first, second = _attempts(tmp_path, 1)
    assert second - first >= 0.4
    assert all(_attempts(tmp_path, x)[0] < second for x in (0, 3, 4))


def test_retry_backoff_gives_up_after_times(
    backend_options: dict[str, Any], tmp_path: Path
) -> None:
    fn = functools.partial(picky, str(tmp_path))
    with pytest.raises(ValueError, match="bad data"):
        pmap(fn, [2], retries=Retry(2, backoff=0.05), **backend_options)
    attempts = _attempts(tmp_path, 2)
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 0.1  # 0.05, then 0.1: twice the wait


def test_retry_on_crashes(
    backend: Backend, backend_options: dict[str, Any], tmp_path: Path
) -> None:
    if not backend.child_processes:
        pytest.skip("only a worker process of our pool can die without taking the caller")
    fn = functools.partial(die_once, str(tmp_path))
    assert pmap(fn, range(3), retries=Retry(1, on=WorkerCrashedError), **backend_options) == [
        0,
        1,
        2,
    ]
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(WorkerCrashedError):  # a crash is not a KeyError: not retried
        pmap(functools.partial(die_once, str(again)), range(3),
             retries=Retry(1, on=KeyError), **backend_options)  # fmt: skip


@pytest.mark.slow  # a timeout per backend: the default suite keeps its time
def test_retry_on_timeouts(
    backend_options: dict[str, Any], differs: Callable[[str], None], tmp_path: Path
) -> None:
    differs("timeout")
    log = str(tmp_path / "attempts")
    assert pmap(overrun_once, [log], timeout=0.5, retries=Retry(1, on=TimeoutError),
                **backend_options) == [1]  # fmt: skip
    log = str(tmp_path / "again")
    with pytest.raises(TimeoutError):  # a timeout is not a KeyError: not retried
        pmap(overrun_once, [log], timeout=0.5, retries=Retry(1, on=KeyError), **backend_options)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: Retry(-1), ValueError),
        (lambda: Retry("2"), TypeError),  # type: ignore[arg-type]
        (lambda: Retry(1, on=int), TypeError),  # type: ignore[arg-type]
        (lambda: Retry(1, on=(OSError, "x")), TypeError),  # type: ignore[arg-type]
        (lambda: Retry(1, backoff=-1), ValueError),
        (lambda: Retry(1, max_backoff=float("inf")), ValueError),
    ],
)
def test_a_bad_retry_is_refused_when_built(make: Callable[[], Retry], error: type) -> None:
    with pytest.raises(error, match="Retry"):
        make()


def test_a_bad_retries_option_fails_before_any_worker_starts(
    backend_options: dict[str, Any],
) -> None:
    with pytest.raises(TypeError, match="retries"):
        pmap(abs, [1], retries="twice", **backend_options)
    with pytest.raises(ValueError, match="on_error"):
        pmap(abs, [1], on_error="collect", **backend_options)


# -- max_worker_memory --


def test_a_worker_over_its_memory_is_replaced_and_no_item_runs_twice(
    backend: Backend, backend_options: dict[str, Any], tmp_path: Path
) -> None:
    if not backend.child_processes:
        with pytest.raises(ValueError, match="max_worker_memory"):
            pmap(abs, [1], max_worker_memory="1GiB", **backend_options)
        return
    baseline = max(pmap(resident, range(4), **backend_options))
    fn = functools.partial(hoard, str(tmp_path))
    with collect_stats() as collected:
        pids = pmap(fn, range(12), max_worker_memory=baseline + (40 << 20), **backend_options)
    assert len(pids) == 12
    assert len(set(pids)) > 2  # workers were replaced as they grew
    for x in range(12):  # each item ran once
        assert (tmp_path / f"attempts-{x}").read_text() == "x"
    assert collected.maps[0].replacements >= 1


def test_max_worker_memory_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="memory_limit"):
        pmap(abs, [1], backend="dask", max_worker_memory=1 << 30)
    with pytest.raises(ValueError, match="Ray"):
        pmap(abs, [1], backend="ray", max_worker_memory=1 << 30)
    with pytest.raises(ValueError, match="serial"):
        pmap(abs, [1], backend="serial", max_worker_memory="2GB")
    with pytest.raises(ValueError, match="not a size"):
        pmap(abs, [1], max_worker_memory="lots")
    with pytest.raises(TypeError, match="max_worker_memory"):
        pmap(abs, [1], max_worker_memory=2.5)
