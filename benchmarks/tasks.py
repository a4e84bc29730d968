"""The functions the workloads map. Plain module-level functions, so every tool can pickle them.

This module imports only the standard library (NumPy lazily), so a worker that imports it by
reference pays next to nothing.
"""

from __future__ import annotations

from typing import Any

# Length of the NumPy arrays of the big-argument workloads: 1 Mi float64, 8 MB each.
ARRAY_LEN = 1 << 20


def square(x: int) -> int:
    """The tiny task: far cheaper than a pickle round trip, so only overhead is measured."""
    return x * x


def spin(n: int) -> int:
    """Pure-Python CPU work proportional to ``n`` (deterministic; no sleeping, no wall clock)."""
    total = 0
    for i in range(n):
        total += i ^ (i >> 3)
    return total


def checksum(array: Any) -> float:
    """A cheap reduction of a big array: the array's trip to the worker is the cost."""
    return float(array.sum())


def make_array(seed: int) -> Any:
    """A fresh 8 MB array built in the worker: its trip back to the caller is the cost."""
    import numpy as np  # workers that build no array never import it

    return np.full(ARRAY_LEN, float(seed))


def kilobytes(x: int) -> bytes:
    """A 10 kB result, a new object each time: what a slow consumer leaves waiting."""
    return x.to_bytes(8, "little") * 1250


def logged_square(x: int) -> int:
    """The tiny task with one log record per item: what forwarding a worker's logging costs."""
    import logging

    logging.getLogger("bench").info("item %d", x)
    return x * x


def logged_spin(n: int) -> int:
    """The cpu task with one log record per item."""
    import logging

    logging.getLogger("bench").info("spin %d", n)
    return spin(n)


def log_to_devnull() -> None:
    """An initializer: the worker writes its own INFO records to /dev/null (output="inherit")."""
    import logging
    import os

    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
