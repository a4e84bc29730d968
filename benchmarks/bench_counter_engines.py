"""What one ``shared_counter`` increment costs once the counter has crossed into Dask or Ray.

Run from the repository root: ``python benchmarks/bench_counter_engines.py [--quick]``. Prints a
Markdown table (microseconds per increment, best of several runs) and writes the numbers, with the
machine and the command, to ``benchmarks/results/counter_engines.json``.

On an engine the counter lives in a small actor (see ``parallelize._counter.engines``),
so an increment is one round trip to it. Measured, each inside engine tasks that received the
counter from ``pmap`` (timed in the task, so task scheduling is not counted), on a warm local
cluster of two single-threaded workers (a Dask ``LocalCluster``, a Ray session of 2 CPUs):

* ``c.increment()`` from one task, and from two tasks at once (wall time / all increments);
* the seed idiom ``with c.get_lock(): c.value += 1`` (four round trips: acquire, get, set,
  release);
* ``c.increment()`` from the caller, which reaches the actor too once the counter has crossed;
* the alternatives we measured before choosing: on Dask, ``distributed.Lock`` + ``Variable``
  (``with lock: var.set(var.get() + 1)``, every step a scheduler round trip); on Ray, a plain
  synchronous actor with an ``add`` method (no lock support: what our lock costs in the actor).

Each engine runs alone: the Dask cluster is closed before the Ray session starts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelize import SharedCounter, pmap, shared_counter

RESULTS = Path(__file__).resolve().parent / "results" / "counter_engines.json"
# Increments per task and run: ~0.5-1 s per run at about 1-2 ms per round trip.
ACTOR_RUNS = 500
# The Lock + Variable pattern is four scheduler round trips per increment.
LOCK_VARIABLE_RUNS = 100
# Runs per measurement; the best is reported, as timeit does (the slower runs measure neighbours).
REPEATS = 5


def _timed(body: Callable[[], object], count: int) -> tuple[float, float]:
    """Wall-clock start and end of ``count`` calls of ``body``, after a short warm-up."""
    for _ in range(min(count, 20)):
        body()
    began = time.time()
    for _ in range(count):
        body()
    return began, time.time()


def increments(counter: SharedCounter, count: int) -> tuple[float, float]:
    return _timed(counter.increment, count)


def seed_idiom(counter: SharedCounter, count: int) -> tuple[float, float]:
    def body() -> None:
        with counter.get_lock():
            counter.value += 1

    return _timed(body, count)


def per_increment_us(spans: list[tuple[float, float]], count: int) -> float:
    """Wall time from the first start to the last end, per increment of all tasks, in us."""
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return wall / (count * len(spans)) * 1e6


def measure(run: Callable[[], float], repeats: int) -> dict[str, Any]:
    runs = [run() for _ in range(repeats)]
    return {"us_per_increment": min(runs), "median_us": statistics.median(runs), "runs": runs}


def counter_rows(backend: str, scale: int, repeats: int) -> dict[str, dict[str, Any]]:
    """The rows measured the same way on both engines."""
    count = ACTOR_RUNS // scale
    counter = shared_counter(0)
    pmap(increments, [counter], [1], backend=backend)  # cross into the engine, start its actor
    rows = {
        "task: c.increment()": measure(
            lambda: per_increment_us(pmap(increments, [counter], [count], backend=backend), count),
            repeats,
        ),
        "two tasks at once: c.increment()": measure(
            lambda: per_increment_us(
                pmap(increments, [counter] * 2, [count] * 2, backend=backend, chunksize=1), count
            ),
            repeats,
        ),
        "task: with c.get_lock(): c.value += 1": measure(
            lambda: per_increment_us(pmap(seed_idiom, [counter], [count], backend=backend), count),
            repeats,
        ),
        "caller: c.increment()": measure(
            lambda: per_increment_us([increments(counter, count)], count), repeats
        ),
    }
    expected = 2 + 5 * repeats * (count + min(count, 20))  # 5 = 1 + 2 + 1 + 1 tasks or callers
    assert counter.value == expected, (counter.value, expected)  # exact, or the numbers lie
    return rows


def lock_variable(name: str, count: int) -> tuple[float, float]:
    import distributed  # in a Dask task only

    lock, variable = distributed.Lock(name), distributed.Variable(name)

    def body() -> None:
        with lock:
            variable.set(variable.get() + 1)

    return _timed(body, count)


def bench_dask(scale: int, repeats: int) -> dict[str, dict[str, Any]]:
    import distributed  # only when measured

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster, distributed.Client(cluster):
        rows = counter_rows("dask", scale, repeats)
        count = LOCK_VARIABLE_RUNS // scale
        distributed.Variable("bench").set(0)
        rows["task: distributed.Lock + Variable (alternative)"] = measure(
            lambda: per_increment_us(pmap(lock_variable, ["bench"], [count], backend="dask"),
                                     count),
            repeats,
        )
    return rows


class _PlainAdder:
    """The simplest Ray counter: a synchronous actor, without any lock."""

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int) -> int:
        self.value += n
        return self.value


def plain_actor(actor: Any, count: int) -> tuple[float, float]:
    import ray  # in a Ray task only

    return _timed(lambda: ray.get(actor.add.remote(1)), count)


def bench_ray(scale: int, repeats: int) -> dict[str, dict[str, Any]]:
    import ray  # only when measured

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        rows = counter_rows("ray", scale, repeats)
        count = ACTOR_RUNS // scale
        actor = ray.remote(num_cpus=0)(_PlainAdder).remote()
        rows["task: plain sync actor, ray.get(a.add.remote(1)) (alternative)"] = measure(
            lambda: per_increment_us(pmap(plain_actor, [actor], [count], backend="ray"), count),
            repeats,
        )
    finally:
        ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5x fewer increments, 2 repeats")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the numbers")
    args = parser.parse_args()
    scale = 5 if args.quick else 1
    repeats = 2 if args.quick else REPEATS

    results = {"dask": bench_dask(scale, repeats), "ray": bench_ray(scale, repeats)}
    print("| engine | counter operation | us per increment (best) | median |")
    print("|---|---|---:|---:|")
    for engine, rows in results.items():
        for name, row in rows.items():
            print(f"| {engine} | {name} | {row['us_per_increment']:,.0f} "
                  f"| {row['median_us']:,.0f} |")

    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
        },
        "increments_per_run": {"actor": ACTOR_RUNS // scale,
                               "lock_variable": LOCK_VARIABLE_RUNS // scale},
        "repeats": repeats,
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
