"""A NumPy job: estimate pi by Monte Carlo, one independent random stream per task.

    python examples/numpy_job.py [--tasks 64] [--samples 2000000]
    python examples/numpy_job.py --small

Each task gets only a seed, builds its own generator and returns one number, so almost nothing
is pickled. Seeds come from ``numpy.random.SeedSequence.spawn``, so the streams are independent
and the result is the same for any number of workers. (parallelize gives each worker process its
share of the CPUs for NumPy's own BLAS/OpenMP threads, so workers do not oversubscribe the cores.)
"""

from __future__ import annotations

import argparse
import math
import sys

from parallelize import pmap

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is an optional dependency of this example
    np = None  # type: ignore[assignment]


def hits_in_circle(task: tuple[np.random.SeedSequence, int]) -> int:
    """How many of ``samples`` random points of the unit square fall in the quarter circle."""
    seed, samples = task
    rng = np.random.default_rng(seed)
    points = rng.random((samples, 2))
    return int(np.count_nonzero((points**2).sum(axis=1) <= 1.0))


def estimate_pi(tasks: int, samples: int, seed: int = 2024, workers: int | None = None) -> float:
    seeds = np.random.SeedSequence(seed).spawn(tasks)
    hits = pmap(
        hits_in_circle,
        [(s, samples) for s in seeds],
        workers=workers,
        progress="sampling",
    )
    return 4 * sum(hits) / (tasks * samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2_000_000, help="points per task")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="a quick run with few samples")
    args = parser.parse_args(argv)
    if np is None:
        print("this example needs numpy: pip install numpy")
        return 0
    if args.small:
        args.tasks, args.samples = 8, 50_000
    estimate = estimate_pi(args.tasks, args.samples, workers=args.workers)
    points = args.tasks * args.samples
    print(f"pi ~ {estimate:.6f} (error {abs(estimate - math.pi):.1e}) from {points:,} points")
    if args.small:
        assert estimate == estimate_pi(args.tasks, args.samples, workers=1), "not reproducible"
        assert abs(estimate - math.pi) < 0.05
    return 0


if __name__ == "__main__":
    sys.exit(main())
