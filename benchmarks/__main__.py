"""Run the suite: ``python -m benchmarks [--quick] [--only NAME ...] [--json PATH]``.

From the repository root, with the ``bench`` extra installed (``pip install -e ".[bench]"``).
Prints a Markdown table of medians and ratios and writes every raw timing to JSON; then
``python -m benchmarks.chart`` draws the chart from that JSON.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import probes, report, workloads

RESULTS = Path(__file__).resolve().parent / "results"
ALL = ("tiny", "cpu", "uneven", "bigarg", "bigret", "latency", "cold", "stream", "backlog")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    from parallelize._cpu import usable_cpus

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("parallelize", "numpy", "joblib", "mpire", "cloudpickle"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=RESULTS.parent.parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": usable_cpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
        # Other work on the machine slows every tool; the load says how much there was.
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the items and fewer repetitions: a smoke test in ~30 s",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=ALL,
        metavar="WORKLOAD",
        help=f"run only this workload (repeatable): {', '.join(ALL)}",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default benchmarks/results/latest.json,"
        " or quick.json with --quick)",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    parser.add_argument(
        "--stream-items",
        type=int,
        default=10_000_000,
        help="the long streaming run's item count (default 10,000,000)",
    )
    args = parser.parse_args(argv)
    chosen = args.only or list(ALL)
    path = args.json or RESULTS / ("quick.json" if args.quick else "latest.json")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    began = time.perf_counter()
    data: dict[str, Any] = {
        "machine": machine(),
        "workers": args.workers,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "workloads": {},
    }
    suite = workloads.build(args.workers, args.quick)
    for name in chosen:
        log(f"{name} ...")
        if name == "cold":
            result = probes.run_cold(args.workers, 2 if args.quick else 7, log)
        elif name == "stream":
            large = args.stream_items // 10 if args.quick else args.stream_items
            result = probes.run_stream(args.workers, (100_000, large), log)
        elif name == "backlog":
            result = probes.run_backlog(args.workers, log)
        else:
            result = workloads.run(suite[name], args.workers, log)
        if name == "tiny":
            result["bar_ms"] = workloads.bar_cost_ms(len(suite[name].make_items()))
        data["workloads"][name] = result
    data["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    data["targets"] = report.targets(data)
    data["seconds"] = time.perf_counter() - began
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(report.render(data))
    log(f"suite took {data['seconds']:.0f} s; results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
