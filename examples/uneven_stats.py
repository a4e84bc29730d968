"""Why is this map slow? Count primes in ranges of very different sizes and let the stats say.

    python examples/uneven_stats.py                 # ranges up to a million, and one of 5 million
    python examples/uneven_stats.py --small         # a few seconds of work
    python examples/uneven_stats.py --plot out.png  # also draw each worker's timeline

Most ranges are small, a few are large and one is huge: the kind of map where one item holds
every worker up. ``collect_stats()`` records the map; its report names the slowest item and
says what to do about it, and ``--plot`` draws the timeline (needs matplotlib).
"""

from __future__ import annotations

import argparse
import logging
import random

from parallelize import collect_stats, parallel

log = logging.getLogger("primes")


@parallel
def count_primes(limit: int) -> int:
    """How many primes are below ``limit`` (a sieve, one multiple at a time: pure Python)."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"[:limit]
    for n in range(2, int(limit**0.5) + 1):
        if sieve[n]:
            for multiple in range(n * n, limit, n):
                sieve[multiple] = 0
    found = sum(sieve)
    if limit > 500_000:
        log.info("a big range: %d primes below %d", found, limit)
    return found


def limits(count: int, biggest: int, seed: int = 7) -> list[int]:
    """``count`` range sizes, heavy-tailed: mostly small, a few large, the biggest at 2/3."""
    rng = random.Random(seed)
    sizes = [int(biggest * rng.random() ** 6) + 100 for _ in range(count)]
    sizes[count * 2 // 3] = biggest * 5
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few seconds of work")
    parser.add_argument("--plot", metavar="PNG", help="save each worker's timeline there")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sizes = limits(60, 50_000 if args.small else 1_000_000)
    count = count_primes.options(workers=args.workers)
    count([10] * 10)  # start the workers first: the stats are of the map, not of a cold start
    with collect_stats() as collected:
        counts = count(sizes)
    (stats,) = collected.maps
    print(f"{sum(counts)} primes counted in {len(sizes)} ranges; the map's stats:")
    print(stats)
    if args.plot:
        stats.plot().savefig(args.plot, dpi=110)
        print(f"timeline saved to {args.plot}")


if __name__ == "__main__":
    main()
