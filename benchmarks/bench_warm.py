"""Warm when the program is not polite: maps that alternate their configuration, and maps run
inside an ``imap`` loop, against the plain warm call.

Run from the repository root: ``python benchmarks/bench_warm.py [--quick]``. Prints a Markdown
table (median milliseconds per 2-item map, and its ratio to the plain warm call) and writes it,
with the machine and the command, to ``benchmarks/results/warm.json``.

* plain: the same 2-item map again and again (the warm pool's best case);
* ``workers=`` alternating between 2 and 1, ``start_method=`` between forkserver and spawn,
  ``initializer=`` between two functions, ``max_tasks_per_worker=`` between None and 1000;
* nested: a 2-item ``pmap`` for each result of a suspended ``imap`` over 200 items.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import parallelize
from benchmarks.report import save_record
from benchmarks.tasks import spin, square

RESULTS = Path(__file__).resolve().parent / "results" / "warm.json"
ITEMS = [1, 2]


def _first() -> None:
    """One of two initializers that do nothing."""


def _second() -> None:
    """The other one."""


def _per_call(calls: int, call: Callable[[int], object]) -> list[float]:
    """Milliseconds of each of ``calls`` calls (``call(n)`` for the n-th)."""
    times = []
    for n in range(calls):
        began = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - began) * 1e3)
    return times


def alternating(option: str, values: tuple[Any, Any], calls: int) -> list[float]:
    return _per_call(calls, lambda n: parallelize.pmap(square, ITEMS, **{option: values[n % 2]}))


def nested(calls: int) -> list[float]:
    times: list[float] = []
    for _ in parallelize.imap(square, range(calls), workers=2):
        began = time.perf_counter()
        parallelize.pmap(square, ITEMS)
        times.append((time.perf_counter() - began) * 1e3)
    return times


def measure(calls: int) -> dict[str, list[float]]:
    parallelize.pmap(spin, [1] * 10)  # warm
    return {
        "plain warm call": _per_call(calls, lambda n: parallelize.pmap(square, ITEMS)),
        "workers= alternating 2, 1": alternating("workers", (2, 1), calls),
        "start_method= alternating forkserver, spawn": alternating(
            "start_method", ("forkserver", "spawn"), calls
        ),
        "initializer= alternating two functions": alternating(
            "initializer", (_first, _second), calls
        ),
        "max_tasks_per_worker= alternating None, 1000": alternating(
            "max_tasks_per_worker", (None, 1000), calls
        ),
        "pmap inside an imap loop": nested(calls),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 calls each instead of 200")
    args = parser.parse_args(argv)
    samples = measure(40 if args.quick else 200)
    plain = statistics.median(samples["plain warm call"])
    lines = ["| pattern | ms per map (median) | x plain |", "|---|---|---|"]
    table: dict[str, Any] = {}
    for name, times in samples.items():
        median = statistics.median(times)
        table[name] = {"median_ms": median, "ratio": median / plain, "times_ms": times}
        lines.append(f"| {name} | {median:.3g} | {median / plain:.2f} |")
    print("\n".join(lines))
    save_record(RESULTS, "benchmarks/bench_warm.py", 2, table)


if __name__ == "__main__":
    main()
