"""Paired timings for the standalone "what does this option cost" scripts: each case is a plain
call and the same call with the option, timed in alternating order, so a slow moment of the
machine hits both sides; the figure is the ratio of their medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

Call = Callable[[], object]


def seconds(call: Call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def alternate(
    cases: dict[str, tuple[Call, Call]], rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Each case's plain and optioned call ``rounds`` times, round robin, the first side first
    on odd rounds and last on even ones."""
    samples: dict[str, dict[str, list[float]]] = {
        name: {"plain": [], "observed": []} for name in cases
    }
    for round_ in range(rounds):
        for name, (plain, observed) in cases.items():
            sides = [("plain", plain), ("observed", observed)]
            for side, call in sides if round_ % 2 else reversed(sides):
                samples[name][side].append(seconds(call))
    return samples


def ratio_table(
    samples: dict[str, dict[str, list[float]]], option: str
) -> tuple[str, dict[str, Any]]:
    """A Markdown table of the medians and their ratio (plain over optioned: 1.00 is free,
    0.50 twice as slow), and the same as a record to save."""
    lines = [
        f"| case | plain (s) | {option} (s) | ratio (1.00: free) |",
        "|---|---|---|---|",
    ]
    table: dict[str, Any] = {}
    for name, by_side in samples.items():
        plain, observed = (statistics.median(by_side[s]) for s in ("plain", "observed"))
        ratio = plain / observed
        table[name] = {"plain": plain, "observed": observed, "ratio": ratio, **by_side}
        lines.append(f"| {name} | {plain:.3g} | {observed:.3g} | {ratio:.2f} |")
    return "\n".join(lines), table
