"""The behaviour suite every backend must pass, run here on ``backend="thread"``.

:class:`Behaviour` is written once; ``test_dask.py`` and ``test_ray.py`` run it on their engines by
subclassing it with other ``options``. The user's function travels by value, so the functions here
run on engine workers that cannot import this module.
"""

from __future__ import annotations

import functools
import itertools
import re
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from parallelize import SharedCounter, imap, parallel, pmap, shared_counter

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


TAG: str | None = None  # set by an initializer in each worker


def set_tag(tag: str) -> None:
    global TAG
    TAG = tag


def read_tag(_: object) -> str | None:
    return TAG


def refuse_to_start() -> None:
    raise LookupError("no database")


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _attempt(log: str) -> int:
    """This call's attempt number, counted in a file that every process and thread can see."""
    with open(log, "a") as f:
        f.write("x")
    with open(log) as f:
        return len(f.read())


def overrun_then_raise(log: str) -> int:
    """Its first attempt runs past any short timeout; every later one raises."""
    attempt = _attempt(log)
    if attempt == 1:
        time.sleep(2.0)
        return 0
    raise ValueError(f"attempt {attempt}")


def raise_then_overrun(log: str) -> int:
    """Its first attempt raises; every later one runs past any short timeout."""
    attempt = _attempt(log)
    if attempt == 1:
        raise ValueError(f"attempt {attempt}")
    time.sleep(2.0)
    return 0


def overrun_and_raise(log: str) -> int:
    """Every attempt runs past any short timeout, then raises."""
    attempt = _attempt(log)
    time.sleep(1.5)
    raise ValueError(f"attempt {attempt}")


def make_flaky(fails: int) -> Callable[[int], int]:
    """A function that raises OSError for each item's first ``fails`` calls, in one worker.

    Each one pickles differently (``tag``), so a warm worker never reuses an earlier one's counts.
    """
    calls: dict[int, int] = {}
    tag = uuid.uuid4().hex

    def flaky(x: int) -> int:
        assert tag
        calls[x] = calls.get(x, 0) + 1
        if calls[x] <= fails:
            raise OSError(f"transient failure {calls[x]} of item {x}")
        return x

    return flaky


@parallel
def weighted(item: float, *, weight: float = 1.0, offset: float = 0.0) -> float:
    return item * weight + offset


def bump(counter: SharedCounter, times: int) -> int:
    for _ in range(times):
        counter.increment()
    return times


def bump_locked(counter: SharedCounter, times: int) -> None:
    for _ in range(times):
        with counter.get_lock():  # the seed idiom from the multiprocessing docs
            counter.value += 1


@parallel
def tally(times: int, *, by: SharedCounter) -> None:
    for _ in range(times):
        by.increment()


def try_lock(counter: SharedCounter) -> tuple[bool, bool]:
    """Whether the counter's lock could be had at once, and within 0.2 s (released again)."""
    lock = counter.get_lock()
    results = []
    for got in (lock.acquire(block=False), lock.acquire(timeout=0.2)):
        if got:
            lock.release()
        results.append(got)
    return results[0], results[1]


class Counted:
    """An endless input that counts how many items were read from it."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.read = i + 1
            yield i


class Behaviour:
    """The same semantics on every backend; subclasses set ``options`` (``backend``, ...)."""

    options: ClassVar[dict[str, Any]] = {}

    def test_results_in_input_order(self) -> None:
        assert pmap(square, range(200), **self.options) == [x * x for x in range(200)]

    def test_unordered_gives_every_result(self) -> None:
        out = pmap(square, range(200), ordered=False, **self.options)
        assert sorted(out) == [x * x for x in range(200)]
        streamed = list(imap(square, range(50), ordered=False, **self.options))
        assert sorted(streamed) == [x * x for x in range(50)]

    def test_several_iterables_zip_to_the_shortest(self) -> None:
        assert pmap(add, range(5), range(10, 20), **self.options) == [10, 12, 14, 16, 18]
        assert pmap(add, [1], [2], [3], **self.options) == [6]

    def test_empty_input(self) -> None:
        assert pmap(square, [], **self.options) == []
        assert list(imap(square, iter([]), **self.options)) == []

    def test_keyword_arguments_of_a_decorated_function(self) -> None:
        fn = weighted.options(**self.options)
        assert fn([1.0, 2.0], weight=3.0, offset=1.0) == [4.0, 7.0]
        assert list(fn.imap(iter([1.0, 2.0]), weight=2.0)) == [2.0, 4.0]

    def test_lambdas_closures_and_partials(self) -> None:
        base = 10
        assert pmap(lambda x: x + base, range(4), **self.options) == [10, 11, 12, 13]
        assert pmap(functools.partial(add, z=100), [1], [2], **self.options) == [103]

    def test_initializer_runs_before_the_items(self) -> None:
        out = pmap(read_tag, range(6), initializer=set_tag, initargs=("ready",), **self.options)
        assert out == ["ready"] * 6

    def test_each_map_sees_its_own_initializer(self) -> None:
        for tag in ("a", "b", "a"):
            out = pmap(read_tag, range(4), initializer=set_tag, initargs=(tag,), **self.options)
            assert out == [tag] * 4

    def test_a_failing_initializer_raises_in_the_caller(self) -> None:
        with pytest.raises(LookupError, match="no database"):
            pmap(square, range(4), initializer=refuse_to_start, **self.options)
        assert pmap(square, range(3), **self.options) == [0, 1, 4]

    def test_generator_input_without_length(self) -> None:
        out = pmap(square, (x for x in range(300)), **self.options)
        assert out == [x * x for x in range(300)]

    def test_progress_bar_counts_items(self, capfd: pytest.CaptureFixture[str]) -> None:
        pmap(square, range(120), progress="squaring", **self.options)
        err = capfd.readouterr().err
        assert "squaring" in err
        assert "120/120" in err

    def test_imap_is_lazy_on_an_endless_input(self) -> None:
        source = Counted()
        stream = imap(square, source, **self.options)
        assert [next(stream) for _ in range(5)] == [0, 1, 4, 9, 16]
        read = source.read
        time.sleep(0.2)  # nothing reads ahead while the consumer does not ask for more
        assert source.read == read
        # Ahead of the consumer: a few chunks per worker, each of at most ~0.1 s of work.
        assert read < 1_000_000
        stream.close()

    def test_exception_keeps_its_type_traceback_and_note(self) -> None:
        with pytest.raises(ValueError, match="bad item 3") as info:
            pmap(fail_on_three, range(8), **self.options)
        error = info.value
        assert any("index 3" in note for note in getattr(error, "__notes__", []))
        # The worker's traceback is there: as the cause (text), or as the exception's own frames.
        shown = "".join(traceback.format_exception(error))
        assert "fail_on_three" in shown

    def test_imap_raises_at_the_failing_item(self) -> None:
        stream = imap(fail_on_three, range(8), **self.options)
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 3"):
            next(stream)

    def test_on_error_return_puts_the_exception_in_place(self) -> None:
        out = pmap(fail_on_three, range(6), on_error="return", **self.options)
        assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
        assert isinstance(out[3], ValueError)

    def test_retries_run_a_failing_item_again(self) -> None:
        items = list(range(6))
        assert pmap(make_flaky(2), items, retries=2, **self.options) == items
        with pytest.raises(OSError, match="transient failure 2"):
            pmap(make_flaky(2), items, retries=1, **self.options)

    def test_timeout_fails_only_the_slow_item(self) -> None:
        began = time.monotonic()
        out = pmap(nap, [0.01, 3.0, 0.01], timeout=0.5, on_error="return", **self.options)
        assert time.monotonic() - began < 2.5
        assert out[0] == out[2] == 0.01
        assert isinstance(out[1], TimeoutError)
        assert "index 1" in str(out[1])
        assert "abandoned" in str(out[1])  # a thread cannot be stopped, and the message says so

    def test_retries_count_overruns_and_raises_alike(self, tmp_path: Path) -> None:
        """retries=1: two attempts in all, whichever of them raised or ran too long."""
        first, second = tmp_path / "overrun-first", tmp_path / "raise-first"
        out = pmap(overrun_then_raise, [str(first)], timeout=0.5, retries=1, on_error="return",
                   **self.options)
        assert isinstance(out[0], ValueError) and "attempt 2" in str(out[0])
        out = pmap(raise_then_overrun, [str(second)], timeout=0.5, retries=1, on_error="return",
                   **self.options)
        assert isinstance(out[0], TimeoutError)
        time.sleep(2.0)  # abandoned attempts have ended: nothing runs a third
        assert first.read_text() == second.read_text() == "xx"

    def test_usable_after_errors(self) -> None:
        with pytest.raises(ValueError):
            pmap(fail_on_three, range(8), **self.options)
        assert pmap(square, range(10), **self.options) == [x * x for x in range(10)]


class CounterBehaviour:
    """``shared_counter`` in the tasks of a backend: exact totals, however the counter travels.

    On the engines the counter moves into the engine's own shared state when a map first pickles
    it; ``storage`` names the storage it must then be in (None: it stays where it is).
    """

    options: ClassVar[dict[str, Any]] = {}
    storage: ClassVar[str | None] = None
    TASKS = 6  # more tasks than workers, one chunk each, so increments interleave
    TIMES = 40

    def test_exact_totals_as_argument_keyword_and_closure(self) -> None:
        counter = shared_counter(0)
        tasks, times = [self.TIMES] * self.TASKS, self.TIMES * self.TASKS
        assert pmap(bump, [counter] * self.TASKS, tasks, chunksize=1, **self.options) == tasks
        assert counter.value == times
        if self.storage is not None:
            assert type(counter._storage).__name__ == self.storage  # type: ignore[attr-defined]
        moved = counter._storage  # type: ignore[attr-defined]
        tally.options(chunksize=1, **self.options)(tasks, by=counter)  # a keyword argument
        assert counter.value == 2 * times
        pmap(lambda n: bump(counter, n), tasks, chunksize=1, **self.options)  # a closure
        assert counter.value == 3 * times
        assert counter._storage is moved  # type: ignore[attr-defined] # it moves only once
        assert counter.increment() == 3 * times + 1  # the caller's counter is the tasks' one

    def test_seed_idiom_under_get_lock(self) -> None:
        counter = shared_counter(5)
        pmap(bump_locked, [counter] * self.TASKS, [self.TIMES] * self.TASKS, chunksize=1,
             **self.options)
        assert counter.value == 5 + self.TASKS * self.TIMES
        with counter.get_lock():
            counter.value += 1
            with counter.get_lock():  # recursive
                counter.value += 1
        assert counter.value == 7 + self.TASKS * self.TIMES

    def test_lock_errors_and_range_after_the_move(self) -> None:
        counter = shared_counter(0)
        pmap(bump, [counter], [1], **self.options)
        with counter.get_lock():
            assert pmap(try_lock, [counter], **self.options) == [(False, False)]
        assert pmap(try_lock, [counter], **self.options) == [(True, True)]
        with pytest.raises(RuntimeError):
            counter.get_lock().release()
        counter.value = 2**63 - 1
        with pytest.raises(OverflowError):
            counter.increment()
        assert counter.value == 2**63 - 1


class TestThreadCounter(CounterBehaviour):
    options: ClassVar[dict[str, Any]] = {"backend": "thread", "workers": 4}


class TestThreadBehaviour(Behaviour):
    options: ClassVar[dict[str, Any]] = {"backend": "thread", "workers": 4}


def test_an_abandoned_thread_spends_no_more_retries(tmp_path: Path) -> None:
    """A timed-out item's thread cannot be killed: when its attempt finally raises, it must not
    retry on its own while the dispatcher runs the item's next attempt elsewhere."""
    log = tmp_path / "attempts"
    out = pmap(overrun_and_raise, [str(log)], backend="thread", timeout=0.3, retries=1,
               on_error="return")
    assert isinstance(out[0], TimeoutError)
    time.sleep(3.5)  # both abandoned attempts have raised by now
    assert log.read_text() == "xx"


def test_threads_share_the_callers_objects() -> None:
    """Items and results are not pickled: the very same objects cross."""
    items = [object() for _ in range(20)]
    assert all(a is b for a, b in zip(pmap(lambda o: o, items, backend="thread"), items,
                                     strict=True))


def test_threads_overlap_blocking_calls() -> None:
    """The point of threads: waiting items (I/O, sleep) overlap even under the GIL."""
    began = time.monotonic()
    pmap(nap, [0.2] * 8, backend="thread", workers=8)
    assert time.monotonic() - began < 1.0


# -- engines load only when used (no engine needs to be installed for these) --------------------


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_no_engine_is_imported_by_local_backends() -> None:
    result = _run(
        "import sys\n"
        "from parallelize import pmap\n"
        "pmap(abs, [-1], backend='thread'); pmap(abs, [-1], backend='serial')\n"
        "print(sorted({'distributed', 'dask', 'ray'} & set(sys.modules)))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("backend", "module"), [("dask", "distributed"), ("ray", "ray")])
def test_missing_engine_names_the_extra(backend: str, module: str) -> None:
    result = _run(
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if not installed\n"
        "from parallelize import pmap\n"
        "try:\n"
        f"    pmap(abs, [-1], backend={backend!r})\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(rf'pip install "parallelize\[{backend}\]"', result.stdout), result.stdout
