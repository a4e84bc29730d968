"""Subinterpreter workers against worker processes: cold first map, warm 2-item call, tiny items,
the cpu workload, and the pool's memory.

Run from the repository root with Python 3.13 or newer:
``python benchmarks/bench_interpreters.py [--quick]``. Each run of a tool is a fresh interpreter
(imports untimed), so every cold start is truly cold; rounds go tool after tool in a new order
each round, and the table shows medians. Tools: ``backend="interpreters"``, the process backend
under fork, spawn and forkserver, and the standard library's ``InterpreterPoolExecutor`` where
this Python has it (3.14). Prints a Markdown table with each figure's ratio to the interpreters
backend's and writes it, with the machine and the command, to
``benchmarks/results/interpreters.json``.

* cold: the first 2-item map of the program, pool start included (the caller's own imports of
  parallelize's map machinery are not timed, the backend's are);
* warm: the median 2-item map once the pool is warm;
* tiny: ``x * x`` over 200k items, items per second;
* cpu: 32 items of about 20 ms of pure-Python work, speed-up over a serial loop in the same run;
* memory: what the pool adds to the resident memory of the caller and its workers (PSS, so
  pages forked children share with the caller count once), after the maps above.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import save_record  # noqa: E402
from benchmarks.tasks import spin, square  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "interpreters.json"
WORKERS = 2
TOOLS = ("interpreters", "fork", "spawn", "forkserver", "InterpreterPoolExecutor")
SPIN = 200_000  # about 20 ms of spin() on this machine
CPU_ITEMS = 32


def _memory() -> float:
    """MB of proportional resident memory of this process and its children."""
    import psutil

    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total / 1e6


def _one(tool: str, tiny_items: int, warm_calls: int) -> dict[str, float]:
    """Every figure for ``tool``, in this (fresh) interpreter."""
    import parallelize
    import parallelize._api  # what every map imports first, untimed (as a program's imports)

    serial = time.perf_counter()
    for n in [SPIN] * CPU_ITEMS:
        spin(n)
    serial = time.perf_counter() - serial
    before = _memory()
    if tool == "InterpreterPoolExecutor":
        from concurrent.futures import InterpreterPoolExecutor  # type: ignore[attr-defined]

        pool = InterpreterPoolExecutor(WORKERS)

        def run(fn: Any, items: Any) -> list[Any]:
            return list(pool.map(fn, items, chunksize=max(1, len(items) // (4 * WORKERS))))

    else:
        where = {"backend": "interpreters"} if tool == "interpreters" else {"start_method": tool}

        def run(fn: Any, items: Any) -> list[Any]:
            return parallelize.pmap(fn, items, workers=WORKERS, **where)

    began = time.perf_counter()
    run(square, [1, 2])
    cold = time.perf_counter() - began
    warm = []
    for _ in range(warm_calls):
        began = time.perf_counter()
        run(square, [1, 2])
        warm.append(time.perf_counter() - began)
    items = list(range(tiny_items))
    began = time.perf_counter()
    run(square, items)
    tiny = tiny_items / (time.perf_counter() - began)
    began = time.perf_counter()
    run(spin, [SPIN] * CPU_ITEMS)
    cpu = serial / (time.perf_counter() - began)
    memory = _memory() - before
    return {
        "cold_ms": cold * 1e3,
        "warm_ms": statistics.median(warm) * 1e3,
        "tiny_per_s": tiny,
        "cpu_speedup": cpu,
        "memory_mb": memory,
    }


def _available(tool: str) -> bool:
    if tool == "InterpreterPoolExecutor":
        import concurrent.futures

        return hasattr(concurrent.futures, "InterpreterPoolExecutor")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and items")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one tool here, print JSON
    args = parser.parse_args()
    tiny_items, warm_calls, rounds = (50_000, 20, 2) if args.quick else (200_000, 50, 5)
    if args.one:
        print(json.dumps(_one(args.one, tiny_items, warm_calls)))
        return
    if sys.version_info < (3, 13):
        sys.exit("subinterpreter workers need Python 3.13 or newer")
    tools = [tool for tool in TOOLS if _available(tool)]
    runs: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
    for round_ in range(rounds):
        for tool in random.Random(round_).sample(tools, len(tools)):
            command = [sys.executable, __file__, "--one", tool]
            command += ["--quick"] if args.quick else []
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[tool].append(json.loads(out.stdout))
            print(f"round {round_ + 1} {tool}: {runs[tool][-1]}", file=sys.stderr)
    figures = {tool: {k: statistics.median(r[k] for r in runs[tool]) for k in runs[tool][0]}
               for tool in tools}  # fmt: skip
    print(table(figures))
    missing = [tool for tool in TOOLS if tool not in tools]
    save_record(RESULTS, "benchmarks/bench_interpreters.py", WORKERS,
                {"figures": figures, "not_present": missing})  # fmt: skip


def table(figures: dict[str, dict[str, float]]) -> str:
    """Markdown: each figure and, for the process backend and the stdlib, its ratio to the
    interpreters backend's (above 1: the interpreters backend is better)."""
    ours = figures["interpreters"]
    rows = [
        "| tool | cold first map | warm 2-item call | tiny items/s | cpu speed-up | memory |",
        "|---|---|---|---|---|---|",
    ]
    for tool, f in figures.items():
        name = "interpreters" if tool in ("interpreters", "InterpreterPoolExecutor") else tool
        label = tool if name == "interpreters" else f"process ({tool})"
        cells = [
            f"{f['cold_ms']:.0f} ms", f"{f['warm_ms']:.2f} ms", f"{f['tiny_per_s'] / 1e3:.0f}k",
            f"{f['cpu_speedup']:.2f}x", f"{f['memory_mb']:.0f} MB",
        ]  # fmt: skip
        if tool != "interpreters":
            ratios = [
                f["cold_ms"] / ours["cold_ms"], f["warm_ms"] / ours["warm_ms"],
                ours["tiny_per_s"] / f["tiny_per_s"], ours["cpu_speedup"] / f["cpu_speedup"],
                f["memory_mb"] / ours["memory_mb"] if ours["memory_mb"] > 0 else float("nan"),
            ]  # fmt: skip
            cells = [f"{c} ({r:.2f})" for c, r in zip(cells, ratios, strict=True)]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
