"""Run CPython's own Pool and ProcessPoolExecutor tests against parallelize's classes.

Usage: ``python tests/conformance/run_cpython.py {pool,executor} {fork,spawn} [-v]``

The tests come from this interpreter's own ``test`` package, never copied into the project:

- ``pool``: the ``_TestPool`` family of ``test/_test_multiprocessing.py`` (``_TestPool``,
  ``_TestPoolWorkerErrors``, ``_TestPoolWorkerLifetime``), processes flavour, installed by
  CPython's own ``install_tests_in_module_dict`` (see :mod:`cpython_pool_cases`);
- ``executor``: the ProcessPoolExecutor classes of ``test/test_concurrent_futures`` (executor,
  process pool, wait, as_completed, initializer, deadlock and shutdown tests) built on the mixin
  of the start method.

:func:`swap` puts parallelize's classes where the tests find the standard library's:
``multiprocessing.Pool`` (and ``ProcessesMixin.Pool``, bound from it when the tests were
imported) becomes ``parallelize.Pool`` on the default context, as ``multiprocessing.Pool`` is;
``concurrent.futures.ProcessPoolExecutor`` and the process-pool mixins' ``executor_type`` become
:class:`ProcessPoolExecutor`, ``parallelize.Executor`` under the standard library's name (a few
tests format that name into a child interpreter's script). Those child interpreters (``-c``
scripts run by ``test.support.script_helper``) get the same swap as their first line.

The tests listed in ``EXCLUDED.md`` (each with its reason) are left out. The last line of the
output is ``CONFORMANCE-SUMMARY`` and a JSON summary; the exit status is 0 when no test failed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import multiprocessing
import re
import sys
import unittest
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import parallelize

HERE = Path(__file__).resolve().parent
EXCLUDED = HERE / "EXCLUDED.md"
SUMMARY = "CONFORMANCE-SUMMARY"
# What CPython calls each module's tests, and the start methods the issue asks for.
PARTS = ("pool", "executor")
START_METHODS = ("fork", "spawn")
POOL_FAMILY = ("_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime")
EXECUTOR_MODULES = (
    "test_process_pool",  # ExecutorTest and ProcessPoolExecutorTest
    "test_as_completed",
    "test_wait",
    "test_init",
    "test_deadlock",
    "test_shutdown",
)


class ProcessPoolExecutor(parallelize.Executor):
    """``parallelize.Executor`` under the standard library's name, nothing else."""


def Pool(
    processes: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Any = (),
    maxtasksperchild: int | None = None,
) -> parallelize.Pool:
    """``multiprocessing.Pool``: a pool on the default context, here parallelize's."""
    return parallelize.Pool(
        processes, initializer, initargs, maxtasksperchild, context=multiprocessing.get_context()
    )


def swap() -> None:
    """Put parallelize's Pool and Executor where CPython's tests look for the stdlib's."""
    import concurrent.futures

    multiprocessing.Pool = Pool  # type: ignore[assignment]
    concurrent.futures.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[misc]
    if "test._test_multiprocessing" in sys.modules:
        sys.modules["test._test_multiprocessing"].ProcessesMixin.Pool = staticmethod(Pool)
    util = sys.modules.get("test.test_concurrent_futures.util")
    if util is not None:
        for mixin in (
            util.ProcessPoolForkMixin,
            util.ProcessPoolForkserverMixin,
            util.ProcessPoolSpawnMixin,
        ):
            mixin.executor_type = ProcessPoolExecutor
    script_helper = sys.modules.get("test.support.script_helper")
    if script_helper is not None and not hasattr(script_helper.run_python_until_end, "swapped"):
        script_helper.run_python_until_end = _swapping_children(script_helper.run_python_until_end)


# The first line of a child interpreter's ``-c`` script: the same swap there. The children may
# run isolated (-I: no PYTHONPATH), hence the explicit paths.
PRELUDE = (
    "import sys; sys.path[:0] = [{src!r}, {here!r}]; import run_cpython; run_cpython.swap(); "
    "del sys.path[:2]\n"
)


def _swapping_children(run: Callable[..., Any]) -> Callable[..., Any]:
    prelude = PRELUDE.format(src=str(Path(parallelize.__file__).parents[1]), here=str(HERE))

    def run_python_until_end(*args: str, **env_vars: Any) -> Any:
        if len(args) >= 2 and args[0] == "-c":
            args = ("-c", prelude + args[1], *args[2:])
        return run(*args, **env_vars)

    run_python_until_end.swapped = True  # type: ignore[attr-defined]
    return run_python_until_end


# -- which tests --


def exclusions(part: str) -> dict[str, str]:
    """``EXCLUDED.md``'s entries for ``part`` (its section: ``## Pool`` or
    ``## ProcessPoolExecutor``): ``Class.test_name`` (a CPython base class, or a generated
    class) to its reason."""
    section = {"pool": "## Pool", "executor": "## ProcessPoolExecutor"}[part]
    found, inside = {}, False
    for line in EXCLUDED.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.startswith(section)
        match = re.match(r"^- `(\w+\.\w+)`: (.+)$", line)
        if inside and match:
            found[match[1]] = match[2]
    return found


def _excluded_as(test: unittest.TestCase, excluded: dict[str, str]) -> str | None:
    name = test._testMethodName
    for cls in type(test).__mro__:
        if f"{cls.__name__}.{name}" in excluded:
            return f"{cls.__name__}.{name}"
    return None


def _tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _tests(test)
        else:
            yield test  # type: ignore[misc]


def pool_classes(start_method: str) -> list[type[unittest.TestCase]]:
    import os

    os.environ["PARALLELIZE_CONFORMANCE_START_METHOD"] = start_method  # read by the cases
    sys.path.insert(0, str(HERE))
    cases = importlib.import_module("cpython_pool_cases")
    family = tuple(getattr(sys.modules["test._test_multiprocessing"], n) for n in POOL_FAMILY)
    return [
        cls
        for cls in vars(cases).values()
        if isinstance(cls, type) and issubclass(cls, family) and issubclass(cls, unittest.TestCase)
    ]


def executor_classes(start_method: str) -> list[type[unittest.TestCase]]:
    """The process-pool classes of the start method; raises ImportError where this Python ships
    without ``test.test_concurrent_futures``."""
    util = importlib.import_module("test.test_concurrent_futures.util")
    mixin = {"fork": util.ProcessPoolForkMixin, "spawn": util.ProcessPoolSpawnMixin}[start_method]
    classes = []
    for name in EXECUTOR_MODULES:
        module = importlib.import_module(f"test.test_concurrent_futures.{name}")
        for cls in vars(module).values():
            own = isinstance(cls, type) and cls.__module__ == module.__name__
            if own and issubclass(cls, mixin):
                classes.append(cls)
        if start_method == "spawn" and hasattr(module, "FailingInitializerResourcesTest"):
            # No mixin: it runs the spawn FailingInitializer test and checks the resource
            # tracker (its forkserver twin is out of scope).
            classes.append(module.FailingInitializerResourcesTest)
    return classes


def build(part: str, start_method: str) -> tuple[unittest.TestSuite, list[str], list[str]]:
    """The suite, the ids left out (with their EXCLUDED.md entry) and the entries unused."""
    classes = pool_classes(start_method) if part == "pool" else executor_classes(start_method)
    swap()
    excluded = exclusions(part)
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    left_out, used = [], set()
    for cls in classes:
        for test in _tests(loader.loadTestsFromTestCase(cls)):
            entry = _excluded_as(test, excluded)
            if entry is None:
                if not (cls.__name__ == "FailingInitializerResourcesTest"
                        and test._testMethodName != "test_spawn"):  # fmt: skip
                    suite.addTest(test)
            else:
                left_out.append(f"{test.id()}  ({entry})")
                used.add(entry)
    return suite, left_out, sorted(set(excluded) - used)


class _Result(unittest.TextTestResult):
    """Collects the garbage after each test: a test that failed half-way (before its own
    ``shutdown``) leaves its executor to ``__del__``, which stops its workers; otherwise they
    would hold the resource tracker's pipe, and the module's cleanup, which waits for the
    tracker to exit, would wait for ever."""

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("start_method", choices=START_METHODS)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-k", dest="pattern", help="run only the tests whose id contains this")
    args = parser.parse_args(argv)
    summary: dict[str, Any] = {"part": args.part, "start_method": args.start_method}
    try:
        suite, left_out, unused = build(args.part, args.start_method)
    except ImportError as exc:
        if args.part != "executor":
            raise
        summary["skipped_part"] = (
            f"Python {sys.version.split()[0]} ships without test.test_concurrent_futures "
            f"({exc}); run it under 3.13"
        )
        print(summary["skipped_part"])
        print(SUMMARY, json.dumps(summary))
        return 0
    if args.pattern:
        suite = unittest.TestSuite(t for t in _tests(suite) if args.pattern in t.id())
    runner = unittest.TextTestRunner(verbosity=2 if args.verbose else 1, resultclass=_Result)
    result = runner.run(suite)
    for line in left_out:
        print("excluded:", line)
    for entry in unused:
        print("EXCLUDED.md entry matching no test here:", entry)
    bad = [*result.failures, *result.errors]
    others = [*bad, *result.skipped, *result.unexpectedSuccesses, *result.expectedFailures]
    summary.update(
        run=result.testsRun,
        passed=result.testsRun - len(others),
        failed=[test.id() for test, _ in bad] + [t.id() for t in result.unexpectedSuccesses],
        skipped=[f"{test.id()}: {reason}" for test, reason in result.skipped],
        excluded=len(left_out),
        python=sys.version.split()[0],
    )
    print(SUMMARY, json.dumps(summary))
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
