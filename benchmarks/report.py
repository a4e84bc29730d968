"""Turning results into tables and a verdict per target of the issue.

Every ratio reads the same way: how many times better parallelize does than the tool, so above 1
means parallelize wins (more items per second, a larger speed-up, fewer seconds or milliseconds).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .tools import TOOLS

ANCHORS = ("mp.Pool", "ProcessPoolExecutor", "joblib", "mpire")
MAP_WORKLOADS = ("tiny", "cpu", "uneven", "bigarg", "bigret", "latency")


def fmt(value: float, unit: str) -> str:
    """A short figure: 5.2 M items/s, 1.93x, 0.53 s, 0.41 ms."""
    if math.isnan(value):
        return "-"
    if unit == "items/s":
        for scale, suffix in ((1e6, " M"), (1e3, " k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if unit == "speed-up":
        return f"{value:.2f}"
    if unit in ("ms", "ms/call", "MB"):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    return f"{value:.3g}"


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x"


def map_table(workloads: dict[str, Any]) -> str:
    """Workloads as rows, tools as columns; each cell 'median (ratio)'."""
    present = [name for name in MAP_WORKLOADS if name in workloads]
    if not present:
        return ""
    tools = [t for t in TOOLS if any(t in workloads[w]["results"] for w in present)]
    lines = ["| workload | unit | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
    for name in present:
        entry = workloads[name]
        cells = []
        for tool in tools:
            result = entry["results"].get(tool)
            if result is None:
                cells.append("")
                continue
            figure = fmt(result["value"], entry["unit"])
            if tool not in ("parallelize", "ceiling"):  # the ceiling is a bound, not a rival
                figure += f" ({_ratio(result['ratio'])})"
            cells.append(figure)
        lines.append(f"| {entry['title']} | {entry['unit']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cold_table(cold: dict[str, Any]) -> str:
    """One row per tool, one column per start method: 'ms (ratio to parallelize, same method)'."""
    rows: dict[str, dict[str, str]] = {}
    methods: list[str] = []
    for label, result in cold["results"].items():
        tool = label.split(" (")[0]
        method = result["method"]
        if method not in methods:
            methods.append(method)
        cell = f"{fmt(result['value'], 'ms')}"
        if tool != "parallelize":
            cell += f" ({_ratio(result['ratio'])})"
        rows.setdefault(tool, {})[method] = cell
    lines = [
        "| cold start, ms | " + " | ".join(methods) + " | import, ms |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    imports: dict[str, float] = {}
    for label, result in cold["results"].items():
        imports[label.split(" (")[0]] = result["import_ms"]
    for tool, cells in rows.items():
        lines.append(
            f"| {tool} | "
            + " | ".join(cells.get(m, "") for m in methods)
            + f" | {fmt(imports[tool], 'ms')} |"
        )
    return "\n".join(lines)


def stream_table(stream: dict[str, Any]) -> str:
    lines = [
        "| streaming | items/s | peak RSS of the caller, MB | peak RSS of a worker, MB |",
        "|---|---|---|---|",
    ]
    for label, result in stream["results"].items():
        lines.append(
            f"| {label} | {fmt(result['items/s'], 'items/s')} | "
            f"{result['peak_mb']:.0f} | {result['worker_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def backlog_table(backlog: dict[str, Any]) -> str:
    lines = [
        "| slow consumer of 10 kB results | seconds | peak RSS of the caller, +MB "
        "| peak private memory of the caller, +MB |",
        "|---|---|---|---|",
    ]
    for tool, result in backlog["results"].items():
        lines.append(
            f"| {tool} | {result['seconds']:.2f} | {result['peak_mb']:.0f} "
            f"| {result['private_mb']:.0f} |"
        )
    return "\n".join(lines)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue that this run measured: what it asks, what was measured, met?"""
    w = data["workloads"]
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool) -> None:
        out.append({"target": target, "measured": measured, "met": bool(met)})

    def ratio(workload: str, tool: str) -> float:
        return float(w[workload]["results"][tool]["ratio"])

    def best_anchor(workload: str) -> tuple[str, float]:
        results = w[workload]["results"]
        name = max(ANCHORS, key=lambda t: results[t]["value"])
        return name, float(results[name]["value"])

    if "tiny" in w:
        pool, jl, mp = ratio("tiny", "mp.Pool"), ratio("tiny", "joblib"), ratio("tiny", "mpire")
        add("tiny: items/s >= Pool.map", f"{pool:.2f}x Pool.map", pool >= 1)
        add(
            "tiny: >= 10x joblib and mpire",
            f"{jl:.1f}x joblib, {mp:.1f}x mpire",
            jl >= 10 and mp >= 10,
        )
        slower = 1 - 1 / ratio("tiny", "parallelize+progress")
        measured = f"{slower:+.1%} with progress"
        if "bar_ms" in w["tiny"]:  # the bar timed alone, against one map's median time
            map_ms = 1000 * statistics.median(w["tiny"]["results"]["parallelize"]["seconds"])
            bar = w["tiny"]["bar_ms"]
            measured += f" (the bar alone: {bar:.2f} ms a map, {bar / map_ms:.1%})"
        add("tiny: progress=True costs <= 5%", measured, slower <= 0.05)
    for name in ("cpu", "uneven"):
        if name in w:
            speedup = w[name]["results"]["parallelize"]["value"]
            floor = 1.9 if name == "cpu" else w[name]["ideal"] / 1.05
            anchor, best = best_anchor(name)
            ceiling = w[name]["results"].get("ceiling", {}).get("value", math.nan)
            add(
                f"{name}: speed-up >= {floor:.2f} and >= best anchor",
                f"{speedup:.2f} (best anchor {anchor} {best:.2f}; this machine's ceiling "
                f"{ceiling:.2f})",
                speedup >= floor and speedup >= best,
            )
    for name in ("bigarg", "bigret"):
        if name in w:
            jl = ratio(name, "joblib")
            add(f"{name}: >= 3x faster than joblib", f"{jl:.2f}x joblib", jl >= 3)
    if "latency" in w:
        pool = ratio("latency", "mp.Pool")
        add("warm 2-item map: no slower than Pool.map", f"{pool:.2f}x Pool.map", pool >= 1)
    if "cold" in w:
        results = w["cold"]["results"]
        pairs = [
            (m, results[f"mp.Pool ({m})"]["ratio"])
            for m in ("fork", "spawn", "forkserver")
            if f"mp.Pool ({m})" in results
        ]
        add(
            "cold start: no slower than Pool, same start method",
            ", ".join(f"{m} {r:.2f}x" for m, r in pairs),
            all(r >= 1 for _, r in pairs),
        )
    if "stream" in w:
        growth = w["stream"]["growth_mb"]
        sizes = [r["items"] for k, r in w["stream"]["results"].items() if k.startswith("par")]
        add(
            f"streaming: peak RSS at {max(sizes):,} items within 50 MB of {min(sizes):,}",
            f"{growth:+.1f} MB",
            growth <= 50,
        )
    return out


def targets_table(found: list[dict[str, Any]]) -> str:
    lines = ["| target | measured (parallelize vs tool) | status |", "|---|---|---|"]
    for t in found:
        lines.append(f"| {t['target']} | {t['measured']} | {'met' if t['met'] else 'NOT met'} |")
    return "\n".join(lines)


def render(data: dict[str, Any]) -> str:
    """The whole report as Markdown (it reads fine as plain text too)."""
    machine = data["machine"]
    parts = [
        f"{machine['date']} | {machine['cpu']} | {machine['cpus']} CPUs | "
        f"Python {machine['python']} | {data['workers']} workers | load average "
        f"{machine['loadavg_1min']}-{machine['loadavg_1min_end']} | `{data['command']}`",
        "",
        "Cells: median (how many times better parallelize does than that tool).",
        map_table(data["workloads"]),
    ]
    if "cold" in data["workloads"]:
        parts += ["", cold_table(data["workloads"]["cold"])]
    if "stream" in data["workloads"]:
        parts += ["", stream_table(data["workloads"]["stream"])]
    if "backlog" in data["workloads"]:
        parts += ["", backlog_table(data["workloads"]["backlog"])]
    parts += ["", targets_table(data["targets"])]
    return "\n".join(parts)


def save_record(path: Path, script: str, workers: int, results: dict[str, Any]) -> None:
    """Write a standalone benchmark's ``results`` to ``path`` as JSON, with the date, the
    machine, the commit and the command that made them (``script`` and this run's arguments)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    record = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "platform": platform.platform(),
        "commit": commit,
        "command": f"python {script} " + " ".join(sys.argv[1:]),
        "workers": workers,
        "results": results,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
