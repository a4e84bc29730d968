"""Old against new: the suite on two checkouts of parallelize, interleaved, in one run.

``python -m benchmarks.compare --old-python OLD/bin/python --new-python NEW/bin/python``

Each interpreter must have its checkout installed editable with the ``bench`` extra; the checkout
is found from where that interpreter imports parallelize. Every workload runs as
``python -m benchmarks --only NAME --json PATH`` with that side's interpreter, from that side's
checkout: the suite reaches into private modules (``parallelize._backends.base`` and others),
so each side runs the suite code written against its own internals. The workload definitions
(``benchmarks/tasks.py`` and ``benchmarks/workloads.py``) must be the same code on both sides,
where they import parallelize's internals from aside; the report names any other suite file
that differs.

Old and new alternate workload by workload and round by round (old first in one, new first in
the next), so that a drift in the machine's speed hits both alike. Each figure is the suite's own:
how many times better parallelize does than an anchor, paired within the suite's rounds.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .report import ANCHORS, fmt

RESULTS = Path(__file__).resolve().parent / "results" / "compare"
# The names for the workloads, and the suite's (the "warm" is "latency" there).
WORKLOADS = {
    "tiny": "tiny",
    "cpu": "cpu",
    "uneven": "uneven",
    "bigarg": "bigarg",
    "bigret": "bigret",
    "warm": "latency",
    "cold": "cold",
}
# Files that define what is measured: they must match, or the two columns measure different work.
DEFINITIONS = ("tasks.py", "workloads.py")
# The docs treat differences under ~5% between runs as noise on this machine (docs/benchmarks.md).
NOISE = 0.05
# A full workload takes at most two minutes on 2 cores; this only stops a hung run.
RUN_TIMEOUT = 1800.0
BEST = "best anchor"


@dataclasses.dataclass(frozen=True)
class Side:
    """One checkout and the interpreter that has it installed."""

    label: str
    python: Path
    root: Path
    commit: str
    python_version: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared figure: a ratio to a tool, or (``own``) parallelize's own median."""

    workload: str  # the suite's name
    versus: str  # a tool as the suite labels it, BEST, or parallelize's own label
    own: bool = False


# The targets, in the order docs/benchmarks.md lists them.
TARGET_ROWS = (
    Row("tiny", "mp.Pool"),
    Row("tiny", "joblib"),
    Row("tiny", "mpire"),
    Row("tiny", "parallelize+progress"),
    Row("cpu", "serial"),
    Row("cpu", BEST),
    Row("uneven", "serial"),
    Row("uneven", BEST),
    Row("bigarg", "joblib"),
    Row("bigret", "joblib"),
    Row("latency", "mp.Pool"),
    Row("cold", "mp.Pool (fork)"),
    Row("cold", "mp.Pool (spawn)"),
    Row("cold", "mp.Pool (forkserver)"),
)


def _environment(side: Side | None = None) -> dict[str, str]:
    """This environment without what could make a side import the other side's code."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    if side is not None:
        env["PATH"] = f"{side.python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def locate(label: str, python: Path, root: Path | None) -> Side:
    """The side ``python`` runs: its checkout (from where it imports parallelize), its commit.

    Raises ``SystemExit`` if the interpreter cannot import parallelize, or imports it from
    somewhere else than ``root`` (when given) or from a checkout without ``benchmarks/``.
    """
    probe = "import json, platform, parallelize; print(json.dumps([parallelize.__file__, "
    probe += "platform.python_version()]))"
    done = subprocess.run(
        [str(python), "-c", probe],
        cwd="/",  # not a checkout: parallelize must come from the interpreter's own install
        capture_output=True,
        text=True,
        env=_environment(),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{label}: {python} cannot import parallelize:\n{done.stderr}")
    where, version = json.loads(done.stdout)
    found = Path(where).resolve().parents[2]  # ROOT/src/parallelize/__init__.py
    if root is not None and root.resolve() != found:
        raise SystemExit(f"{label}: {python} imports parallelize from {where}, not from {root}")
    if not (found / "benchmarks" / "__main__.py").is_file():
        raise SystemExit(f"{label}: {found} has no benchmarks/ (is parallelize not editable?)")
    commit = _git(found, "rev-parse", "--short", "HEAD") or "unknown"
    if _git(found, "status", "--porcelain", "--", "src"):
        commit += " + uncommitted changes in src/"
    return Side(label, python, found, commit, version)


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _record(side: Side) -> dict[str, str]:
    return {k: str(v) for k, v in dataclasses.asdict(side).items()}


def differences(old: Side, new: Side) -> tuple[list[str], list[str]]:
    """The suite's files that differ between the sides (this script aside): in their code, and
    only in where they import parallelize's internals from (or in docstrings and comments).
    """
    names = {p.name for side in (old, new) for p in (side.root / "benchmarks").glob("*.py")}
    names.discard(Path(__file__).name)
    in_code: list[str] = []
    in_imports: list[str] = []
    for name in sorted(names):
        a, b = (side.root / "benchmarks" / name for side in (old, new))
        if not (a.is_file() and b.is_file()):
            in_code.append(name)
        elif a.read_bytes() != b.read_bytes():
            same = _code(a.read_text()) == _code(b.read_text())
            (in_imports if same else in_code).append(name)
    return in_code, in_imports


class _Strip(ast.NodeTransformer):
    """Drops docstrings and imports of parallelize: what a move of its internals changes."""

    def visit_Import(self, node: ast.Import) -> ast.Import | None:
        return None if any(_ours(alias.name) for alias in node.names) else node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom | None:
        return None if node.level == 0 and _ours(node.module or "") else node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return super().generic_visit(node)


def _ours(module: str) -> bool:
    return module == "parallelize" or module.startswith("parallelize.")


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)


def _code(source: str) -> str:
    """The module's code with docstrings, comments and parallelize imports left out."""
    return ast.dump(_Strip().visit(ast.parse(source)))


def run_suite(side: Side, workload: str, path: Path, workers: int, quick: bool) -> dict[str, Any]:
    """One ``python -m benchmarks --only workload`` of ``side``; its JSON results.

    The suite's progress goes to our stderr; its Markdown report is dropped (the JSON has it all).
    Raises ``subprocess.CalledProcessError`` if the suite fails.
    """
    command = [str(side.python), "-m", "benchmarks", "--only", workload, "--json", str(path)]
    command += ["--workers", str(workers), *(["--quick"] if quick else [])]
    subprocess.run(
        command,
        cwd=side.root,
        env=_environment(side),
        stdout=subprocess.DEVNULL,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_rows(runs: list[dict[str, Any]], workloads: list[str]) -> list[Row]:
    """Every figure the runs hold: parallelize's own medians, then its ratio to each tool."""
    rows: list[Row] = []
    for workload in workloads:
        results = runs[0]["workloads"][workload]["results"]
        own = [label for label in results if label.startswith("parallelize") and "+" not in label]
        rows += [Row(workload, label, own=True) for label in own]
        rows += [Row(workload, label) for label in results if label not in own]
        if runs[0]["workloads"][workload]["unit"] == "speed-up":
            rows.append(Row(workload, BEST))
    return rows


def figure(data: dict[str, Any], row: Row) -> float:
    """The row's figure in one run of the suite (ratios: above 1, parallelize wins)."""
    results = data["workloads"][row.workload]["results"]
    if row.own:
        return float(results[row.versus]["value"])
    if row.versus == BEST:  # speed-ups only: parallelize's against the best anchor's
        best = max(float(results[tool]["value"]) for tool in ANCHORS)
        return float(results["parallelize"]["value"]) / best
    return float(results[row.versus]["ratio"])


def change(data_old: dict[str, Any], data_new: dict[str, Any], row: Row) -> float:
    """How many times better new does than old on this row (above 1: new better)."""
    old, new = figure(data_old, row), figure(data_new, row)
    lower_is_better = row.own and not data_old["workloads"][row.workload]["higher_is_better"]
    return old / new if lower_is_better else new / old


def _name(workload: str) -> str:
    return "warm" if workload == "latency" else workload


def _figure(value: float, unit: str | None) -> str:
    """A median in its unit, or (``unit`` None) a ratio: 1.08x, 22x."""
    if unit is not None:
        return fmt(value, unit)
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def _cell(values: list[float], unit: str | None) -> str:
    """The median over rounds, then the range when there are several."""
    text = _figure(statistics.median(values), unit)
    if len(values) > 1:
        text += f" ({_figure(min(values), unit)}-{_figure(max(values), unit)})"
    return text


def table(rounds: list[dict[str, dict[str, Any]]], rows: list[Row], noise: float) -> str:
    """One Markdown line per row: old and new medians over rounds (range), paired new/old."""
    lines = [
        "| workload | figure | old | new | new/old | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        present = [r for r in rounds if all(row.workload in r[s]["workloads"] for s in r)]
        if not present:
            continue
        unit = present[0]["old"]["workloads"][row.workload]["unit"] if row.own else None
        old = [figure(r["old"], row) for r in present]
        new = [figure(r["new"], row) for r in present]
        paired = statistics.median(change(r["old"], r["new"], row) for r in present)
        if abs(paired - 1) <= noise or max(min(old), min(new)) <= min(max(old), max(new)):
            verdict = "within noise"
        else:
            verdict = "better" if paired > 1 else "**WORSE**"
        what = f"{row.versus}, {unit}" if row.own else f"vs {row.versus}"
        lines.append(
            f"| {_name(row.workload)} | {what} | {_cell(old, unit)} | {_cell(new, unit)} "
            f"| {paired:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--old-python", type=Path, required=True, help="the old side's python")
    parser.add_argument("--new-python", type=Path, required=True, help="the new side's python")
    parser.add_argument("--old-root", type=Path, help="check the old side imports this checkout")
    parser.add_argument("--new-root", type=Path, help="check the new side imports this checkout")
    parser.add_argument(
        "--only",
        action="append",
        choices=tuple(WORKLOADS),
        metavar="WORKLOAD",
        help=f"compare only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each workload per side (default 3; the range across rounds is the noise)",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    parser.add_argument("--quick", action="store_true", help="pass --quick to the suite")
    parser.add_argument(
        "--noise",
        type=float,
        default=NOISE,
        help=f"a paired new/old within 1 +- this is noise (default {NOISE})",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"where every run's JSON goes (default {RESULTS})"
    )
    parser.add_argument(
        "--allow-changed-workloads",
        action="store_true",
        help=f"run even if {' or '.join(DEFINITIONS)} differ between the sides",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    old = locate("old", args.old_python, args.old_root)
    new = locate("new", args.new_python, args.new_root)
    if old.root == new.root:
        raise SystemExit(f"both sides import parallelize from {old.root}")
    in_code, in_imports = differences(old, new)
    changed = [name for name in DEFINITIONS if name in in_code]
    if changed and not args.allow_changed_workloads:
        raise SystemExit(f"benchmarks/{', '.join(changed)}: the code differs between the sides")
    workloads = [WORKLOADS[name] for name in args.only or WORKLOADS]
    workloads = [w for w in WORKLOADS.values() if w in workloads]  # the suite's order, once each
    args.out.mkdir(parents=True, exist_ok=True)

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.perf_counter()
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(args.rounds):
        this: dict[str, dict[str, Any]] = {"old": {"workloads": {}}, "new": {"workloads": {}}}
        for index, workload in enumerate(workloads):
            order = (old, new) if (number + index) % 2 == 0 else (new, old)
            for side in order:
                log(f"[round {number + 1}/{args.rounds}] {_name(workload)} on {side.label} ...")
                path = args.out / f"{number + 1}-{workload}-{side.label}.json"
                data = run_suite(side, workload, path, args.workers, args.quick)
                this[side.label]["workloads"][workload] = data["workloads"][workload]
                this[side.label].setdefault("machines", []).append(data["machine"])
        rounds.append(this)
        spent = time.perf_counter() - began
        left = spent / (number + 1) * (args.rounds - number - 1)
        log(f"round {number + 1}/{args.rounds} done after {spent:.0f} s; about {left:.0f} s left")
    seconds = time.perf_counter() - began

    machines = [m for r in rounds for side in r.values() for m in side["machines"]]
    loads = [x for m in machines for x in (m["loadavg_1min"], m["loadavg_1min_end"])]
    first = machines[0]
    command = "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"{date} | {first['cpu']} | {first['cpus']} CPUs | {first['platform']} | "
        f"{args.workers} workers | {args.rounds} rounds{' (quick)' if args.quick else ''} | "
        f"{seconds:.0f} s | load average {min(loads)}-{max(loads)}",
        f"old: `{old.commit}` in {old.root}, Python {old.python_version}; "
        f"new: `{new.commit}` in {new.root}, Python {new.python_version}",
        f"`{command}`",
    ]
    if in_code:
        header.append(f"suite files whose code differs between the sides: {', '.join(in_code)}")
    if in_imports:
        header.append(f"differ only in parallelize imports and docs: {', '.join(in_imports)}")
    explain = (
        "Ratios: how many times better parallelize does than the tool, in the same run (above 1:"
        " parallelize wins). Cells: median over rounds (range). new/old: the median over rounds"
        " of new / old in the same round (above 1: new better; for parallelize's own figures,"
        f" faster). Within noise: new/old within 1 +- {args.noise:g}, or old's and new's ranges"
        " overlap."
    )
    rows = all_rows([rounds[0]["old"]], workloads)
    targets = [row for row in TARGET_ROWS if row.workload in workloads]
    report = "\n".join(
        [
            *header,
            "",
            explain,
            "",
            table(rounds, targets, args.noise),
            "",
            "Every figure:",
            "",
            table(rounds, rows, args.noise),
        ]
    )
    summary = {
        "date": date,
        "command": command,
        "seconds": seconds,
        "sides": {side.label: _record(side) for side in (old, new)},
        "differ": {"code": in_code, "imports": in_imports},
        "rounds": rounds,
    }
    (args.out / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "compare.md").write_text(report + "\n")
    print(report)
    log(f"comparison took {seconds:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
