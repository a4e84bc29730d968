"""The workloads, and the one runner that times any of them on any tool.

A workload is data: a function, its items, how many timed calls make one repetition, how to turn
seconds into the figure reported, and a check that the tool computed the right thing. The runner
opens every tool's warm pool first, then runs the repetitions round robin (tool after tool, not
all repetitions of one tool in a row, in a new order every round) so that a drift in the
machine's speed hits every tool alike.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from . import tasks
from .tools import open_tool

ANCHORS = ("mp.Pool", "ProcessPoolExecutor", "joblib", "mpire")
# A tool whose call takes less than this is "fast": it is timed in every round (see ``rounds``).
FAST_SECONDS = 0.25


@dataclasses.dataclass
class Workload:
    name: str
    title: str
    fn: Callable[[Any], Any]
    make_items: Callable[[], list[Any]]  # called when the workload runs, dropped after
    unit: str  # "items/s", "speed-up", "s/call" or "ms/call"
    tools: tuple[str, ...]
    reps: int = 3
    calls: int = 1  # timed calls per repetition (many for the latency workload)
    # Rounds per repetition: the fast tools run in each, the slow ones in the first only. A fast
    # call is the noisiest, and more of its samples cost little.
    rounds: int = 1
    item_cap: dict[str, int] = dataclasses.field(default_factory=dict)  # slow tools: fewer items
    expect: Callable[[list[Any]], Any] | None = None  # the correct result of ``fn`` over items

    def count_for(self, tool: str, total: int) -> int:
        return min(total, self.item_cap.get(tool, total))

    @property
    def higher_is_better(self) -> bool:
        return self.unit in ("items/s", "speed-up")


def calibrate_spin(ms: float) -> int:
    """``tasks.spin`` iterations that take ``ms`` milliseconds in this process (best of 5)."""
    n = 20_000
    best = math.inf
    for _ in range(5):
        began = time.perf_counter()
        tasks.spin(n)
        best = min(best, time.perf_counter() - began)
    return max(1, round(n * ms / 1000 / best))


def uneven_costs(count: int, seed: int = 5) -> list[float]:
    """Task times in ms from 0.1 to 20, heavily skewed: most are short, a few are 100x longer.

    ``0.1 * 200 ** (u ** 3)`` for ``u`` uniform: the median task is ~0.2 ms, the mean ~1.9 ms,
    and the longest few carry a large share of the work, landing at random places in the input.
    """
    rng = random.Random(seed)
    return [0.1 * 200 ** (rng.random() ** 3) for _ in range(count)]


def build(workers: int, quick: bool) -> dict[str, Workload]:
    """Every workload, sized to finish in a few minutes on 2 cores (seconds with ``quick``)."""
    scale = 10 if quick else 1
    per_ms = calibrate_spin(1.0)
    every = ("parallelize", "serial", *ANCHORS)
    speed_ups = ("parallelize", "serial", "ceiling", *ANCHORS)
    tiny_n = 200_000 // scale
    cpu = [round(5 * per_ms)] * (400 // scale)
    uneven = [round(c * per_ms) for c in uneven_costs(1200 // scale)]
    arrays = 64 // scale
    workloads = [
        Workload(
            "tiny",
            f"tiny: x*x over {tiny_n:,} ints",
            tasks.square,
            lambda: list(range(tiny_n)),
            "items/s",
            ("parallelize", "parallelize+progress", "serial", *ANCHORS),
            reps=2 if quick else 5,
            rounds=1 if quick else 5,
            # chunksize=1 runs at ~8k items/s: 20k items keep it to a few seconds.
            item_cap={"ProcessPoolExecutor": tiny_n // 10},
            expect=lambda items: [x * x for x in items],
        ),
        Workload(
            "cpu",
            f"cpu: {len(cpu)} items of ~5 ms",
            tasks.spin,
            lambda: cpu,
            "speed-up",
            speed_ups,
            reps=2 if quick else 7,
        ),
        Workload(
            "uneven",
            f"uneven: {len(uneven)} items of 0.1-20 ms, skewed",
            tasks.spin,
            lambda: uneven,
            "speed-up",
            speed_ups,
            reps=2 if quick else 7,
        ),
        Workload(
            "bigarg",
            f"bigarg: {arrays} arrays of 8 MB to the workers",
            tasks.checksum,
            lambda: _arrays(arrays),
            "s/call",
            every,
            reps=2 if quick else 3,
        ),
        Workload(
            "bigret",
            f"bigret: {arrays} arrays of 8 MB back from the workers",
            tasks.make_array,
            lambda: list(range(arrays)),
            "s/call",
            every,
            reps=2 if quick else 3,
        ),
        Workload(
            "latency",
            "warm 2-item map",
            tasks.square,
            lambda: [1, 2],
            "ms/call",
            ("parallelize", *ANCHORS),
            reps=3,
            calls=10 if quick else 40,
            expect=lambda items: [x * x for x in items],
        ),
    ]
    return {w.name: w for w in workloads}


def bar_cost_ms(total: int, updates: int = 40, reps: int = 50) -> float:
    """What ``progress=True`` adds to one map, measured alone (median ms): opening the bar,
    ``updates`` updates (about one per chunk of the tiny map) and closing it, into /dev/null.

    The side-by-side ratio of the tiny map with and without a bar moves by more than this from
    run to run; this figure says how much of it is the bar.
    """
    import contextlib
    import os

    from parallelize._core.progress import open_bar

    seconds = []
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        open_bar(True, total).close()  # imports tqdm
        for _ in range(reps):
            began = time.perf_counter()
            bar = open_bar(True, total)
            for _ in range(updates):
                bar.update(total // updates)
            bar.close()
            seconds.append(time.perf_counter() - began)
    return statistics.median(seconds) * 1000


def _arrays(count: int) -> list[Any]:
    import numpy as np

    return [np.full(tasks.ARRAY_LEN, float(i)) for i in range(count)]


def run(workload: Workload, workers: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Time ``workload`` on each of its tools; per tool, every timed call's seconds."""
    all_items = workload.make_items()
    seconds: dict[str, list[float]] = {name: [] for name in workload.tools}
    opened = {}
    try:
        for name in workload.tools:
            opened[name] = open_tool(name, (workload.fn, all_items[: 2 * workers]), workers)
        fast: dict[str, bool] = {}  # from each tool's first timed call
        for rep in range(workload.reps):
            for round_ in range(workload.rounds):
                # A new order every round (seeded: the same in every run), so that no tool always
                # runs right after the same other one, whose pool may still be winding down.
                shuffle = random.Random(rep * workload.rounds + round_)
                order = shuffle.sample([*opened.items()], len(opened))
                for name, tool in order:
                    if round_ > 0 and not fast[name]:
                        continue  # a slow tool: once per repetition
                    items = all_items[: workload.count_for(name, len(all_items))]
                    for _ in range(workload.calls):
                        began = time.perf_counter()
                        out = tool.map(workload.fn, items)
                        seconds[name].append(time.perf_counter() - began)
                    fast.setdefault(name, seconds[name][-1] < FAST_SECONDS)
                    if rep == round_ == 0:
                        _check(workload, name, items, out)
                    del out
            log(
                f"  {workload.name} rep {rep + 1}/{workload.reps}: "
                + ", ".join(f"{name} {seconds[name][-1]:.3g}s" for name in opened)
            )
    finally:
        for tool in opened.values():
            tool.close()
    counts = {name: workload.count_for(name, len(all_items)) for name in seconds}
    return summarise(workload, seconds, counts, workers)


def _paired_speed_up(serial: list[float], times: list[float]) -> float:
    """The median over repetitions of serial time / the tool's time in the same repetition.

    Paired, because the machine's speed drifts by more than the differences measured: a serial
    run and a parallel one a second apart see the same machine, runs a minute apart may not.

    >>> _paired_speed_up([2.0, 4.0, 2.0], [1.0, 2.0, 1.1])
    2.0
    """
    return statistics.median(s / t for s, t in zip(serial, times, strict=True))


def _check(workload: Workload, tool: str, items: list[Any], out: list[Any]) -> None:
    if len(out) != len(items):
        raise AssertionError(f"{tool} returned {len(out)} results for {len(items)} items")
    if workload.expect is not None and out != workload.expect(items):
        raise AssertionError(f"{tool} computed wrong results on {workload.name}")
    wrong = workload.name == "bigret" and any(
        float(array[-1]) != i for array, i in zip(out, items, strict=True)
    )
    if wrong:
        raise AssertionError(f"{tool} returned wrong arrays on bigret")


def summarise(
    workload: Workload, seconds: dict[str, list[float]], counts: dict[str, int], workers: int
) -> dict[str, Any]:
    """Medians in the workload's unit, and each tool's ratio to parallelize.

    ``ratio`` is how many times better parallelize does than the tool (above 1: parallelize
    wins), whatever the unit: faster, more items per second or a larger speed-up.
    """
    value: dict[str, float] = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        if workload.unit == "speed-up":
            value[name] = _paired_speed_up(seconds["serial"], times)
        else:
            value[name] = {
                "items/s": counts[name] / median,
                "s/call": median,
                "ms/call": median * 1000,
            }[workload.unit]
    if "ceiling" in value and workload.unit == "speed-up":
        value["ceiling"] *= workers  # each of its processes ran all the items, not a share
    reference = value["parallelize"]
    results = {
        name: {
            "value": v,
            "ratio": reference / v if workload.higher_is_better else v / reference,
            "seconds": seconds[name],
            "items": counts[name],
        }
        for name, v in value.items()
    }
    summary = {
        "title": workload.title,
        "unit": workload.unit,
        "higher_is_better": workload.higher_is_better,
        "results": results,
    }
    if workload.unit == "speed-up":
        summary["ideal"] = workers  # total work / workers: the perfect schedule
    return summary
