"""What ``checkpoint=`` costs: every result written to the map's SQLite file as it reaches the
caller, and a resumed run that reads every result back instead of computing it.

Run from the repository root: ``python benchmarks/bench_checkpoint.py [--quick]``. Prints a
Markdown table (median seconds of the rounds, and the ratio: the plain map's time over the
checkpointed one's, so 1.00 means free and 0.50 twice as slow) and writes it, with the machine
and the command, to ``benchmarks/results/checkpoint.json``.

* the cpu workload (200 items of about 5 ms) and the tiny one (``x*x`` of 200,000 ints), each
  with a fresh file per run (every result written);
* the tiny workload resumed: every result is already in the file, so the run computes nothing
  and reads all 200,000 back.

Every pool is warm, and the plain and checkpointed calls alternate.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import parallelize
from benchmarks.paired import Call, alternate, ratio_table
from benchmarks.report import save_record
from benchmarks.tasks import spin, square
from benchmarks.workloads import calibrate_spin

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint.json"
TINY_ITEMS = 200_000
CPU_ITEMS = 200
CPU_ITEM_MS = 5.0


def cases(folder: Path, workers: int) -> dict[str, tuple[Call, Call]]:
    tiny = list(range(TINY_ITEMS))
    cpu = [calibrate_spin(CPU_ITEM_MS)] * CPU_ITEMS
    fresh = (folder / f"run-{n}.ckpt" for n in itertools.count())
    stored = folder / "stored.ckpt"
    parallelize.pmap(square, tiny, workers=workers, checkpoint=stored)

    return {
        "cpu, every result written": (
            lambda: parallelize.pmap(spin, cpu, workers=workers),
            lambda: parallelize.pmap(spin, cpu, workers=workers, checkpoint=next(fresh)),
        ),
        "tiny, every result written": (
            lambda: parallelize.pmap(square, tiny, workers=workers),
            lambda: parallelize.pmap(square, tiny, workers=workers, checkpoint=next(fresh)),
        ),
        "tiny, resumed: every result read back": (
            lambda: parallelize.pmap(square, tiny, workers=workers),
            lambda: parallelize.pmap(square, tiny, workers=workers, checkpoint=stored),
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        parallelize.pmap(spin, [1] * 10, workers=args.workers)  # warm
        samples = alternate(cases(Path(folder), args.workers), 2 if args.quick else 5)
    text, table = ratio_table(samples, "checkpoint")
    print(text)
    save_record(RESULTS, "benchmarks/bench_checkpoint.py", args.workers, table)


if __name__ == "__main__":
    main()
