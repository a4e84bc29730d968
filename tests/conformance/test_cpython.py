"""Conformance: CPython's own Pool and ProcessPoolExecutor tests, on parallelize's classes.

Each part and start method runs in a fresh interpreter (``run_cpython.py``): the swap of the
standard library's classes, the start method the tests set and CPython's test harness are
process-wide, and this suite's ``filterwarnings = error`` is not theirs. The tests left out are
listed, each with its reason, in ``EXCLUDED.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("run_cpython.py")
# The slowest part (the executor under spawn) takes about 40 s on two cores; the margin covers a
# loaded machine. The subprocess gets a little less, so that it is killed before pytest gives up.
PART_TIMEOUT = 600

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PART_TIMEOUT + 60)]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("part", ["pool", "executor"])
def test_cpython_conformance(part: str, start_method: str) -> None:
    run = subprocess.run(
        [sys.executable, str(RUNNER), part, start_method],
        capture_output=True,
        text=True,
        timeout=PART_TIMEOUT,
        check=False,
    )
    output = run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("CONFORMANCE-SUMMARY ")]
    assert lines, f"the runner printed no summary (exit status {run.returncode}):\n{output}"
    summary = json.loads(lines[-1].split(" ", 1)[1])
    if "skipped_part" in summary:
        pytest.skip(summary["skipped_part"])
    assert run.returncode == 0 and not summary["failed"], (
        f"CPython's tests failed on parallelize: {summary['failed']}\n{output}"
    )
    assert summary["run"] > 0
