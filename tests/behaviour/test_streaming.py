"""``imap`` as a stream: it reads its input lazily, and leaving it early stops the work."""

from __future__ import annotations

import functools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from parallelize import imap, pmap
from support import live_children, script_env

from .conftest import Backend
from .workloads import Counted, broken_input, kilobytes, logged_nap, nap, naturals, square

pytestmark = pytest.mark.timeout(60)


def test_imap_reads_an_endless_input_lazily(backend_options: dict[str, Any]) -> None:
    """An endless generator works, and the input is read only a bounded way ahead of the
    consumer: nothing more is read while the consumer does not ask."""
    out = []
    for value in imap(square, naturals(), **backend_options):
        out.append(value)
        if len(out) == 500:
            break
    assert out == [x * x for x in range(500)]

    source = Counted()
    stream = imap(square, source, chunksize=10, **backend_options)
    assert source.read == 0  # nothing is read before the first result is asked for
    assert next(stream) == 0
    assert source.read < 1000
    assert [next(stream) for _ in range(4)] == [1, 4, 9, 16]
    read = source.read
    time.sleep(0.2)  # nothing reads ahead while the consumer does not ask for more
    assert source.read == read
    # Ahead of the consumer: a few chunks per worker, each of at most ~0.1 s of work.
    assert read < 1_000_000
    stream.close()


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_holds_a_bounded_number_of_items_ahead(
    backend_options: dict[str, Any], ordered: bool
) -> None:
    """What a stream reads ahead of its consumer is bounded: by default a few chunks per worker
    (not the hundreds of thousands that chunks grown for tiny items would hold), and exactly
    ``max_ahead`` items when it is given."""
    source = Counted()
    stream = imap(abs, source, ordered=ordered, **backend_options)
    consumed = sum(1 for _ in zip(range(1001), stream, strict=False))
    # Four chunks of at most 4096 items per worker, on two workers (or task slots).
    assert source.read <= consumed + 2 * 4 * 4096 + 1, source.read
    stream.close()

    source = Counted()
    stream = imap(abs, source, ordered=ordered, max_ahead=50, **backend_options)
    for consumed, _ in enumerate(stream, start=1):
        # Items in flight or finished, plus the one item read to tell that the input goes on.
        assert source.read <= consumed + 50 + 1, (consumed, source.read)
        if consumed == 1001:
            break
    stream.close()


def test_imap_bounds_the_bytes_of_results_held_ahead(backend_options: dict[str, Any]) -> None:
    """Big results shrink the bound: the finished results held ahead of the consumer stay
    within ``max_ahead_bytes``, learnt from the first results' size."""
    source = Counted()
    stream = imap(kilobytes, source, max_ahead_bytes=200_000, **backend_options)
    ahead = []
    for consumed, value in enumerate(stream, start=1):
        assert len(value) == 10_000
        ahead.append(source.read - consumed)
        if consumed == 500:
            break
    stream.close()
    # 200 kB holds 20 results of 10 kB. The first chunks go out before any result has been
    # measured: from the 100th result on, the bound holds.
    assert max(ahead[100:]) <= 20 + 1, ahead


MEMORY_SCRIPT = """
import itertools, time
from parallelize import imap, pmap

def status_mb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

def kilobytes(x):
    return x.to_bytes(8, "little") * 1250

if __name__ == "__main__":
    options = {options!r}
    pmap(kilobytes, range(4), **options)  # workers (or the engine's client) warm
    before = peak = status_mb("RssAnon")
    high_water = status_mb("VmHWM")
    for n, value in enumerate(imap(kilobytes, itertools.count(), **options)):
        if n % 250 == 0:
            peak = max(peak, status_mb("RssAnon"))
        if n % 1000 == 0:
            time.sleep(0.01)  # a consumer slower than the workers
        if n == 30_000:
            break
    print(peak - before, status_mb("VmHWM") - high_water)
"""


@pytest.mark.timeout(120)
def test_a_slow_consumer_keeps_the_callers_memory_flat(
    backend: Backend, script_options: dict[str, Any], tmp_path: Path
) -> None:
    """Streaming 300 MB of 10 kB results through a slow consumer raises the caller's peak RSS
    and its private memory (its anonymous RSS, sampled as it consumes) by no more than the
    default bound on results held ahead (32 MiB) and some slack, not by the whole stream. (On
    Ray, the private memory only: Ray maps its object store into the caller, and the store's
    pages that the caller read count in its RSS, up to the store's own size.)"""
    (tmp_path / "script.py").write_text(MEMORY_SCRIPT.format(options=script_options))
    env = script_env()
    done = subprocess.run(
        [sys.executable, "script.py"],
        capture_output=True, text=True, timeout=100, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    private, peak = map(float, done.stdout.split()[-2:])
    assert private < 32 + 32, f"the caller's private memory grew by {private:.0f} MB"
    if backend.id != "ray":
        assert peak < 32 + 32, f"the caller's peak RSS grew by {peak:.0f} MB"


def _settle(measure: Callable[[], int], *, quiet: float = 1.0, limit: float = 20.0) -> int:
    """``measure()`` once it has not changed for ``quiet`` seconds (or after ``limit``)."""
    deadline = time.monotonic() + limit
    last, since = measure(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = measure()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def _at_most(measure: Callable[[], int], bound: int, limit: float = 10.0) -> int:
    """``measure()`` as soon as it is at most ``bound`` (or its value after ``limit``)."""
    deadline = time.monotonic() + limit
    while (value := measure()) > bound and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.mark.timeout(90)
def test_breaking_out_of_imap_stops_the_work(
    backend: Backend, backend_options: dict[str, Any], tmp_path: Path
) -> None:
    """``break`` in an ``imap`` loop cancels the queued items and stops the running ones (or,
    where they cannot be stopped, lets them end): no work goes on behind the caller's back, no
    worker is left over, and the next map runs at once."""
    items = 60  # of 0.2 s each: 6 s of work on 2 workers if nothing stopped them
    pmap(nap, [0.2] * 4, chunksize=1, **backend_options)  # a warm pool, every worker started
    children, threads = live_children(), threading.active_count()

    log = tmp_path / "started"
    log.touch()
    for _ in imap(functools.partial(logged_nap, str(log)), [0.2] * items, chunksize=1,
                  **backend_options):
        break
    started = _settle(lambda: len(log.read_text()))
    assert started < items / 2, f"{started} of {items} items started after the break"

    began = time.monotonic()
    assert pmap(square, range(10), **backend_options) == [x * x for x in range(10)]
    assert time.monotonic() - began < 10
    if backend.child_processes:  # no worker beyond the warm pool's
        assert _at_most(live_children, children) <= children
    if backend.in_caller:  # no thread left running an item
        assert _at_most(threading.active_count, threads) <= threads


@pytest.mark.parametrize("ordered", [True, False])
def test_an_input_that_raises_loses_no_result(
    backend_options: dict[str, Any], ordered: bool
) -> None:
    """Like the builtin ``map``: every result of an item read before the input raised is
    delivered (in order, when ordered), then the input's own exception, with a note saying where
    it came from; ``pmap`` raises it once the map has stopped."""
    out = []
    with pytest.raises(LookupError, match="broke after 50 items") as raised:
        for value in imap(abs, broken_input(50), ordered=ordered, **backend_options):
            out.append(value)
    assert (out if ordered else sorted(out)) == list(range(50))
    assert any("input of the map at position 50" in note for note in raised.value.__notes__)
    with pytest.raises(LookupError, match="broke after 7 items"):
        pmap(abs, broken_input(7), ordered=ordered, **backend_options)
    assert pmap(abs, range(3), **backend_options) == [0, 1, 2]  # and the next map runs
