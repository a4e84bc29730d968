"""What seeing inside a map costs: forwarding workers' log records, and collecting stats.

Run from the repository root: ``python benchmarks/bench_observe.py [--quick]``. Prints a Markdown
table (median seconds of the rounds, and the ratio: the plain map's time over the observed one's,
so 1.00 means free and 0.50 twice as slow) and writes it, with the machine and the command, to
``benchmarks/results/observe.json``.

* one INFO record per item, on the tiny (``x*x`` of 200,000 ints) and the cpu (200 items of
  about 5 ms) workloads: ``output="forward"`` (the caller's ``FileHandler`` writes each record)
  against ``output="inherit"`` (each worker's own ``FileHandler``, set up by an initializer,
  writes it), both to ``/dev/null`` with the same format;
* the tiny workload with no logging, plain against inside ``collect_stats()``.

Every pool is warm, and rounds go round robin, so a slow moment of the machine hits both sides.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import parallelize
from benchmarks.paired import ratio_table, seconds
from benchmarks.report import save_record
from benchmarks.tasks import log_to_devnull, logged_spin, logged_square, spin, square
from benchmarks.workloads import calibrate_spin

RESULTS = Path(__file__).resolve().parent / "results" / "observe.json"
TINY_ITEMS = 200_000
CPU_ITEMS = 200
CPU_ITEM_MS = 5.0
# The stats case takes ~35 ms a run: it gets this many times the rounds, in alternating order.
STATS_ROUNDS = 6


def measure(rounds: int, workers: int) -> dict[str, dict[str, list[float]]]:
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    tiny = list(range(TINY_ITEMS))
    cpu = [calibrate_spin(CPU_ITEM_MS)] * CPU_ITEMS
    forward: dict[str, Any] = {"workers": workers}
    inherit: dict[str, Any] = {"workers": workers, "output": "inherit"}
    inherit["initializer"] = log_to_devnull

    def stats_tiny() -> object:
        with parallelize.collect_stats():
            return parallelize.pmap(square, tiny, workers=workers)

    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "tiny, a log record per item: forward vs inherit": (
            lambda: parallelize.pmap(logged_square, tiny, **inherit),
            lambda: parallelize.pmap(logged_square, tiny, **forward),
        ),
        "cpu, a log record per item: forward vs inherit": (
            lambda: parallelize.pmap(logged_spin, cpu, **inherit),
            lambda: parallelize.pmap(logged_spin, cpu, **forward),
        ),
        "tiny: collect_stats() vs plain": (
            lambda: parallelize.pmap(square, tiny, workers=workers),
            stats_tiny,
        ),
    }
    samples: dict[str, dict[str, list[float]]] = {
        name: {"plain": [], "observed": []} for name in cases
    }
    parallelize.pmap(spin, [1] * 10, workers=workers)  # warm
    for round_ in range(rounds * STATS_ROUNDS):
        for name, (plain, observed) in cases.items():
            if round_ >= rounds and not name.startswith("tiny:"):
                continue  # only the short stats case needs more rounds to see 2% through noise
            sides = [("plain", plain), ("observed", observed)]
            for side, call in sides if round_ % 2 else reversed(sides):
                samples[name][side].append(seconds(call))
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    samples = measure(2 if args.quick else 5, args.workers)
    text, table = ratio_table(samples, "observed")
    print(text)
    save_record(RESULTS, "benchmarks/bench_observe.py", args.workers, table)


if __name__ == "__main__":
    main()
