"""Measurements that need a fresh interpreter each: cold start and streaming memory.

The parent runs ``python -m benchmarks.probes cold TOOL METHOD``, ``... stream N`` or
``... backlog TOOL`` in a new process and reads one JSON line back. Run by hand, a probe
prints that line too.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from .tools import START_METHOD_TOOLS, default_start_method

ROOT = Path(__file__).resolve().parent.parent
START_METHODS = ("fork", "spawn", "forkserver")
# What a user's ``from ... import ...`` line loads for each tool; its time is reported apart
# from the cold start. ``from parallelize import pmap`` loads ``parallelize._api`` (PEP 562).
LIBRARY = {
    "parallelize": ("parallelize", "pmap"),
    "mp.Pool": ("multiprocessing.pool", "Pool"),
    "ProcessPoolExecutor": ("concurrent.futures", "ProcessPoolExecutor"),
    "joblib": ("joblib", "Parallel"),
    "mpire": ("mpire", "WorkerPool"),
}


def cold(tool: str, method: str, workers: int) -> dict[str, float]:
    """Milliseconds to create a pool and run a 2-item map, in this fresh process."""
    from . import tasks, tools  # before the clock starts

    began = time.perf_counter()
    module, name = LIBRARY[tool]
    getattr(importlib.import_module(module), name)
    imported = time.perf_counter()
    instance = tools._CLASSES[tool](workers, None if method == "default" else method)
    out = instance.map(tasks.square, [1, 2])
    done = time.perf_counter()
    assert out == [1, 4], out
    instance.close()
    return {"ms": (done - imported) * 1000, "import_ms": (imported - began) * 1000}


def stream(count: int, workers: int, tool: str) -> dict[str, float]:
    """Peak RSS (MB) of this process and of its workers while streaming ``count`` items."""
    from . import tasks

    baseline = _peak_mb(os.getpid())
    items = iter(range(count))
    began = time.perf_counter()
    if tool == "serial":
        results = map(tasks.square, items)
    else:
        from parallelize import imap  # the serial baseline never loads it

        results = imap(tasks.square, items, workers=workers)
    seen = 0
    for _ in results:
        seen += 1
    seconds = time.perf_counter() - began
    assert seen == count
    return {
        "seconds": seconds,
        "items/s": count / seconds,
        "baseline_mb": baseline,
        "peak_mb": _peak_mb(os.getpid()),
        "worker_peak_mb": max(map(_peak_mb, _descendants()), default=0.0),
    }


# The backlog probe: results of 10 kB, and a consumer that pauses 10 ms every 1,000 of them.
BACKLOG_ITEMS = 30_000


def backlog(tool: str, workers: int) -> dict[str, float]:
    """Memory of the caller while a slow consumer streams ``BACKLOG_ITEMS`` results of 10 kB
    (300 MB in all) from a generator: peak RSS, and peak private memory (``RssAnon``, sampled
    every 250 results), in MB above the warm pool's."""
    from . import tasks

    items = (i for i in range(BACKLOG_ITEMS))
    if tool == "parallelize":
        from parallelize import imap, pmap

        pmap(tasks.kilobytes, range(4), workers=workers)
        results = imap(tasks.kilobytes, items, workers=workers)
    elif tool == "mp.Pool":
        import multiprocessing

        pool = multiprocessing.get_context("forkserver").Pool(workers)
        pool.map(tasks.kilobytes, range(4))
        results = pool.imap(tasks.kilobytes, items)
    elif tool == "joblib":
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers, return_as="generator")
        list(parallel(delayed(tasks.kilobytes)(i) for i in range(4)))
        results = parallel(delayed(tasks.kilobytes)(i) for i in items)
    elif tool == "mpire":
        from mpire import WorkerPool

        pool = WorkerPool(n_jobs=workers, keep_alive=True)
        pool.map(tasks.kilobytes, range(4), progress_bar=False)
        results = pool.imap(tasks.kilobytes, items, progress_bar=False)
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    before = private = _private_mb()
    peak_before = _peak_mb(os.getpid())
    began = time.perf_counter()
    for n, _ in enumerate(results):
        if n % 250 == 0:
            private = max(private, _private_mb())
        if n % 1000 == 0:
            time.sleep(0.01)
    return {
        "seconds": time.perf_counter() - began,
        "peak_mb": _peak_mb(os.getpid()) - peak_before,
        "private_mb": private - before,
    }


def _private_mb() -> float:
    """Anonymous (private) RSS of this process now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb(pid: int) -> float:
    """Peak RSS of a process, in MB, from ``VmHWM``.

    Not ``getrusage(...).ru_maxrss``: Linux carries that over ``exec`` from the forked parent,
    so a probe started by a suite holding 512 MB of arrays would report 512 MB. Nor
    ``RUSAGE_CHILDREN`` for the workers: under forkserver they are the fork server's children.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return 0.0


def _descendants() -> list[int]:
    """The workers (and a fork server), still alive: the pool is warm until exit."""
    return [child.pid for child in psutil.Process().children(recursive=True)]


def _environment() -> dict[str, str]:
    """This environment, with bytecode caching on, kept out of the source tree.

    Without it (``PYTHONDONTWRITEBYTECODE=1``, common in development shells) every fresh process
    compiles parallelize from source, in the caller and again in each spawned worker, while the
    stdlib and installed packages load precompiled bytecode: a cost no installed user pays.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault(
        "PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "parallelize-bench-pycache")
    )
    return env


def _probe(args: list[str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.probes", *args]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        env=_environment(),
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_cold(workers: int, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Cold start of every tool, each start method for the tools that take one, ``reps`` times."""
    cases = [(tool, method) for tool in START_METHOD_TOOLS for method in START_METHODS]
    cases += [("joblib", "default"), ("mpire", "default")]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {case: [] for case in cases}
    for tool, method in cases:  # untimed: compiles the bytecode, warms the OS file cache
        _probe(["cold", tool, method, str(workers)], timeout=120)
    for rep in range(reps):
        # Round robin like the in-process workloads, in a new seeded order every round.
        for tool, method in random.Random(rep).sample(cases, len(cases)):
            samples[tool, method].append(_probe(["cold", tool, method, str(workers)], timeout=120))
        log(f"  cold rep {rep + 1}/{reps} done")
    results: dict[str, Any] = {}
    for (tool, method), runs in samples.items():
        label = tool if method == "default" else f"{tool} ({method})"
        # Same start method as the tool (mpire forks); else parallelize's default.
        used = method if method != "default" else default_start_method(tool)
        reference = "parallelize ({})".format(
            used if used in START_METHODS else default_start_method("parallelize")
        )
        results[label] = {
            "value": statistics.median(r["ms"] for r in runs),
            "import_ms": statistics.median(r["import_ms"] for r in runs),
            "seconds": [r["ms"] / 1000 for r in runs],
            "method": method if method != "default" else default_start_method(tool),
            "reference": reference,
        }
    for entry in results.values():
        # Paired: the median of the ratios within each round, whose samples are seconds apart.
        # The machine's speed drifts more than that between rounds (samples of one tool fall
        # near 60 ms or near 90 ms, round after round), and a ratio of medians would carry it.
        mine = results[entry["reference"]]["seconds"]
        entry["ratio"] = statistics.median(
            t / p for t, p in zip(entry["seconds"], mine, strict=True)
        )
    return {
        "title": "cold start: new pool + 2-item map, fresh process",
        "unit": "ms",
        "higher_is_better": False,
        "results": results,
    }


def run_stream(workers: int, counts: tuple[int, ...], log: Callable[[str], None]) -> dict[str, Any]:
    """Streaming ``imap`` over generators of each size; serial ``map`` as the baseline."""
    results: dict[str, Any] = {}
    for tool in ("parallelize", "serial"):
        for count in counts:
            # Budget: a generous 20 s per million items, for a loaded machine.
            result = _probe(
                ["stream", str(count), str(workers), tool], timeout=60 + 20 * count / 1e6
            )
            results[f"{tool} imap {count:,}" if tool != "serial" else f"serial map {count:,}"] = {
                **result,
                "items": count,
                "value": result["peak_mb"],
            }
            log(
                f"  stream {tool} {count:,}: {result['seconds']:.1f} s, "
                f"peak {result['peak_mb']:.0f} MB, workers {result['worker_peak_mb']:.0f} MB"
            )
    small, large = (f"parallelize imap {c:,}" for c in (min(counts), max(counts)))
    growth = results[large]["peak_mb"] - results[small]["peak_mb"]
    return {
        "title": "streaming: imap over a generator, peak RSS of the caller",
        "unit": "MB",
        "higher_is_better": False,
        "results": results,
        "growth_mb": growth,
    }


def run_backlog(workers: int, log: Callable[[str], None]) -> dict[str, Any]:
    """The slow consumer of big results, for each tool, each in a fresh interpreter."""
    results: dict[str, Any] = {}
    for tool in ("parallelize", "mp.Pool", "joblib", "mpire"):
        result = _probe(["backlog", tool, str(workers)], timeout=300)
        results[tool] = {**result, "value": result["private_mb"]}
        log(
            f"  backlog {tool}: {result['seconds']:.1f} s, peak +{result['peak_mb']:.0f} MB, "
            f"private +{result['private_mb']:.0f} MB"
        )
    return {
        "title": f"slow consumer: imap of {BACKLOG_ITEMS:,} results of 10 kB, caller's memory",
        "unit": "MB",
        "higher_is_better": False,
        "results": results,
    }


def main(argv: list[str]) -> None:
    if argv[0] == "cold":
        result = cold(argv[1], argv[2], int(argv[3]))
    elif argv[0] == "stream":
        result = stream(int(argv[1]), int(argv[2]), argv[3])
    elif argv[0] == "backlog":
        result = backlog(argv[1], int(argv[2]))
    else:
        raise SystemExit(f"unknown probe {argv[0]!r}: use cold, stream or backlog")
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
