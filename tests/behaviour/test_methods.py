"""``@parallel`` on methods: the instance (or the class) bound, as Python binds a function."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from support import script_env

from .conftest import Backend
from .workloads import Scaler, SubScaler

pytestmark = pytest.mark.timeout(60)


def test_a_method_maps_with_its_instance_bound(backend_options: dict[str, Any]) -> None:
    """``obj.f(items)`` maps ``f(obj, item)``: with keywords broadcast, several iterables
    zipped, as a stream, and with options of its own."""
    scaler = Scaler(3)
    scale = scaler.scale.options(**backend_options)
    assert scale(range(5)) == [0, 3, 6, 9, 12]
    assert scale([1, 2], offset=1) == [4, 7]
    assert list(scale.imap(iter([4, 5]), offset=-1)) == [11, 14]
    assert scaler.combine.options(**backend_options)([1, 2], [10, 20]) == [13, 26]
    assert scale.__wrapped__(2) == 6 and scale.__self__ is scaler  # the bound method
    # Through the class, it is unbound: the instances come first, zipped with the items.
    other = Scaler(10)
    assert Scaler.scale.options(**backend_options)([scaler, other], [1, 1]) == [3, 10]


def test_classmethods_and_staticmethods(backend_options: dict[str, Any]) -> None:
    """``@parallel`` over ``classmethod`` binds the class it is looked up on (a subclass too),
    over ``staticmethod`` nothing; under either it does the same."""
    sub = SubScaler(1)
    for owner, bound in [("Scaler", Scaler.label), ("SubScaler", sub.label)]:
        assert bound.options(**backend_options)([1, 2]) == [f"{owner}:1", f"{owner}:2"]
    assert list(SubScaler.label.options(**backend_options).imap([3], sep="=")) == ["SubScaler=3"]
    for static in (Scaler.double, sub.double):
        assert static.options(**backend_options)([1, 2]) == [2, 4]
    for static in (Scaler.triple, sub.triple):
        assert list(static.options(**backend_options).imap([1, 2])) == [3, 6]


def test_classmethod_above_parallel(
    backend_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@classmethod`` over ``@parallel``: a call binds the class on every Python. ``.imap`` and
    ``.options()`` do too where classmethod binds through ``__get__`` (before 3.13); since, they
    get no class and the error says which order to use."""
    monkeypatch.setenv("PARALLELIZE_BACKEND", backend_options["backend"])  # no .options() here
    assert SubScaler.tag([1, 2]) == ["SubScaler:1", "SubScaler:2"]
    assert SubScaler(1).tag([3]) == ["SubScaler:3"] and Scaler.tag([3]) == ["Scaler:3"]
    if sys.version_info < (3, 13):
        assert list(SubScaler.tag.options(**backend_options).imap([4])) == ["SubScaler:4"]
    else:
        with pytest.raises(TypeError, match="put @parallel above @classmethod"):
            SubScaler.tag.imap([4])


def test_the_instance_travels_once_per_map(
    backend: Backend, backend_options: dict[str, Any]
) -> None:
    """The instance goes to the workers with the function, pickled once per map, whatever the
    number of items and chunks; each worker's copy serves all the items it runs."""
    scaler = Scaler(2)
    before = Scaler.pickled
    counts = scaler.count.options(**backend_options, chunksize=1)(range(20))
    pickled = Scaler.pickled - before
    if backend.in_caller:  # threads and serial share the caller's instance: nothing to pickle
        assert pickled == 0
        assert sorted(counts) == list(range(1, 21)) and len(scaler.seen) == 20
    else:
        assert pickled == 1
        assert max(counts) > 1  # a copy per worker, not per item
        assert scaler.seen == []  # what a worker's copy saw stays there
    before = Scaler.pickled
    assert list(scaler.scale.options(**backend_options, chunksize=2).imap(range(9))) == [
        2 * x for x in range(9)
    ]
    assert Scaler.pickled - before == (0 if backend.in_caller else 1)


SCRIPT = """
from parallelize import parallel


class Greeter:
    def __init__(self, greeting):
        self.greeting = greeting

    @parallel
    def greet(self, name, *, punctuation="!"):
        return f"{{self.greeting}}, {{name}}{{punctuation}}"

    @parallel
    @classmethod
    def kind(cls, name):
        return f"{{cls.__name__}} {{name}}"


if __name__ == "__main__":
    options = {options!r}
    hello = Greeter("Hello")
    print(hello.greet.options(**options)(["Ada", "Alan"]))
    print(list(hello.greet.options(**options).imap(["Grace"], punctuation=".")))
    print(Greeter.kind.options(**options)(["Bob"]))
"""


@pytest.mark.timeout(120)
def test_a_method_of_a_class_in_a_scripts_main(
    script_options: dict[str, Any], tmp_path: Path
) -> None:
    """A class of ``__main__`` travels by value with its instance and its methods."""
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT.format(options=script_options)))
    env = script_env()
    done = subprocess.run(
        [sys.executable, "script.py"],
        capture_output=True, text=True, timeout=100, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['Hello, Ada!', 'Hello, Alan!']",
        "['Hello, Grace.']",
        "['Greeter Bob']",
    ], done.stderr
