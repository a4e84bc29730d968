"""Aggregate a large CSV file in parallel, chunk by chunk, with ``imap``.

    python examples/csv_chunks.py SALES.csv      # columns: region,product,quantity,price
    python examples/csv_chunks.py --small        # on a generated temporary file

The file is read lazily in chunks of lines; each chunk is parsed and summed in a worker, and the
partial sums are merged as they arrive (``ordered=False``). Memory stays flat however big the file
is, because ``imap`` reads its input only as fast as the workers consume it.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import random
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from parallelize import imap

LINES_PER_CHUNK = 5_000  # big enough that a chunk is ~10 ms of parsing, small enough to balance


def chunks(path: Path, lines: int = LINES_PER_CHUNK) -> Iterator[tuple[str, str]]:
    """(header, block of lines) pairs: the unit of work a worker parses."""
    with path.open(newline="") as file:
        header = next(file)
        while block := list(itertools.islice(file, lines)):
            yield header, "".join(block)


def revenue_by_region(chunk: tuple[str, str]) -> dict[str, float]:
    """Parse one block of CSV lines; the revenue of each region in it."""
    header, block = chunk
    totals: defaultdict[str, float] = defaultdict(float)
    for row in csv.DictReader(io.StringIO(header + block)):
        totals[row["region"]] += int(row["quantity"]) * float(row["price"])
    return totals


def merge(totals: defaultdict[str, float], partial: dict[str, float]) -> None:
    for region, revenue in partial.items():
        totals[region] += revenue


def total_revenue(path: Path, workers: int | None = None) -> dict[str, float]:
    """The revenue per region of the whole file."""
    totals: defaultdict[str, float] = defaultdict(float)
    for partial in imap(revenue_by_region, chunks(path), workers=workers, ordered=False):
        merge(totals, partial)  # partial sums arrive in completion order
    return dict(totals)


def make_csv(path: Path, rows: int = 40_000, seed: int = 7) -> None:
    """Write a sales CSV of ``rows`` random rows."""
    rng = random.Random(seed)
    regions = ["north", "south", "east", "west"]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["region", "product", "quantity", "price"])
        for _ in range(rows):
            writer.writerow(
                [
                    rng.choice(regions),
                    f"p{rng.randrange(100)}",
                    rng.randrange(1, 10),
                    rng.randrange(100, 10_000) / 100,
                ]
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "csv", nargs="?", type=Path, help="a CSV with region,quantity,price columns"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--small", action="store_true", help="use a generated temporary CSV")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.csv
        if args.small:
            path = Path(tmp) / "sales.csv"
            make_csv(path)
        elif path is None:
            parser.error("give a CSV file, or --small")
        totals = total_revenue(path, args.workers)
        if args.small:
            serial: defaultdict[str, float] = defaultdict(float)
            for chunk in chunks(path):
                merge(serial, revenue_by_region(chunk))
            assert all(abs(totals[k] - serial[k]) < 1e-6 * serial[k] for k in serial)
        for region, revenue in sorted(totals.items()):
            print(f"{region:<8} {revenue:>14,.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
