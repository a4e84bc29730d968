"""Every program in ``examples/`` runs, on small data it makes itself, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Seconds an example may take with --small: each needs ~1-5 s on 2 cores, a Dask cluster ~5 s.
EXAMPLE_TIMEOUT = 90
# Examples that need an optional package, skipped (not failed) when it is missing.
NEEDS = {"dask_cluster.py": "distributed", "numpy_job.py": "numpy"}


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # -W error, not inherited by engine helpers
    env.pop("PARALLELIZE_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )


def test_every_example_is_tested() -> None:
    tested = {
        "hash_files.py",
        "csv_chunks.py",
        "scrape_threads.py",
        "numpy_job.py",
        "uneven_stats.py",
    } | set(NEEDS)
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 30)
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hash_files.py", "all digests match a serial run"),
        ("csv_chunks.py", "north"),
        ("scrape_threads.py", "1 failed as expected"),
        ("numpy_job.py", "pi ~ 3.1"),
        ("uneven_stats.py", "the map's stats"),
        pytest.param("dask_cluster.py", "takes the most steps", marks=pytest.mark.dask),
    ],
)
def test_example_runs_on_small_data(name: str, expected: str) -> None:
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    result = run_example(name, "--small")
    assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert expected in result.stdout, result.stdout
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 30)
def test_example_usage_errors_exit_2() -> None:
    result = run_example("hash_files.py")  # neither a folder nor --small
    assert result.returncode == 2
    assert "give a folder" in result.stderr


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 30)
def test_hash_files_on_a_real_folder(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello\n")
    result = run_example("hash_files.py", str(tmp_path), "--workers", "2")
    assert result.returncode == 0, result.stderr
    # sha256 of "hello\n", as printed by sha256sum
    digest = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert result.stdout.split() == [digest, str(tmp_path / "a.txt")]
