"""When the function fails: the item's own exception, in place or raised, retried, timed out."""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import parallelize
from parallelize import imap, pmap

from .conftest import Backend
from .workloads import fail_on_three, flaky, nap, overrun_then_raise, raise_then_overrun, square

pytestmark = pytest.mark.timeout(60)


def test_exception_keeps_its_type_with_the_workers_traceback_and_a_note(
    backend: Backend, backend_options: dict[str, Any]
) -> None:
    """``except ValueError`` works as in a loop; the worker's traceback is the ``__cause__``
    and a note names the failing item's index."""
    with pytest.raises(ValueError, match="bad item 3") as caught:
        pmap(fail_on_three, range(10), **backend_options)
    error = caught.value
    assert type(error) is ValueError
    assert "(raised by the item at index 3, in a parallelize worker)" in error.__notes__
    assert isinstance(error.__cause__, parallelize.RemoteTraceback)
    assert "fail_on_three" in str(error.__cause__)
    assert 'raise ValueError(f"bad item {x}")' in str(error.__cause__)
    assert "fail_on_three" in "".join(traceback.format_exception(error))
    if backend.in_caller:  # the live frames too, for pdb
        frames = traceback.extract_tb(error.__traceback__)
        assert "fail_on_three" in [frame.name for frame in frames]


def test_on_error_return_puts_the_exception_in_place(backend_options: dict[str, Any]) -> None:
    """``on_error="return"`` finishes the map; a failed item's exception stands in its place."""
    results = pmap(fail_on_three, range(6), on_error="return", **backend_options)
    assert results[:3] == [0, 1, 2] and results[4:] == [4, 5]
    assert isinstance(results[3], ValueError)
    streamed = list(imap(fail_on_three, range(6), on_error="return", **backend_options))
    assert streamed[:3] == [0, 1, 2] and streamed[4:] == [4, 5]
    assert isinstance(streamed[3], ValueError)


def test_imap_raises_at_the_failing_item(backend_options: dict[str, Any]) -> None:
    """``imap`` yields the results before the failing item, then raises at it."""
    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in imap(fail_on_three, range(10), chunksize=1, **backend_options):
            seen.append(value)
    assert seen == [0, 1, 2]
    stream = imap(fail_on_three, range(8), **backend_options)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(stream)


def _attempts(folder: Path, items: range) -> list[int]:
    return [len((folder / f"attempts-{x}").read_text()) for x in items]


def test_retries_rerun_a_failing_item(backend_options: dict[str, Any], tmp_path: Path) -> None:
    """``retries=n`` runs a failing item up to n more times; only then does its error count."""
    enough, too_few = tmp_path / "enough", tmp_path / "too-few"
    enough.mkdir()
    too_few.mkdir()
    items = range(6)
    out = pmap(functools.partial(flaky, str(enough), 2), items, retries=2, **backend_options)
    assert out == [*items]
    assert _attempts(enough, items) == [3] * 6
    with pytest.raises(OSError, match="transient failure 2"):
        pmap(functools.partial(flaky, str(too_few), 2), items, retries=1, **backend_options)
    assert all(len(log.read_text()) <= 2 for log in too_few.iterdir())  # never a third attempt


def test_timeout_fails_only_the_slow_item(
    backend: Backend, backend_options: dict[str, Any], differs: Callable[[str], None]
) -> None:
    """``timeout=`` fails the item that runs too long with the builtin ``TimeoutError``, on
    time, and the other items complete."""
    differs("timeout")
    began = time.monotonic()
    out = pmap(nap, [0.01, 3.0, 0.01], timeout=0.5, on_error="return", **backend_options)
    assert time.monotonic() - began < 2.5
    assert out[0] == out[2] == 0.01
    assert type(out[1]) is TimeoutError
    assert "the item at index 1 ran longer than the timeout of 0.5 s" in str(out[1])
    assert backend.timeout_stops in str(out[1])  # killed, or abandoned where it cannot be
    with pytest.raises(TimeoutError, match="index 1") as caught:
        pmap(nap, [0.01, 3.0, 0.01], timeout=0.5, **backend_options)
    assert type(caught.value) is TimeoutError


@pytest.mark.slow  # seconds of overruns per backend: the default suite keeps its time
def test_retries_count_overruns_and_raises_alike(
    backend_options: dict[str, Any], differs: Callable[[str], None], tmp_path: Path
) -> None:
    """retries=1: two attempts in all, whichever of them raised or ran too long."""
    differs("timeout")
    first, second = tmp_path / "overrun-first", tmp_path / "raise-first"
    options: dict[str, Any] = {"timeout": 0.5, "retries": 1, "on_error": "return"}
    out = pmap(overrun_then_raise, [str(first)], **options, **backend_options)
    assert isinstance(out[0], ValueError) and "attempt 2" in str(out[0])
    out = pmap(raise_then_overrun, [str(second)], **options, **backend_options)
    assert isinstance(out[0], TimeoutError)
    time.sleep(2.0)  # abandoned attempts have ended: nothing runs a third
    assert first.read_text() == second.read_text() == "xx"


def test_usable_after_errors(backend_options: dict[str, Any]) -> None:
    """A failed map leaves the backend (a warm pool, an engine) ready for the next one."""
    for _ in range(3):
        with pytest.raises(ValueError):
            pmap(fail_on_three, range(10), **backend_options)
        assert pmap(square, range(10), **backend_options) == [x * x for x in range(10)]
