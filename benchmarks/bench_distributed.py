"""The same map on the process, dask and ray backends, against driving each engine by hand.

For each engine it times ``pmap(fn, items, backend=...)`` and the plain engine idiom a user would
write instead (``client.gather(client.map(fn, items))``; ``ray.get([remote.remote(x) for x in
items])``), on a coarse map (few items of ~10 ms) and a fine one (many items of ~0.1 ms). The ratio
``parallelize / raw`` is the overhead we add (below 1: we are faster, by chunking). Each engine
runs alone (a Dask LocalCluster and a Ray session at once are too heavy on a small machine), warm,
best of ``--repeat`` runs. Results go to ``benchmarks/results/distributed.json``.

Run: ``python benchmarks/bench_distributed.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parallelize import pmap
from parallelize._backends.base import get_backend
from parallelize._cpu import usable_cpus

RESULTS = Path(__file__).parent / "results" / "distributed.json"


def spin(n: int) -> int:
    """Pure-Python CPU work: about ``n`` loop turns."""
    total = 0
    for i in range(n):
        total += i
    return total


def calibrate(seconds: float) -> int:
    """Loop turns that take about ``seconds`` on this machine."""
    n = 100_000
    began = time.perf_counter()
    spin(n)
    return max(1, int(n * seconds / (time.perf_counter() - began)))


def best(run: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` timed runs, after one warm-up run."""
    run()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def workloads(quick: bool) -> dict[str, list[int]]:
    coarse = 40 if quick else 200
    fine = 1000 if quick else 5000
    return {
        f"coarse: {coarse} x 10 ms": [calibrate(0.01)] * coarse,
        f"fine: {fine} x 0.1 ms": [calibrate(0.0001)] * fine,
    }


def bench_process(loads: dict[str, list[int]], repeat: int) -> dict[str, float]:
    out = {name: best(lambda i=items: pmap(spin, i, backend="process"), repeat)
           for name, items in loads.items()}
    get_backend("process").shutdown()
    return out


def bench_dask(loads: dict[str, list[int]], repeat: int) -> dict[str, dict[str, float]]:
    import distributed

    workers = usable_cpus()
    out: dict[str, dict[str, float]] = {}
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        for name, items in loads.items():
            ours = best(lambda i=items: pmap(spin, i, backend="dask"), repeat)
            raw = best(lambda i=items: client.gather(client.map(spin, i, pure=False)), repeat)
            out[name] = {"parallelize": ours, "raw": raw}
        get_backend("dask").shutdown()
    return out


def bench_ray(loads: dict[str, list[int]], repeat: int) -> dict[str, dict[str, float]]:
    import ray

    ray.init(num_cpus=usable_cpus(), include_dashboard=False, logging_level=logging.ERROR)
    try:
        remote = ray.remote(spin)
        out: dict[str, dict[str, float]] = {}
        for name, items in loads.items():
            ours = best(lambda i=items: pmap(spin, i, backend="ray"), repeat)
            raw = best(lambda i=items: ray.get([remote.remote(x) for x in i]), repeat)
            out[name] = {"parallelize": ours, "raw": raw}
    finally:
        ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller maps, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (best kept)")
    args = parser.parse_args()
    loads = workloads(args.quick)
    serial = {name: best(lambda i=items: list(map(spin, i)), 1) for name, items in loads.items()}

    results: dict[str, Any] = {
        "machine": {"cpus": usable_cpus(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "serial": serial,
        "process": bench_process(loads, args.repeat),
    }
    for engine, bench in (("dask", bench_dask), ("ray", bench_ray)):
        try:
            results[engine] = bench(loads, args.repeat)
        except ImportError as exc:
            print(f"skipping {engine}: {exc}", file=sys.stderr)

    print(f"{'map':24} {'engine':8} {'parallelize':>12} {'raw engine':>11} {'ratio':>7} "
          f"{'vs process':>11}")
    ratios: list[float] = []
    for name in loads:
        print(f"{name:24} {'process':8} {results['process'][name]:11.3f}s")
        for engine in ("dask", "ray"):
            if engine not in results:
                continue
            case = results[engine][name]
            ratio = case["parallelize"] / case["raw"]
            ratios.append(ratio)
            case["ratio"] = ratio
            case["vs_process"] = case["parallelize"] / results["process"][name]
            print(f"{name:24} {engine:8} {case['parallelize']:11.3f}s {case['raw']:10.3f}s "
                  f"{ratio:7.2f} {case['vs_process']:10.2f}x")
    if ratios:
        print(f"geometric mean of parallelize / raw: {statistics.geometric_mean(ratios):.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
