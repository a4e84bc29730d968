"""The documentation's code runs: every ```python block of every page, and the doctests in src.

Each page's blocks are joined, in order, into one script that runs in a fresh interpreter (as a
reader would paste them into a file), so a page reads like a tutorial whose later blocks may use
what earlier ones defined. A block that must not run (an illustration, a ``reveal_type``, a shell
command) is preceded by an ``<!-- no-run -->`` comment line, which the rendered site hides.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import parallelize

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
NO_RUN = "<!-- no-run -->"
RUNNABLE = {"python", "py"}
# Seconds one page's script may take: pages are small examples, ~1 s each on 2 cores.
PAGE_TIMEOUT = 90
# Optional engines a page may use: it is skipped, not failed, when the engine is missing.
OPTIONAL = {"dask": "distributed", "ray": "ray"}

_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


def python_blocks(text: str) -> list[str]:
    """The runnable python blocks of a Markdown page, dedented, in order.

    >>> page = "```python\\nprint(1)\\n```\\n<!-- no-run -->\\n```python\\nboom\\n```\\n"
    >>> python_blocks(page)
    ['print(1)\\n']
    >>> python_blocks("!!! note\\n    ```py\\n    a = 1\\n    ```\\n")
    ['a = 1\\n']
    """
    blocks: list[str] = []
    lines = text.splitlines(keepends=True)
    previous = ""  # the last non-blank line before the current one
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index].rstrip("\n"))
        if match is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        fence = match["fence"]
        language = (match["info"].strip().split() or [""])[0].strip("{}.").lower()
        body: list[str] = []
        index += 1
        while index < len(lines) and not (
            lines[index].strip().startswith(fence) and lines[index].strip().strip(fence[0]) == ""
        ):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        if language in RUNNABLE and previous != NO_RUN:
            blocks.append(textwrap.dedent("".join(body)))
        previous = fence
    return blocks


def _page_params() -> list[Any]:
    params: list[Any] = []
    for page in PAGES:
        if page.exists() and python_blocks(page.read_text(encoding="utf-8")):
            # Starting real clusters takes the longest: with the slow tests.
            marks = [pytest.mark.slow] if page.name == "scaling-out.md" else []
            params.append(pytest.param(page, id=page.name, marks=marks))
    return params


@pytest.mark.timeout(PAGE_TIMEOUT + 30)
@pytest.mark.parametrize("page", _page_params())
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    source = "\n\n".join(python_blocks(page.read_text(encoding="utf-8")))
    for backend, module in OPTIONAL.items():
        if f'backend="{backend}"' in source or f"import {module}" in source:
            pytest.importorskip(module, reason=f"{page.name} needs the {backend} extra")
    script = tmp_path / f"{page.stem.replace('-', '_')}_examples.py"
    script.write_text(source, encoding="utf-8")
    # Warnings are errors in the page's interpreter (and its pool's workers, which inherit -W),
    # but not through PYTHONWARNINGS, which Ray's own helper processes would inherit and die of.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PARALLELIZE_BACKEND", None)  # the page chooses its backends
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"the examples of {page.name} failed (script: {script}):\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr


def test_runner_finds_the_examples() -> None:
    """The extractor sees the pages' code: a broken fence regex would make every test vacuous."""
    names = {param.id for param in _page_params()}
    assert {"getting-started.md", "decorator.md", "streaming.md", "faq.md"} <= names


def _modules() -> list[str]:
    found = pkgutil.walk_packages(parallelize.__path__, "parallelize.")
    return ["parallelize", *sorted(info.name for info in found)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", _modules())
def test_doctests(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as error:  # an optional engine's backend without its engine
        pytest.skip(f"{name} cannot be imported here: {error}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    failed, _ = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} doctest example(s) failed in {name}; see the output above"


# -- installing: the package is not on a public index yet --

README = ROOT / "README.md"
# The README's test command, which .ci/run checks for verbatim.
README_TESTS = 'python -m pip install -e ".[test,dask,ray]" && python -m pytest'
_SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# ``pip install parallelize`` or ``pip install "parallelize[dask]"``: what works only from an index.
_FROM_AN_INDEX = re.compile(r"pip install (?:-\S+ )*[\"']?parallelize(?:\[[^\]]*\])?[\"']?(?:\s|$)")


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a ``## `` line) up to the next heading of that level."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_readme_quick_start_makes_a_virtual_environment_first() -> None:
    quick = _section(README.read_text(encoding="utf-8"), "## Quick start")
    commands = "\n".join(_SHELL_BLOCK.findall(quick))
    assert "python -m venv" in commands and "activate" in commands, commands
    assert commands.index("python -m venv") < commands.index("pip install"), commands
    # Two commands: one runs the demo, one runs the tests (verbatim, as .ci/run expects).
    assert 'python -m pip install . && python -m parallelize demo' in commands
    assert README_TESTS in commands


@pytest.mark.parametrize("page", ["getting-started.md", "index.md"])
def test_install_sections_tell_how_to_install_from_a_checkout_or_git(page: str) -> None:
    install = _section((ROOT / "docs" / page).read_text(encoding="utf-8"), "## Install")
    commands = "\n".join(_SHELL_BLOCK.findall(install))
    assert "python -m venv" in commands
    assert "python -m pip install ." in commands  # a checkout
    assert "parallelize @ git+" in commands  # a git URL


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_command_installs_from_an_index(page: Path) -> None:
    """Every install command a reader may paste works today: none asks an index for the package."""
    for block in _SHELL_BLOCK.findall(page.read_text(encoding="utf-8")):
        for line in block.splitlines():
            command = line.split(" #")[0]
            if " @ " not in command:  # "parallelize @ git+<url>" is a direct reference
                assert not _FROM_AN_INDEX.search(command), f"{page.name}: {line}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_install_from_a_git_url(tmp_path: Path) -> None:
    """The documented ``pip install "parallelize @ git+<url>"`` builds an importable package (from
    this repository, by a ``file://`` URL; pip clones it as it would a remote one)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
            str(target), f"parallelize[dask] @ git+{ROOT.as_uri()}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}  # this one, not the checkout's src
    run = subprocess.run(
        [sys.executable, "-m", "parallelize", "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("parallelize ")
    assert (target / "parallelize" / "py.typed").exists()
