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
            params.append(pytest.param(page, id=page.name))
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
