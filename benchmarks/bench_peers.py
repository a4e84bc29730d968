"""The peers' own benchmark: the three workloads mpire's authors chose to tell multiprocessing
libraries apart (numerical, stateful, expensive initialization; see ``peer_tasks.py``), run by
every tool in its own idiom, in one run.

Run from the repository root: ``python benchmarks/bench_peers.py [--quick]``. Each timed run is
one job as a program does it, from making the pool (or calling the map) to having every result,
in a fresh interpreter of its own, so that no tool reuses workers a previous run warmed: the
expensive initialization is paid by every tool in every run. Interpreter start and imports are
not timed; Ray's and Dask's cluster start is not timed either (a running cluster is their
premise). Native math libraries run one thread per process for every tool, so that the tools'
scheduling is compared, not oversubscription. Rounds go tool after tool in a new order each
round. Prints a Markdown table (median seconds, and each tool's time over the fastest's) and
writes it, with the machine and the command, to ``benchmarks/results/peers-default.json`` (or
``peers-fork.json`` and so on with ``--start-method``: every tool that takes a start method then
uses that one; the default is each tool's own, forkserver for parallelize and fork for the others
on Linux before Python 3.14).

How each tool gets what the workload needs:

* the numerical workload's input array: parallelize binds it as a keyword argument of the
  decorated function (pickled once per worker), its ``Pool`` with ``functools.partial``;
  ``multiprocessing.Pool`` and ``ProcessPoolExecutor`` load it with an initializer into a
  global; joblib passes it with every call (joblib memory-maps large arrays); mpire as
  ``shared_objects``; Ray through ``ray.put``; Dask with ``client.scatter(broadcast=True)``;
* the stateful workload's cache: a module global in each worker, except mpire's
  ``worker_state``;
* the expensive initialization: ``initializer=`` (parallelize, the stdlib pools), mpire's
  ``worker_init``; joblib, Ray and Dask have no per-worker initializer for a plain map, so the
  function loads the model on first use in each worker.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# At the top, as a program imports what its workers use (a fork server preloads it from here).
from benchmarks import peer_tasks as tasks  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"  # peers-<start method>.json
ITEMS = {"numerical": 300, "stateful": 3000, "initialization": 500}
TOOLS = (
    "serial",
    "parallelize",
    "parallelize.Pool",
    "mp.Pool",
    "ProcessPoolExecutor",
    "joblib",
    "mpire",
    "ray",
    "dask",
)
# The start method for the tools that take one (None: each tool's own default), set in the child.
START_METHOD: str | None = None
ONE_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")


def _installed(tool: str) -> bool:
    import importlib.util

    module = {"joblib": "joblib", "mpire": "mpire", "ray": "ray", "dask": "distributed"}
    return tool not in module or importlib.util.find_spec(module[tool]) is not None


def run_one(tool: str, workload: str, workers: int) -> dict[str, Any]:
    """One timed job in this interpreter: seconds and a checksum of the results."""
    import importlib

    importlib.import_module(_MODULES.get(tool, "multiprocessing"))  # imports are not timed
    items = list(range(ITEMS[workload]))
    data = tasks.shared_input() if workload == "numerical" else None
    cluster: Any = None
    if tool == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    elif tool == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
        cluster = (cluster, Client(cluster))
    began = time.perf_counter()
    results = _RUNNERS[tool](tasks, workload, items, data, workers, cluster)
    seconds = time.perf_counter() - began
    if tool == "ray":
        import ray

        ray.shutdown()
    elif cluster is not None:
        cluster[1].close()
        cluster[0].close()
    return {"seconds": seconds, "checksum": round(sum(results), 6), "count": len(results)}


def _serial(tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any) -> Any:
    if workload == "numerical":
        return [tasks.numerical(data, i) for i in items]
    if workload == "stateful":
        return [tasks.stateful(i) for i in items]
    tasks.load_model()
    return [tasks.predict(i) for i in items]


def _parallelize(
    tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any
) -> Any:
    from parallelize import parallel

    options: dict[str, Any] = {"workers": workers}
    if START_METHOD is not None:
        options["start_method"] = START_METHOD
    if workload == "numerical":
        numerical = parallel(**options)(_numerical_keyword)
        return numerical(items, data=data)
    if workload == "stateful":
        return parallel(**options)(tasks.stateful)(items)
    return parallel(**options, initializer=tasks.load_model)(tasks.predict)(items)


def _numerical_keyword(i: int, *, data: Any) -> float:
    return tasks.numerical(data, i)


def _parallelize_pool(
    tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any
) -> Any:
    from parallelize import Pool

    method = {"start_method": START_METHOD}
    if workload == "numerical":
        with Pool(workers, **method) as pool:
            return pool.map(functools.partial(tasks.numerical, data), items)
    if workload == "stateful":
        with Pool(workers, **method) as pool:
            return pool.map(tasks.stateful, items)
    with Pool(workers, initializer=tasks.load_model, **method) as pool:
        return pool.map(tasks.predict, items)


def _stdlib(kind: str) -> Any:
    def run(tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any) -> Any:
        import concurrent.futures
        import multiprocessing

        fn, init, initargs = {
            "numerical": (tasks.numerical_from_global, tasks.keep_input, (data,)),
            "stateful": (tasks.stateful, None, ()),
            "initialization": (tasks.predict, tasks.load_model, ()),
        }[workload]
        context = multiprocessing.get_context(START_METHOD)
        if kind == "pool":
            with context.Pool(workers, init, initargs) as pool:
                return pool.map(fn, items)
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=init, initargs=initargs
        ) as executor:
            return list(executor.map(fn, items))

    return run


def _joblib(tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any) -> Any:
    from joblib import Parallel, delayed

    if workload == "numerical":
        return Parallel(n_jobs=workers)(delayed(tasks.numerical)(data, i) for i in items)
    fn = tasks.stateful if workload == "stateful" else tasks.predict
    return Parallel(n_jobs=workers)(delayed(fn)(i) for i in items)


def _mpire(tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any) -> Any:
    from mpire import WorkerPool

    method = START_METHOD or "fork"
    if workload == "numerical":
        with WorkerPool(workers, shared_objects=data, start_method=method) as pool:
            return pool.map(tasks.numerical, items)
    if workload == "stateful":
        with WorkerPool(workers, use_worker_state=True, start_method=method) as pool:
            return pool.map(tasks.stateful_mpire, items)
    with WorkerPool(workers, use_worker_state=True, start_method=method) as pool:
        return pool.map(tasks.predict_mpire, items, worker_init=tasks.load_model_mpire)


def _ray(tasks: Any, workload: str, items: list[int], data: Any, workers: int, _: Any) -> Any:
    import ray

    if workload == "numerical":
        remote = ray.remote(tasks.numerical)
        shared = ray.put(data)
        return ray.get([remote.remote(shared, i) for i in items])
    remote = ray.remote(tasks.stateful if workload == "stateful" else tasks.predict)
    return ray.get([remote.remote(i) for i in items])


def _dask(
    tasks: Any, workload: str, items: list[int], data: Any, workers: int, cluster: Any
) -> Any:
    client = cluster[1]
    if workload == "numerical":
        shared = client.scatter(data, broadcast=True)
        return client.gather(client.map(tasks.numerical, [shared] * len(items), items))
    fn = tasks.stateful if workload == "stateful" else tasks.predict
    return client.gather(client.map(fn, items, pure=False))


# The module each tool is imported from, imported before the clock starts.
_MODULES = {
    "parallelize": "parallelize",
    "parallelize.Pool": "parallelize",
    "ProcessPoolExecutor": "concurrent.futures",
    "joblib": "joblib",
    "mpire": "mpire",
    "ray": "ray",
    "dask": "distributed",
}

_RUNNERS = {
    "serial": _serial,
    "parallelize": _parallelize,
    "parallelize.Pool": _parallelize_pool,
    "mp.Pool": _stdlib("pool"),
    "ProcessPoolExecutor": _stdlib("executor"),
    "joblib": _joblib,
    "mpire": _mpire,
    "ray": _ray,
    "dask": _dask,
}


def _child(tool: str, workload: str, workers: int, method: str | None) -> dict[str, Any]:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--one", tool, workload, "--workers", str(workers)]
    if method is not None:
        command += ["--start-method", method]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool} on {workload} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _chart(medians: dict[str, dict[str, float]], tools: list[str], path: Path, method: str) -> None:
    """Grouped bars: each tool's median time per workload, relative to the fastest tool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(tools)
    for n, tool in enumerate(tools):
        xs = [w + n * width for w in range(len(medians))]
        ys = [m[tool] / min(v for t, v in m.items() if t != "serial") for m in medians.values()]
        axes.bar(xs, ys, width, label=tool)
    axes.set_xticks([w + 0.4 - width / 2 for w in range(len(medians))], list(medians))
    axes.set_ylabel("time / fastest tool's (lower is better)")
    axes.set_title(f"The peers' three workloads, 2 workers, start method: {method}")
    axes.axhline(1.0, color="black", linewidth=0.5)
    axes.legend(fontsize="small", ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round instead of 5")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", choices=TOOLS, help="this tool (repeatable)")
    parser.add_argument(
        "--start-method", choices=("fork", "spawn", "forkserver"),
        help="for every tool that takes one (default: each tool's own)",
    )  # fmt: skip
    parser.add_argument("--one", nargs=2, metavar=("TOOL", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        global START_METHOD
        START_METHOD = args.start_method
        print(json.dumps(run_one(args.one[0], args.one[1], args.workers)))
        return
    tools = [t for t in (args.only or TOOLS) if _installed(t)]
    rounds = 1 if args.quick else 5
    runs: dict[str, dict[str, list[float]]] = {w: {t: [] for t in tools} for w in ITEMS}
    sums: dict[str, dict[str, float]] = {w: {} for w in ITEMS}
    for _ in range(rounds):
        for workload, count in ITEMS.items():
            for tool in random.sample(tools, len(tools)):
                result = _child(tool, workload, args.workers, args.start_method)
                runs[workload][tool].append(result["seconds"])
                sums[workload][tool] = result["checksum"]
                assert result["count"] == count, (tool, workload, result)
    for workload, by_tool in sums.items():  # every tool computed the same results
        expected = by_tool.get("serial", next(iter(by_tool.values())))
        for tool, checksum in by_tool.items():
            assert abs(checksum - expected) <= 1e-6 * max(1.0, abs(expected)), (workload, tool)
    table: dict[str, Any] = {}
    lines = [
        "| tool | " + " | ".join(ITEMS) + " |",
        "|---|" + "---|" * len(ITEMS),
    ]
    medians = {w: {t: statistics.median(v) for t, v in by.items()} for w, by in runs.items()}
    best = {w: min(v for t, v in m.items() if t != "serial") for w, m in medians.items()}
    for tool in tools:
        cells = []
        for workload in ITEMS:
            median = medians[workload][tool]
            cells.append(f"{median:.2f} s ({median / best[workload]:.2f}x)")
            table.setdefault(workload, {})[tool] = {
                "median_s": median,
                "runs_s": runs[workload][tool],
            }
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    from benchmarks.report import save_record

    method = args.start_method or "default"
    _chart(medians, tools, ROOT / "docs" / "img" / f"peers-{method}.png", method)
    table = {"start_method": method, "workloads": table}
    path = RESULTS.with_name(f"peers-{method}.json")
    save_record(path, "benchmarks/bench_peers.py", args.workers, table)


if __name__ == "__main__":
    main()
