"""Draw the results JSON as a bar chart of ratios: ``python -m benchmarks.chart [JSON] [PNG]``.

One group of bars per workload, one bar per tool: how many times better parallelize does than
that tool (log scale; right of the line at 1, parallelize wins). Defaults: the latest results,
drawn to ``docs/img/benchmarks.png``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"
DEFAULT_PNG = ROOT / "docs" / "img" / "benchmarks.png"
TOOLS = ("mp.Pool", "ProcessPoolExecutor", "joblib", "mpire")
COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2")


def rows(data: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, ratio per tool) for each workload; cold start at parallelize's default method."""
    out = []
    for name, entry in data["workloads"].items():
        results = entry["results"]
        if name in ("stream", "backlog"):  # memory, in a table of its own
            continue
        if name == "cold":
            method = "forkserver"
            ratios = {
                t: results[f"{t} ({method})"]["ratio"]
                for t in TOOLS[:2]
                if f"{t} ({method})" in results
            }
            ratios.update({t: results[t]["ratio"] for t in TOOLS[2:] if t in results})
            # Each against parallelize with the same start method (joblib's loky: forkserver).
            out.append(("cold start\n(Pool, PPE: forkserver;\nmpire: fork; joblib: loky)", ratios))
            continue
        label = entry["title"].split(":")[0] if ":" in entry["title"] else entry["title"]
        out.append((label, {t: results[t]["ratio"] for t in TOOLS if t in results}))
    return out


def draw(data: dict[str, Any], png: Path) -> None:
    import matplotlib  # only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    groups = rows(data)
    height = 0.8 / len(TOOLS)
    fig, ax = plt.subplots(figsize=(8, 0.9 * len(groups) + 1.2))
    for t, (tool, colour) in enumerate(zip(TOOLS, COLOURS, strict=True)):
        ys = [g - 0.4 + height * (t + 0.5) for g in range(len(groups))]
        values = [ratios.get(tool, float("nan")) for _, ratios in groups]
        ax.barh(ys, values, height=height, color=colour, label=tool)
        for y, value in zip(ys, values, strict=True):
            if not math.isnan(value):
                label = f"{value:.2f}x" if value < 10 else f"{value:.0f}x"
                ax.text(value * 1.05, y, label, va="center", fontsize=7)
    ax.axvline(1, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(groups)), [label for label, _ in groups])
    ax.invert_yaxis()
    ax.set_xlabel("times better parallelize does than the tool (right of 1: parallelize wins)")
    machine = data["machine"]
    ax.set_title(
        f"parallelize vs anchors, {data['workers']} workers; {machine['cpu']}, "
        f"Python {machine['python']}, {machine['date'][:10]}",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else DEFAULT_JSON
    png = Path(argv[1]) if len(argv) > 1 else DEFAULT_PNG
    draw(json.loads(source.read_text()), png)
    print(png)


if __name__ == "__main__":
    main(sys.argv[1:])
