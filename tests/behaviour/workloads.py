"""The functions the behaviour cells map: module level, so every worker can import them by name.

Whatever a cell must observe across processes (attempts, started items, which worker ran an
initializer) is written to files under the test's ``tmp_path``, which every process can read.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from parallelize import SharedCounter, parallel


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def kilobytes(x: int, size: int = 10_000) -> bytes:
    """A result of ``size`` bytes, a new object each time."""
    return x.to_bytes(8, "little") * (size // 8)


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def logged_nap(log: str, seconds: float) -> float:
    """Notes in ``log`` that it started, then sleeps."""
    with open(log, "a") as f:
        f.write(".")
    return nap(seconds)


@parallel
def weighted(item: float, *, weight: float = 1.0, offset: float = 0.0) -> float:
    return item * weight + offset


# -- attempts, counted in files --


def attempt(log: str) -> int:
    """This call's attempt number, counted in a file that every process and thread can see."""
    with open(log, "a") as f:
        f.write("x")
    with open(log) as f:
        return len(f.read())


def flaky(folder: str, fails: int, x: int) -> int:
    """Raises OSError on each item's first ``fails`` attempts, counted in ``folder/attempts-x``."""
    tries = attempt(os.path.join(folder, f"attempts-{x}"))
    if tries <= fails:
        raise OSError(f"transient failure {tries} of item {x}")
    return x


def overrun_then_raise(log: str) -> int:
    """Its first attempt runs past any short timeout; every later one raises."""
    tries = attempt(log)
    if tries == 1:
        time.sleep(2.0)
        return 0
    raise ValueError(f"attempt {tries}")


def raise_then_overrun(log: str) -> int:
    """Its first attempt raises; every later one runs past any short timeout."""
    tries = attempt(log)
    if tries == 1:
        raise ValueError(f"attempt {tries}")
    time.sleep(2.0)
    return 0


# -- initializers --

TAG: str | None = None  # set by an initializer in each worker


def set_tag(tag: str) -> None:
    global TAG
    TAG = tag


def read_tag(_: object) -> str | None:
    return TAG


def refuse_to_start() -> None:
    raise LookupError("no database")


def whoami() -> tuple[int, int]:
    """The process and thread running this call."""
    return os.getpid(), threading.get_ident()


def record_worker(log: str) -> None:
    """An initializer that notes in ``log`` which process and thread ran it."""
    pid, thread = whoami()
    with open(log, "a") as f:
        f.write(f"{pid} {thread}\n")


def worker_of(seconds: float) -> tuple[int, int]:
    """The process and thread that ran this item, after ``seconds`` of work."""
    time.sleep(seconds)
    return whoami()


# -- shared counters --


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


# -- inputs --


class Counted:
    """An endless input that counts how many items were read from it."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.read = i + 1
            yield i


def naturals() -> Iterator[int]:
    yield from itertools.count()


def broken_input(good: int) -> Iterator[int]:
    """``good`` items, then the input itself raises."""
    yield from range(good)
    raise LookupError(f"the input broke after {good} items")


def sleep_forever(release: str) -> None:
    """An initializer that never returns on its own: only once the file ``release`` exists (a
    test's cleanup), so that no abandoned thread or interpreter outlives its test."""
    while not os.path.exists(release):
        time.sleep(0.05)


# -- methods --


class Scaler:
    """``@parallel`` on methods of every kind; counts, in each process, how often an instance of
    it was pickled."""

    pickled = 0

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.seen: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        type(self).pickled += 1
        return self.__dict__

    @parallel
    def scale(self, x: int, *, offset: int = 0) -> int:
        return x * self.factor + offset

    @parallel
    def combine(self, x: int, y: int) -> int:
        return self.factor * x + y

    @parallel
    def count(self, x: int) -> int:
        """How many items this copy of the instance has seen, this one included."""
        self.seen.append(x)
        return len(self.seen)

    @classmethod
    @parallel
    def tag(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @parallel
    @classmethod
    def label(cls, x: int, *, sep: str = ":") -> str:
        return f"{cls.__name__}{sep}{x}"

    @staticmethod
    @parallel
    def double(x: int) -> int:
        return 2 * x

    @parallel
    @staticmethod
    def triple(x: int) -> int:
        return 3 * x


class SubScaler(Scaler):
    pass


WORKER_LOGGER = "parallelize.tests.worker"


def chatty(x: int) -> int:
    """Print a line to stdout and one to stderr, and log a record with an ``extra`` field."""
    import logging
    import sys

    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    logging.getLogger(WORKER_LOGGER).info("item %d", x, extra={"tag": f"t{x}"})
    logging.getLogger(WORKER_LOGGER).debug("debug %d", x)
    return x


def log_failure(x: int) -> int:
    """Log an exception with its traceback."""
    import logging

    try:
        raise KeyError(f"missing {x}")
    except KeyError:
        logging.getLogger(WORKER_LOGGER).exception("lookup failed for %d", x)
    return x


def half_lines(x: int) -> int:
    """Write a line in two pieces, then a partial line that the item never ends."""
    import sys

    sys.stdout.write(f"start {x} ")
    sys.stdout.write(f"end {x}\n")
    sys.stdout.write(f"partial {x}")
    return x


def last_words(x: int) -> int:
    """Print a line, then die at once (no cleanup, no flush of anything)."""
    print(f"last words of {x}", flush=False)
    if x == 2:
        os._exit(3)
    return x


def picky(folder: str, x: int) -> int:
    """Item 1 raises OSError on its first attempt; item 2 always raises ValueError. Every attempt
    is noted in ``folder/attempts-x`` with its time."""
    with open(os.path.join(folder, f"attempts-{x}"), "a") as f:
        f.write(f"{time.monotonic()}\n")
    with open(os.path.join(folder, f"attempts-{x}")) as f:
        tries = len(f.read().split())
    if x == 1 and tries == 1:
        raise OSError("transient")
    if x == 2:
        raise ValueError("bad data")
    return x


def die_once(folder: str, x: int) -> int:
    """Item 1's first attempt kills its worker process."""
    tries = attempt(os.path.join(folder, f"attempts-{x}"))
    if x == 1 and tries == 1:
        os._exit(7)
    return x


_HOARD: list[bytearray] = []


def resident(_: object) -> int:
    """The worker's resident memory, in bytes."""
    from parallelize._worker.memory import resident_bytes

    return resident_bytes()


def hoard(folder: str, x: int) -> int:
    """Keep 16 MB more for good (a leak), note the attempt; the worker's pid."""
    attempt(os.path.join(folder, f"attempts-{x}"))
    _HOARD.append(bytearray(16 << 20))
    return os.getpid()


def overrun_once(log: str) -> int:
    """Its first attempt runs past any short timeout; every later one returns at once."""
    if attempt(log) == 1:
        time.sleep(1.0)
    return 1


class TwoArgError(Exception):
    """An exception that pickles in a worker but cannot be rebuilt from its pickle."""

    def __init__(self, a: int, b: int):
        super().__init__(f"{a}/{b}")


def log_odd_extra(x: int) -> int:
    """Log with ``extra`` values that are plain data, and one that is not."""
    import logging

    extra = {"ctx": {"user": x, "tags": ["a", "b"]}, "odd": TwoArgError(x, 2)}
    logging.getLogger(WORKER_LOGGER).warning("odd %d", x, extra=extra)
    return x
