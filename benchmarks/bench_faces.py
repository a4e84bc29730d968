"""The drop-in faces against the classes they replace, in one run: ``Pool`` and ``Executor``.

Run from the repository root: ``python benchmarks/bench_faces.py [--quick]``. Prints a Markdown
table (median of the rounds, and the ratio: how many times better parallelize does, above 1 a
win) and writes it, with the machine and the command, to ``benchmarks/results/faces.json``.

Each pool is warm (it has run the function once) and is used as its users write it:

* ``Pool.map`` and ``Pool.imap_unordered`` of ``x*x`` over 200,000 ints, with ``chunksize=1000``
  on both sides and with each one's default;
* ``Executor.map`` of ``x*x`` at default arguments (``ProcessPoolExecutor`` sends one item per
  message: it runs 20,000 ints, and the rate is compared);
* one ``submit(...).result()`` round trip.

Rounds go round robin between the tools, so a slow moment of the machine hits both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import parallelize
from benchmarks.report import save_record
from benchmarks.tasks import square

RESULTS = Path(__file__).resolve().parent / "results" / "faces.json"
ITEMS = 200_000
EXECUTOR_STDLIB_ITEMS = 20_000  # one message per item: 10x fewer, the rate is what counts
ROUND_TRIPS = 200


def _rate(call: Callable[[], object], items: int) -> float:
    began = time.perf_counter()
    call()
    return items / (time.perf_counter() - began)


def _round_trip_ms(executor: concurrent.futures.Executor) -> float:
    began = time.perf_counter()
    for i in range(ROUND_TRIPS):
        executor.submit(square, i).result()
    return (time.perf_counter() - began) / ROUND_TRIPS * 1000


def measure(rounds: int, workers: int) -> dict[str, dict[str, list[float]]]:
    context = multiprocessing.get_context("forkserver")
    ours_pool = parallelize.Pool(workers, context=context)
    std_pool = context.Pool(workers)
    ours_ex = parallelize.Executor(workers, mp_context=context)
    std_ex = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
    items = list(range(ITEMS))
    few = items[:EXECUTOR_STDLIB_ITEMS]
    for pool in (ours_pool, std_pool):
        pool.map(square, range(100))
    for ex in (ours_ex, std_ex):
        list(ex.map(square, range(100)))

    def unordered(pool: Any, chunksize: int | None) -> Callable[[], object]:
        if chunksize is None:
            return lambda: sum(pool.imap_unordered(square, items))
        return lambda: sum(pool.imap_unordered(square, items, chunksize))

    cases: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {
        "Pool.map, chunksize=1000 (items/s)": (
            lambda: _rate(lambda: ours_pool.map(square, items, 1000), ITEMS),
            lambda: _rate(lambda: std_pool.map(square, items, 1000), ITEMS),
        ),
        "Pool.map, default chunksize (items/s)": (
            lambda: _rate(lambda: ours_pool.map(square, items), ITEMS),
            lambda: _rate(lambda: std_pool.map(square, items), ITEMS),
        ),
        "Pool.imap_unordered, chunksize=1000 (items/s)": (
            lambda: _rate(unordered(ours_pool, 1000), ITEMS),
            lambda: _rate(unordered(std_pool, 1000), ITEMS),
        ),
        "Pool.imap_unordered, default chunksize (items/s)": (
            lambda: _rate(unordered(ours_pool, None), ITEMS),
            lambda: _rate(unordered(std_pool, None), len(few) // 10),
        ),
        "Executor.map, default arguments (items/s)": (
            lambda: _rate(lambda: list(ours_ex.map(square, items)), ITEMS),
            lambda: _rate(lambda: list(std_ex.map(square, few)), len(few)),
        ),
        "Executor.submit round trip (ms)": (
            lambda: _round_trip_ms(ours_ex),
            lambda: _round_trip_ms(std_ex),
        ),
    }
    # The stdlib's default imap_unordered sends one item per task: a tenth of the items.
    tenth = few[: len(few) // 10]
    cases["Pool.imap_unordered, default chunksize (items/s)"] = (
        cases["Pool.imap_unordered, default chunksize (items/s)"][0],
        lambda: _rate(lambda: sum(std_pool.imap_unordered(square, tenth)), len(tenth)),
    )
    samples: dict[str, dict[str, list[float]]] = {
        name: {"parallelize": [], "stdlib": []} for name in cases
    }
    try:
        for _ in range(rounds):
            for name, (ours, theirs) in cases.items():
                samples[name]["parallelize"].append(ours())
                samples[name]["stdlib"].append(theirs())
    finally:
        ours_pool.terminate()
        std_pool.terminate()
        ours_ex.shutdown()
        std_ex.shutdown()
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    samples = measure(2 if args.quick else 5, args.workers)
    lines = [
        "| case | parallelize | stdlib | ratio (parallelize better above 1) |",
        "|---|---|---|---|",
    ]
    table: dict[str, Any] = {}
    for name, by_tool in samples.items():
        ours, theirs = (statistics.median(by_tool[t]) for t in ("parallelize", "stdlib"))
        ratio = theirs / ours if name.endswith("(ms)") else ours / theirs
        table[name] = {"parallelize": ours, "stdlib": theirs, "ratio": ratio, **by_tool}
        fmt = "{:.3g}".format
        lines.append(f"| {name} | {fmt(ours)} | {fmt(theirs)} | {ratio:.2f}x |")
    print("\n".join(lines))
    save_record(RESULTS, "benchmarks/bench_faces.py", args.workers, table)


if __name__ == "__main__":
    main()
