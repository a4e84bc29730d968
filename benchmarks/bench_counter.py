"""What one atomic increment costs inside a worker: ``shared_counter`` beside the stdlib answers.

Run from the repository root: ``python benchmarks/bench_counter.py [--quick]``. Prints a small
Markdown table (nanoseconds per increment, best of several runs, and the ratio to ours) and
writes the numbers, with the machine and the command, to ``benchmarks/results/counter.json``.

Compared, each incremented by a worker process that received it the way it allows:

* ``shared_counter``: ``c.increment()``; the counter reached the worker by pickling.
* ``multiprocessing.Value("q")`` with its lock: ``with v.get_lock(): v.value += 1``; the value
  reached the worker by inheritance, the only way it can.
* ``Manager().Value`` with a ``Manager().Lock()``: ``with lock: proxy.value += 1``, four round
  trips to the manager process; without the lock the update would not be atomic.

Uncontended means one worker; contended means two or four workers on the same counter (the
machine has two cores), reported as wall time per increment. Reads of ``.value`` (ours, and a
synchronized ``multiprocessing.Value``'s, which takes its lock) are timed in one worker.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelize import shared_counter

RESULTS = Path(__file__).resolve().parent / "results" / "counter.json"
# Increments per run: enough for ~0.2 s per run of the fast kinds; the manager is ~100x slower.
FAST_RUNS = 200_000
MANAGER_RUNS = 2_000
# Runs per measurement. The best is reported, as timeit does: on a shared machine the slower runs
# measure the neighbours; the median is kept in the JSON too.
REPEATS = 7


def _ours(counter: Any, lock: Any) -> Callable[[], object]:
    return counter.increment


def _mp_value(value: Any, lock: Any) -> Callable[[], object]:
    def increment() -> None:
        with value.get_lock():
            value.value += 1

    return increment


def _manager(proxy: Any, lock: Any) -> Callable[[], object]:
    def increment() -> None:
        with lock:
            proxy.value += 1

    return increment


def _read(counter: Any, lock: Any) -> Callable[[], object]:
    return lambda: counter.value


KINDS: dict[str, Callable[[Any, Any], Callable[[], object]]] = {
    "shared_counter": _ours,
    "multiprocessing.Value + lock": _mp_value,
    "Manager().Value + Manager().Lock()": _manager,
    "shared_counter .value read": _read,
    "multiprocessing.Value .value read": _read,  # a synchronized Value reads under its lock
}


def _run(job: tuple[str, Any, Any, int], start: Any, out: Any) -> None:
    """In a worker: time ``count`` increments after everyone is ready."""
    kind, target, lock, count = job
    increment = KINDS[kind](target, lock)
    for _ in range(min(count, 1000)):  # warm up: first use opens the file, imports, caches
        increment()
    start.wait()
    began = time.perf_counter_ns()
    for _ in range(count):
        increment()
    out.put(time.perf_counter_ns() - began)


def measure(kind: str, target: Any, lock: Any, count: int, workers: int) -> float:
    """Nanoseconds of wall time per increment, with ``workers`` processes incrementing at once."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(workers + 1), context.Queue()
    processes = [
        context.Process(target=_run, args=((kind, target, lock, count), start, out))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    start.wait()
    began = time.perf_counter_ns()
    spans = [out.get() for _ in processes]
    wall = time.perf_counter_ns() - began
    for process in processes:
        process.join()
    span = max(*spans, wall) if workers > 1 else spans[0]
    return span / (count * workers)


def syscall_ns() -> float:
    """The cost of a trivial system call here: our increment makes two (flock, unlock)."""
    count = 100_000
    began = time.perf_counter_ns()
    for _ in range(count):
        os.getppid()
    return (time.perf_counter_ns() - began) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer increments, 3 repeats")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the numbers")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    repeats = 3 if args.quick else REPEATS

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        targets = {
            "shared_counter": (shared_counter(0), None),
            "multiprocessing.Value + lock": (context.Value("q", 0, lock=True), None),
            "Manager().Value + Manager().Lock()": (manager.Value("q", 0), manager.Lock()),
            "shared_counter .value read": (shared_counter(0), None),
            "multiprocessing.Value .value read": (context.Value("q", 0, lock=True), None),
        }
        rows: list[dict[str, Any]] = []
        for workers in (1, 2, 4):
            for kind, (target, lock) in targets.items():
                if kind.endswith("read") and workers > 1:
                    continue
                count = (MANAGER_RUNS if "Manager" in kind else FAST_RUNS) // scale
                runs = [measure(kind, target, lock, count, workers) for _ in range(repeats)]
                rows.append(
                    {
                        "kind": kind,
                        "workers": workers,
                        "ns_per_increment": min(runs),
                        "median_ns": statistics.median(runs),
                        "runs": runs,
                    }
                )

    ours = {
        (row["kind"].endswith("read"), row["workers"]): row["ns_per_increment"]
        for row in rows
        if row["kind"].startswith("shared_counter")
    }
    print("| counter | workers | ns per operation (best) | median | ratio to shared_counter |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        row["ratio_to_ours"] = (
            row["ns_per_increment"] / ours[(row["kind"].endswith("read"), row["workers"])]
        )
        print(
            f"| {row['kind']} | {row['workers']} | {row['ns_per_increment']:,.0f} "
            f"| {row['median_ns']:,.0f} | {row['ratio_to_ours']:.2f} |"
        )
    syscall = syscall_ns()
    print(f"\none system call (getppid) here: {syscall:,.0f} ns")

    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
            "syscall_ns": syscall,
        },
        "increments_per_run": {"fast": FAST_RUNS // scale, "manager": MANAGER_RUNS // scale},
        "repeats": repeats,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")



if __name__ == "__main__":
    main()
