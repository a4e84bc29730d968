"""What type checkers see of the public API: ``tests/typing/check_api.py`` is clean under
``mypy --strict`` (and pyright, when installed, together with ``src/``), and
``pyright --verifytypes`` scores 100%.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "typing"
# Seconds for one type checker run: ~1-10 s warm or cold; CI machines can be slow.
CHECK_TIMEOUT = 120


def _tool(name: str) -> str | None:
    """A tool of this interpreter's environment, or of PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False
    )


@pytest.mark.slow  # a type checker run: the default suite keeps its time (CI runs slow tests)
@pytest.mark.timeout(CHECK_TIMEOUT + 30)
def test_mypy_strict_sees_the_documented_types(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    result = _run(
        [
            sys.executable, "-m", "mypy", "--strict", "--warn-unused-ignores",
            "--no-incremental", "--cache-dir", str(tmp_path), "--python-version", "3.11",
            *map(str, sorted(CHECKS.glob("*.py"))),
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # a type checker run: the default suite keeps its time (CI runs slow tests)
@pytest.mark.timeout(CHECK_TIMEOUT + 30)
def test_pyright_sees_the_documented_types_and_src_is_clean() -> None:
    pyright = _tool("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed")
    result = _run([pyright, "src", *map(str, sorted(CHECKS.glob("*.py")))])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(CHECK_TIMEOUT + 30)
def test_pyright_verifytypes_is_complete() -> None:
    pyright = _tool("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed")
    result = _run([pyright, "--verifytypes", "parallelize", "--ignoreexternal"])
    assert "Type completeness score: 100%" in result.stdout, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
