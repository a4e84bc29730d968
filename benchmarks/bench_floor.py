"""The tiny map against its floor: what the work every process pool must do per item costs,
measured alone, next to parallelize and ``multiprocessing.Pool`` doing it for real.

Run from the repository root: ``python benchmarks/bench_floor.py [--quick]``. The parts of a
tiny map (200,000 ints, ``x * x``) are timed in this process, without processes or pipes: the
caller pickling the input in chunks and unpickling the results, a worker unpickling a chunk,
calling the function on each item and pickling the results. With ``W`` workers on ``C`` CPUs a
map can be no faster than the largest of the caller's part, the workers' part over ``W``, and
both over ``C`` (every process shares the CPUs): that rate is the *floor* (a best case: it
leaves out pipes, scheduling and waking). The two pools are then timed side by side, round
robin, and each is reported as a share of the floor. Writes ``benchmarks/results/floor.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import parallelize
from benchmarks.report import save_record
from benchmarks.tasks import square
from parallelize._cpu import usable_cpus

RESULTS = Path(__file__).resolve().parent / "results" / "floor.json"
ITEMS = 200_000
CHUNKS = 8  # about what either pool cuts 200,000 tiny items into for 2 workers


def parts(items: list[int], rounds: int) -> tuple[float, float]:
    """The caller's and the workers' seconds for the whole map's per-item work (best round)."""
    size = -(-len(items) // CHUNKS)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    caller, workers = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        sent = [pickle.dumps(chunk, 5) for chunk in chunks]
        middle = time.perf_counter()
        replies = [pickle.dumps([square(x) for x in pickle.loads(blob)], 5) for blob in sent]
        worked = time.perf_counter()
        results: list[Any] = []
        for reply in replies:
            results.extend(pickle.loads(reply))
        done = time.perf_counter()
        caller.append((middle - began) + (done - worked))
        workers.append(worked - middle)
    return min(caller), min(workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else 20
    items = list(range(ITEMS))
    cpus = usable_cpus()
    caller, work = parts(items, rounds)
    floor_s = max(caller, work / args.workers, (caller + work) / cpus)
    times: dict[str, list[float]] = {"parallelize": [], "mp.Pool": []}
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        pool.map(square, items)
        parallelize.pmap(square, items, workers=args.workers)
        for _ in range(rounds):
            began = time.perf_counter()
            parallelize.pmap(square, items, workers=args.workers)
            times["parallelize"].append(time.perf_counter() - began)
            began = time.perf_counter()
            pool.map(square, items)
            times["mp.Pool"].append(time.perf_counter() - began)
    rate = {tool: ITEMS / statistics.median(seconds) for tool, seconds in times.items()}
    print(f"parts: caller {caller * 1e3:.1f} ms, workers {work * 1e3:.1f} ms in all")
    print(f"floor on {args.workers} workers, {cpus} CPUs: {ITEMS / floor_s / 1e6:.2f} M items/s")
    print("| tool | items/s | share of the floor | ratio to mp.Pool |")
    print("|---|---|---|---|")
    paired = [b / a for a, b in zip(times["parallelize"], times["mp.Pool"], strict=True)]
    for tool, value in rate.items():
        ratio = statistics.median(paired) if tool == "parallelize" else 1.0
        share = value * floor_s / ITEMS
        print(f"| {tool} | {value / 1e6:.2f} M | {share:.0%} | {ratio:.2f}x |")
    save_record(
        RESULTS,
        "benchmarks/bench_floor.py",
        args.workers,
        {
            "caller_s": caller,
            "workers_s": work,
            "floor_items_per_s": ITEMS / floor_s,
            "runs_s": times,
            "paired_ratios": paired,
        },
    )


if __name__ == "__main__":
    main()
