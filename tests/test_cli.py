"""``python -m parallelize``: the demo and bench commands, their help and their exit codes."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from parallelize.__main__ import build_parser, busy_note, main
from parallelize._cpu import usable_cpus

# Seconds a small CLI run may take: interpreter start, a pool start and a fraction of a second of
# work, on a loaded 2-core machine.
CLI_TIMEOUT = 60


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parallelize", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


@pytest.mark.timeout(CLI_TIMEOUT + 30)
def test_demo_small_runs_and_reports_a_speedup() -> None:
    result = run_cli("demo", "--items", "20", "--size", "500", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "speed-up:" in result.stdout
    assert "x with 2 worker(s)" in result.stdout
    assert "20/20" in result.stderr  # the progress bar, on stderr, counting items
    assert "Traceback" not in result.stderr


def test_busy_note_is_silent_on_a_quiet_machine() -> None:
    assert busy_note(item_share=0.97, loop_share=0.99, workers=2, cpus=2, load=1.9) is None
    # Too little work to measure (None) is not taken for a busy machine.
    assert busy_note(item_share=None, loop_share=None, workers=2, cpus=2, load=9.0) is None
    # More workers than CPUs share the cores by design: 45% each of 2 CPUs among 4 is as expected.
    assert busy_note(item_share=0.45, loop_share=0.95, workers=4, cpus=2, load=4.0) is None


@pytest.mark.parametrize(
    ("item_share", "loop_share", "says"),
    [
        (0.5, 0.99, "the mapped items got 50% of a CPU each"),
        (0.99, 0.6, "the serial loop got 60% of a CPU"),
        (0.3, 0.7, "items got 30% of a CPU each while they ran and the serial loop got 70%"),
    ],
)
def test_busy_note_says_what_was_starved(item_share: float, loop_share: float, says: str) -> None:
    note = busy_note(item_share=item_share, loop_share=loop_share, workers=2, cpus=2, load=3.5)
    assert note is not None
    assert "busy" in note and says in note and "load average 3.5 on 2 usable CPU(s)" in note
    without_load = busy_note(
        item_share=item_share, loop_share=loop_share, workers=2, cpus=2, load=None
    )
    assert without_load is not None and "load average" not in without_load


# Seconds the CPU hogs of the busy-machine test may run: the demo it competes with takes ~2 s.
HOG_SECONDS = CLI_TIMEOUT


@pytest.mark.timeout(CLI_TIMEOUT + 30)
def test_demo_says_when_the_machine_is_too_busy() -> None:
    """With one busy loop per usable CPU running, a worker gets about half a CPU: the demo says
    its speed-up means little, rather than reporting it as parallelize's."""
    cpus = usable_cpus()
    hog = f"import time\nend = time.monotonic() + {HOG_SECONDS}\nwhile time.monotonic() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(cpus)]
    try:
        result = run_cli(
            "demo", "--items", "24", "--size", "8000", "--workers", str(cpus), "--no-progress"
        )
    finally:
        for process in hogs:
            process.kill()
            process.wait()
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())  # the note is wrapped
    assert "speed-up:" in said
    assert "note: this machine was busy: the mapped items got" in said, result.stdout
    assert "Run the demo again when the machine is quieter." in said


@pytest.mark.timeout(CLI_TIMEOUT + 30)
def test_demo_without_progress_bar_on_threads() -> None:
    result = run_cli(
        "demo", "--items", "8", "--size", "200", "--backend", "thread", "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.timeout(CLI_TIMEOUT + 30)
def test_bench_small_json() -> None:
    result = run_cli(
        "bench", "--tiny-items", "500", "--cpu-items", "6", "--size", "300", "--repeat", "1",
        "--workers", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["workers"] == 2
    assert [row["workload"] for row in report["rows"]] == ["tiny (x * x)", "cpu-bound (primes)"]
    for row in report["rows"]:
        assert row["serial_s"] > 0 and row["parallelize_s"] > 0 and row["pool_s"] > 0
        assert row["speedup_vs_serial"] == pytest.approx(row["serial_s"] / row["parallelize_s"])
    assert report["machine"]["python"] == platform.python_version()
    assert {"date", "platform", "usable_cpus"} <= set(report["machine"])
    assert set(report["latency"]) == {
        "warm_call_ms", "pool_warm_call_ms", "alternating_workers_ms", "inside_imap_ms",
    }  # fmt: skip
    assert all(value > 0 for value in [*report["latency"].values(), *report["counter"].values()])
    assert set(report["counter"]) == {
        "increment_ns", "mp_value_increment_ns", "read_ns", "mp_value_read_ns",
    }  # fmt: skip
    assert set(report["cold"]) == {"cold_first_map_ms", "pool_cold_first_map_ms"}
    assert all(value > 0 for value in report["cold"].values())
    assert set(report["contention"]) == {"2", "4"}  # processes at once, each count checked
    for figures in report["contention"].values():
        assert set(figures) == {"shared_counter", "mp_value"}
        assert all(value > 0 for value in figures.values())


@pytest.mark.timeout(CLI_TIMEOUT + 30)
def test_bench_small_table() -> None:
    result = run_cli(
        "bench", "--tiny-items", "200", "--cpu-items", "4", "--size", "200", "--repeat", "1",
        "--start-method", "spawn",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "start method spawn" in result.stdout
    assert "vs Pool" in result.stdout and "cpu-bound (primes)" in result.stdout
    assert f"Python {platform.python_version()}" in result.stdout
    assert "warm 2-item call" in result.stdout and "shared_counter increment" in result.stdout
    assert "cold first 2-item map" in result.stdout and "increment, 4 at once" in result.stdout


@pytest.mark.timeout(CLI_TIMEOUT + 30)
@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["bench", "--help"]])
def test_help_exits_0(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m parallelize")


@pytest.mark.parametrize(
    "args",
    [
        [],  # no command: help on stderr
        ["frobnicate"],
        ["demo", "--items", "0"],
        ["demo", "--items", "many"],
        ["demo", "--backend", "gpu"],
        ["bench", "--repeat", "-1"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert "usage:" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from parallelize import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"parallelize {__version__}"


def test_defaults_are_sensible() -> None:
    demo = build_parser().parse_args(["demo"])
    assert 100 <= demo.items <= 1000 and demo.workers >= 1 and demo.backend == "process"
    bench = build_parser().parse_args(["bench"])
    assert bench.repeat >= 1 and bench.start_method is None


@pytest.mark.timeout(CLI_TIMEOUT + 30)
def test_console_script_entry_point() -> None:
    """``parallelize`` (the console script) is the same as ``python -m parallelize``."""
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "parallelize"]
    assert script.value == "parallelize.__main__:main"
    assert script.load() is main
