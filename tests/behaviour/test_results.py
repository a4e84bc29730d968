"""What a map returns: every result, in input order, from any input and any kind of function."""

from __future__ import annotations

import collections
import functools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from parallelize import imap, pmap
from support import script_env

from .workloads import add, square, weighted

pytestmark = pytest.mark.timeout(60)


def test_results_in_input_order(backend_options: dict[str, Any]) -> None:
    """``pmap`` is ``list(map(...))``, however the items were spread over workers."""
    assert pmap(square, range(200), **backend_options) == [x * x for x in range(200)]
    assert list(imap(square, range(100), **backend_options)) == [x * x for x in range(100)]


def test_unordered_gives_every_result(backend_options: dict[str, Any]) -> None:
    """``ordered=False`` may change the order, never which results (duplicates included)."""
    items = [*range(100), *range(-50, 50)]
    expected = collections.Counter(x * x for x in items)
    assert collections.Counter(pmap(square, items, ordered=False, **backend_options)) == expected
    streamed = imap(square, items, ordered=False, **backend_options)
    assert collections.Counter(streamed) == expected


def test_several_iterables_zip_to_the_shortest(backend_options: dict[str, Any]) -> None:
    """Several iterables are zipped like the builtin ``map``: it stops at the shortest."""
    assert pmap(add, range(10), range(5), **backend_options) == list(map(add, range(10), range(5)))
    assert pmap(add, range(5), range(10, 20), **backend_options) == [10, 12, 14, 16, 18]
    assert pmap(add, [1], [2], [3], **backend_options) == [6]
    streamed = imap(add, [1, 2], iter([10, 20, 30]), [100, 200], **backend_options)
    assert list(streamed) == [111, 222]


def test_empty_input(backend_options: dict[str, Any]) -> None:
    """No items, no results, and no error."""
    assert pmap(square, [], **backend_options) == []
    assert list(imap(square, iter([]), **backend_options)) == []


def test_range_and_list_inputs_of_every_shape(backend_options: dict[str, Any]) -> None:
    """Ranges of any step and sign, and lists, whole or in chunks of a given size."""
    for items in (range(-7, 50, 3), range(30, 0, -4), range(0), [*range(40)]):
        expected = [x * x for x in items]
        assert pmap(square, items, chunksize=4, **backend_options) == expected
        assert pmap(square, items, **backend_options) == expected
        assert list(imap(square, items, **backend_options)) == expected


def test_a_range_too_long_for_len(backend_options: dict[str, Any]) -> None:
    """``len(range(2**70))`` overflows; like the builtin ``map``, ``imap`` walks it anyway."""
    stream = imap(square, range(2**70), **backend_options)
    assert [next(stream) for _ in range(3)] == [0, 1, 4]
    stream.close()


def test_generator_input_and_chunksize(backend_options: dict[str, Any]) -> None:
    """An input without a length works, with chunks sized by the map or by the caller."""
    assert pmap(square, (x for x in range(300)), **backend_options) == [x * x for x in range(300)]
    chunked = pmap(square, (x for x in range(37)), chunksize=5, **backend_options)
    assert chunked == [x * x for x in range(37)]


def test_keyword_arguments_broadcast_through_a_decorated_function(
    backend_options: dict[str, Any],
) -> None:
    """``f(items, weight=2)`` passes the keyword to every call of a ``@parallel`` function."""
    fn = weighted.options(**backend_options)
    assert fn([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert fn([1.0, 2.0], weight=2) == [2.0, 4.0]
    assert fn([1.0, 2.0], weight=3.0, offset=1.0) == [4.0, 7.0]
    assert list(fn.imap(iter([1.0, 2.0]), weight=2.0)) == [2.0, 4.0]
    assert fn.__wrapped__(5, weight=2.0) == 10.0


def test_lambdas_closures_and_partials(backend_options: dict[str, Any]) -> None:
    """Functions that the standard pickle cannot send still run in the workers."""
    offset = 7
    assert pmap(lambda x: x + offset, range(5), **backend_options) == [7, 8, 9, 10, 11]

    def closure(x: int) -> int:
        return x * offset

    assert pmap(closure, [1, 2], **backend_options) == [7, 14]
    assert pmap(functools.partial(add, z=100), [1], [2], **backend_options) == [103]


def test_unpicklable_items_fall_back_to_cloudpickle(backend_options: dict[str, Any]) -> None:
    """Items that the standard pickle cannot send (lambdas) still reach the function."""
    functions = [lambda: 1, lambda: 2]
    assert pmap(lambda f: f(), functions, **backend_options) == [1, 2]


SCRIPT = """
import parallelize
from parallelize import imap, pmap


class Point:
    def __init__(self, x):
        self.x = x


def x_of(point):
    return point.x


if __name__ == "__main__":
    options = {options!r}
    print(pmap(x_of, [Point(1), Point(2)], **options))
    print(list(imap(lambda p: p.x * 10, [Point(3)], **options)))
    print([p.x for p in pmap(Point, [4, 5], **options)])
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "run_as", ["script", "-c", "-m"], ids=["python-script", "python-c", "python-m"]
)
def test_functions_and_classes_of_a_scripts_main(
    run_as: str, script_options: dict[str, Any], tmp_path: Path
) -> None:
    """A function and a class defined in ``__main__`` work as items, functions and results,
    however the script runs: ``python script.py``, ``python -c`` (an interactive ``__main__``,
    which spawned workers cannot import) or ``python -m package``."""
    code = textwrap.dedent(SCRIPT.format(options=script_options))
    if run_as == "script":
        (tmp_path / "script.py").write_text(code)
        command = [sys.executable, "script.py"]
    elif run_as == "-c":
        command = [sys.executable, "-c", code]
    else:
        package = tmp_path / "pointpkg"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(code)
        command = [sys.executable, "-m", "pointpkg"]
    env = script_env()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=100, check=False, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[1, 2]", "[30]", "[4, 5]"], done.stderr


def test_progress_bar_counts_items(
    backend_options: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """``progress=`` draws a tqdm bar on stderr that counts items, not chunks."""
    pmap(square, range(57), progress=True, **backend_options)
    assert "57/57" in capfd.readouterr().err
    list(imap(square, range(33), progress=True, **backend_options))
    assert "33/33" in capfd.readouterr().err
    pmap(square, range(120), progress="squaring", **backend_options)
    err = capfd.readouterr().err
    assert "squaring" in err
    assert "120/120" in err
