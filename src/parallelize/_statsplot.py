"""``MapStats.plot()``: each worker's chunks on a time line, drawn with matplotlib (imported here
only, when a plot is asked for)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COMPUTE = "#4c72b0"
OVERHEAD = "#dd8452"
IDLE = "#e5e5e5"


def plot(stats: Any, ax: Any = None) -> Figure:
    """``stats`` (a MapStats) as a Gantt chart: one row per worker, a bar per chunk split into
    overhead then compute, the gaps between bars idle; the slowest item named in the title."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            'MapStats.plot() needs matplotlib; install it with: pip install "parallelize[plot]"',
            name="matplotlib",
        ) from exc
    if ax is None:
        figure, ax = plt.subplots(figsize=(9, 1.4 + 0.45 * max(1, stats.workers)))
    else:
        figure = ax.figure
    rows = max(1, stats.workers)
    for row in range(rows):  # the idle background: the worker's whole time
        ax.broken_barh(
            [(stats.startup_s, stats.wall_s - stats.startup_s)], (row - 0.4, 0.8), facecolors=IDLE
        )
    compute: dict[int, list[tuple[float, float]]] = {}
    overhead: dict[int, list[tuple[float, float]]] = {}
    for worker, start, end, seconds in stats.timeline:
        work = min(seconds, end - start)
        overhead.setdefault(worker, []).append((start, end - start - work))
        compute.setdefault(worker, []).append((end - work, work))
    for worker, spans in overhead.items():
        ax.broken_barh(spans, (worker - 0.4, 0.8), facecolors=OVERHEAD)
    for worker, spans in compute.items():
        ax.broken_barh(
            spans, (worker - 0.4, 0.8), facecolors=COMPUTE, edgecolor="white", linewidth=0.3
        )
    ax.set_yticks(range(rows), [f"worker {row}" for row in range(rows)])
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlim(0, stats.wall_s)
    ax.set_xlabel("seconds since the map started")
    title = (
        f"{stats.function}: {stats.items:,} items on {stats.workers_used} of {stats.workers} "
        f"{stats.backend} workers"
    )
    if stats.slowest is not None:
        title += f"; slowest item {stats.slowest[0]} ({stats.slowest[1]:.3g} s)"
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color=COMPUTE, label="compute"),
            Patch(color=OVERHEAD, label="overhead"),
            Patch(color=IDLE, label="idle"),
        ],
        loc="upper right",
        bbox_to_anchor=(1.0, -0.1 if rows > 2 else -0.2),
        fontsize=8,
        ncols=3,
        frameon=False,
    )
    ax.set_title(title, fontsize=10, loc="left")
    figure.tight_layout()
    return figure
