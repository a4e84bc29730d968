"""The API's own checks: validation, options, the decorator, pickling errors, exports.

What every backend and start method must do alike is the behaviour suite, ``behaviour/``.
"""

from __future__ import annotations

import collections
import functools
import inspect
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import parallelize
from parallelize import ParallelFunction, SerializationError, imap, parallel, pmap

pytestmark = pytest.mark.timeout(60)


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


@parallel
def scaled(item: float, *, weight: float = 1.0) -> float:
    return item * weight


@parallel(workers=2, chunksize=3)
def tagged(item: int) -> tuple[int, int]:
    return item, os.getpid()


class NeedsTwoArgs(Exception):
    """Cannot be rebuilt from its args, and holds something that cannot be pickled at all."""

    def __init__(self, a: int, b: int):
        super().__init__(f"{a}/{b}")
        self.a = a
        self.lock = threading.Lock()


def raise_unpicklable(x: int) -> int:
    if x == 2:
        raise NeedsTwoArgs(1, 2)
    return x


def returns_lock(x: int) -> object:
    return threading.Lock() if x == 4 else x


def _refuse_to_rebuild(reason: str) -> object:
    raise FileNotFoundError(2, reason)


class Unloadable:
    """Pickles fine in a worker; unpickling it in the caller raises an OSError."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_rebuild, ("gone in the caller",))


def returns_unloadable(x: int) -> object:
    return Unloadable() if x == 3 else os.getpid()


def nested(x: int) -> list[int]:
    return pmap(square, range(x))


TAG: str | None = None  # set by an initializer


def set_tag(tag: str) -> None:
    global TAG
    TAG = tag


def read_tag(_: object) -> str | None:
    return TAG


# -- results --


def test_a_range_travels_as_range_slices() -> None:
    """Chunks of a range are ranges: three numbers to pickle, whatever their length."""
    from parallelize._api import prepare
    from parallelize._options import Options

    job = prepare(square, (range(10, 100, 2),), Options(), stream=True)
    assert job.take(3) == range(10, 16, 2)
    assert job.take(100) == range(16, 100, 2)
    assert job.take(5) == range(100, 100, 2)
    walked = prepare(square, ([1, 2, 3],), Options(), stream=True)  # imap walks a list
    assert not walked.sliced and walked.take(2) == [1, 2]


def test_decorated_function_keeps_metadata() -> None:
    assert scaled.__name__ == "scaled"
    assert scaled.__qualname__ == "scaled"
    assert scaled.__module__ == __name__
    assert isinstance(scaled, ParallelFunction)
    assert scaled.__wrapped__(2.0) == 2.0


def test_parallel_as_a_call() -> None:
    fast = parallel(square, workers=2, backend="thread")
    assert fast([1, 2, 3]) == [1, 4, 9]
    assert fast.options(backend="serial")([4]) == [16]


def test_decorated_function_pickles_by_reference() -> None:
    clone = pickle.loads(pickle.dumps(scaled))
    assert clone.__wrapped__ is scaled.__wrapped__


class Meter:
    """``@parallel`` on methods, for the checks of binding and pickling (the behaviour suite,
    ``behaviour/test_methods.py``, maps them on every backend)."""

    def __init__(self, unit: str):
        self.unit = unit

    @parallel
    def show(self, x: int, *, digits: int = 0) -> str:
        return f"{x:.{digits}f} {self.unit}"

    @classmethod
    @parallel(backend="thread")
    def kind(cls, x: int) -> str:
        return f"{cls.__name__}:{x}"

    @parallel(backend="thread")
    @classmethod
    def make(cls, unit: str) -> Meter:
        return cls(unit)

    @parallel
    @staticmethod
    def half(x: float) -> float:
        return x / 2

    plain_abs = parallel(abs, backend="thread")  # a builtin does not bind, as in a plain class


def test_a_method_binds_like_a_function() -> None:
    meter = Meter("m")
    assert isinstance(meter.show, ParallelFunction) and meter.show.__self__ is meter
    assert meter.show.__wrapped__(2) == "2 m"
    assert meter.show.__name__ == "show" and meter.show.__qualname__ == "Meter.show"
    assert str(inspect.signature(meter.show)) == "(x: 'int', *, digits: 'int' = 0) -> 'str'"
    assert meter.show.options(backend="serial")([1.25], digits=1) == ["1.2 m"]
    assert Meter.show is Meter.__dict__["show"]  # on the class: unbound, the object itself
    assert repr(meter.show).startswith("<parallel <bound method Meter.show of <")
    assert [m.unit for m in Meter.make(["s", "kg"])] == ["s", "kg"]
    assert Meter.half([3]) == meter.half([3]) == [1.5]
    assert meter.plain_abs([-1]) == [1] and Meter.plain_abs([-2, 3]) == [2, 3]


def test_a_method_misused_points_to_options() -> None:
    with pytest.raises(TypeError, match=r"show\.options\(workers=2\)"):
        Meter("m").show([1], workers=2)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        Meter.show([1])  # unbound: the first iterable is the instances


def test_methods_pickle_by_reference() -> None:
    """Unbound, a decorated method pickles by name (a classmethod too, which looking it up would
    bind); bound, as its function and its instance."""
    assert pickle.loads(pickle.dumps(Meter.show)) is Meter.show
    stored = Meter.__dict__["make"]  # @parallel above @classmethod: the object the class holds
    assert pickle.loads(pickle.dumps(stored)) is stored
    inner = Meter.__dict__["kind"].__func__  # @parallel under @classmethod
    assert pickle.loads(pickle.dumps(inner)) is inner
    assert pickle.loads(pickle.dumps(Meter.__dict__["half"])) is Meter.__dict__["half"]
    bound = pickle.loads(pickle.dumps(Meter("cm").show))
    assert bound.__self__.unit == "cm" and bound.__wrapped__(3) == "3 cm"
    assert pickle.loads(pickle.dumps(Meter.make)).__self__ is Meter


def test_a_classmethod_above_parallel_without_descriptor_chaining() -> None:
    """Python 3.13 dropped classmethod's call of ``__get__`` on what it wraps: it calls
    ``f(cls, items)`` instead. The call still binds the class; ``.imap`` cannot, and says why."""
    inner = Meter.__dict__["kind"].__func__
    as_313 = types.MethodType(inner, Meter)  # what Python 3.13's classmethod returns
    assert as_313([1, 2]) == ["Meter:1", "Meter:2"]
    with pytest.raises(TypeError, match="put @parallel above @classmethod"):
        as_313.imap([1])


def test_options_override_keeps_the_rest() -> None:
    results = tagged.options(backend="serial")(range(4))
    assert [item for item, _ in results] == [0, 1, 2, 3]
    assert {pid for _, pid in results} == {os.getpid()}


def test_nested_map_runs_serially_in_the_worker(start_method: str) -> None:
    assert pmap(nested, [3, 4], workers=2, start_method=start_method) == [[0, 1, 4], [0, 1, 4, 9]]


def run_at_import(module: str, code: str) -> dict[str, Any]:
    """Run ``code`` as the top level of ``module`` while multiprocessing bootstraps this process
    (as a spawn or forkserver worker does when it runs the caller's script again)."""
    process = multiprocessing.current_process()
    namespace: dict[str, Any] = {"__name__": module, "pmap": pmap, "tagged": tagged, "os": os}
    process._inheriting = True  # type: ignore[attr-defined]  # multiprocessing's own mark
    try:
        exec(compile(code, f"{module}.py", "exec"), namespace)
    finally:
        del process._inheriting  # type: ignore[attr-defined]
    return namespace


def test_a_map_in_a_module_imported_while_bootstrapping_runs_serially() -> None:
    done = run_at_import("mylib", "PIDS = pmap(lambda _: os.getpid(), range(3), workers=2)\n"
                                  "TAGS = tagged(range(3))\n")
    assert done["PIDS"] == [os.getpid()] * 3
    assert done["TAGS"] == [(item, os.getpid()) for item in range(3)]


def test_a_map_in_the_script_run_again_while_bootstrapping_is_refused() -> None:
    code = "def main():\n    pmap(abs, range(3))\n\nmain()\n"
    where = r"top level of the main script \(__mp_main__.py, line 4\)"  # the line of main()
    with pytest.raises(RuntimeError, match=where):
        run_at_import("__mp_main__", code)
    run_at_import("__mp_main__", "pmap(abs, range(3), backend='thread')\n")  # no process: fine


def test_module_functions_run_in_other_processes(start_method: str) -> None:
    pids = {pid for _, pid in tagged.options(start_method=start_method)(range(40))}
    assert os.getpid() not in pids


# -- errors from the user's function ---------------------------------------------------------------


def test_unpicklable_exception_becomes_a_standin(start_method: str) -> None:
    with pytest.raises(parallelize.RemoteError, match="NeedsTwoArgs") as caught:
        pmap(raise_unpicklable, range(4), workers=2, start_method=start_method)
    assert caught.value.type_name.endswith("NeedsTwoArgs")
    assert "NeedsTwoArgs" in str(caught.value.__cause__)


def test_unpicklable_result_names_the_item(start_method: str) -> None:
    with pytest.raises(SerializationError, match="result of item 4"):
        pmap(returns_lock, range(8), workers=2, start_method=start_method)
    results = pmap(returns_lock, range(6), workers=2, start_method=start_method, on_error="return")
    assert isinstance(results[4], SerializationError) and results[5] == 5


def test_result_that_cannot_be_unpickled_in_the_caller(start_method: str) -> None:
    # Not a worker crash: the worker is alive and keeps working. The chunk runs again item by
    # item, and only the item whose result fails again gets the error, which says why.
    options: dict[str, Any] = {"workers": 1, "start_method": start_method, "chunksize": 4}
    with pytest.raises(SerializationError, match="result of the item at index 3 in the caller"):
        pmap(returns_unloadable, range(6), **options)
    results = pmap(returns_unloadable, range(6), on_error="return", **options)
    assert isinstance(results[3], SerializationError)
    assert isinstance(results[3].__cause__, FileNotFoundError)
    pids = {r for i, r in enumerate(results) if i != 3}
    assert len(pids) == 1 and pids == set(pmap(returns_unloadable, [0], **options))


class ErrorOnlyInWorkers(Exception):
    """An exception that survives a pickle round trip in its worker but cannot be rebuilt in
    the caller (a worker sends home what it could rebuild itself)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_in, (os.getpid(),))


def _rebuild_in(pid: int) -> ErrorOnlyInWorkers:
    if os.getpid() != pid:
        raise FileNotFoundError(2, "gone in the caller")
    return ErrorOnlyInWorkers()


def count_then_fail_at_7(log: str, x: int) -> int:
    with open(log, "a") as runs:
        runs.write(f"{x}\n")
    if x == 7:
        raise ErrorOnlyInWorkers()
    return x


def test_unreadable_results_run_again_without_new_retries(tmp_path: Path) -> None:
    # The chunk's items run once more, one at a time, to find the culprit; the retries the
    # worker spent are not granted again.
    log = str(tmp_path / "runs")
    fn = functools.partial(count_then_fail_at_7, log)
    out = pmap(fn, range(12), workers=2, chunksize=6, retries=2, on_error="return")
    assert isinstance(out[7], SerializationError)
    assert [x for i, x in enumerate(out) if i != 7] == [x for x in range(12) if x != 7]
    with open(log) as runs:
        counts = collections.Counter(int(line) for line in runs)
    assert counts[7] == 2 + 1 + 1  # retries + 1 in its chunk, once more alone
    assert all(counts[x] <= 2 for x in range(12) if x != 7)


def test_unpicklable_argument_names_the_item(start_method: str) -> None:
    items: list[object] = [1, 2, threading.Lock(), 4]
    with pytest.raises(SerializationError, match="argument of item 2"):
        pmap(str, items, workers=2, start_method=start_method)


def test_unpicklable_function_is_a_clear_error() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="cannot pickle the function"):
        pmap(lambda x: (lock, x), [1], workers=1)


# -- progress --


def test_progress_description_and_kwargs(capfd: pytest.CaptureFixture[str]) -> None:
    pmap(square, range(5), progress="squaring", backend="thread")
    assert "squaring" in capfd.readouterr().err
    list(imap(square, range(5), progress={"desc": "custom", "unit": "sq"}, backend="thread"))
    err = capfd.readouterr().err
    assert "custom" in err and "5/5" in err


def test_no_output_without_progress(capfd: pytest.CaptureFixture[str]) -> None:
    pmap(square, range(50), workers=2)
    assert capfd.readouterr() == ("", "")


# -- validation, before any worker starts --


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
        ({"workers": 1.5}, TypeError, "workers must be"),
        ({"chunksize": 0}, ValueError, "chunksize must be >= 1"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"start_method": "vfork"}, ValueError, "unknown start_method 'vfork'"),
        ({"ordered": "yes"}, TypeError, "ordered must be"),
        ({"progress": 3}, TypeError, "progress must be"),
        ({"timeout": -1}, ValueError, "timeout must be"),
        ({"retries": -1}, ValueError, "retries must be >= 0"),
        ({"on_error": "ignore"}, ValueError, "unknown on_error"),
        ({"colour": "red"}, TypeError, "unexpected option"),
        ({"workers": True}, TypeError, "workers must be an int >= 1"),
        ({"retries": 1.0}, TypeError, "retries must be an int >= 0"),
        ({"progress": {"total": "x"}}, TypeError, r"progress\['total'\] must be a number"),
        ({"progress": {"ncols": -1}}, ValueError, r"progress\['ncols'\] must be an int >= 0"),
        ({"progress": {"smoothing": 2}}, ValueError, r"progress\['smoothing'\]"),
        ({"progress": {"mininterval": "1s"}}, TypeError, r"progress\['mininterval'\]"),
        ({"progress": {"file": "out.txt"}}, TypeError, r"progress\['file'\] must be a file"),
        ({"progress": {"leave": "no"}}, TypeError, r"progress\['leave'\]"),
        ({"progress": {"colour_": "red"}}, TypeError, "'colour_' is not a tqdm option"),
        ({"progress": {"iterable": [1]}}, TypeError, "'iterable' is not a tqdm option"),
        ({"progress": {1: "one"}}, TypeError, "1 is not a tqdm option"),
        ({"max_ahead": 0}, ValueError, "max_ahead must be >= 1, got 0"),
        ({"max_ahead": 2.5}, TypeError, "max_ahead must be an int >= 1 or None"),
        ({"max_ahead_bytes": -1}, ValueError, "max_ahead_bytes must be >= 1"),
        ({"max_ahead_bytes": "64MiB"}, TypeError, "max_ahead_bytes must be an int >= 1 or None"),
    ],
)
def test_bad_options_fail_at_call_time(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        pmap(square, [1], **kwargs)
    with pytest.raises(error, match=match):
        imap(square, [1], **kwargs)
    with pytest.raises(error, match=match):
        parallel(**kwargs)


class Index:
    """An integer that is not an int (as numpy's are): it only has ``__index__``."""

    def __init__(self, value: int):
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_any_integer_is_taken_for_a_count() -> None:
    """``numpy.int64(2)``, or anything with ``__index__``, is a count; it is kept as a plain
    int (which is what the workers and the chunk sizer receive)."""
    from parallelize._options import Options

    numpy = pytest.importorskip("numpy")
    options = Options(
        workers=numpy.int64(2),
        chunksize=numpy.int32(3),
        max_tasks_per_worker=Index(50),
        retries=numpy.uint8(1),
        timeout=numpy.int64(30),
        max_ahead=numpy.int64(100),
        max_ahead_bytes=Index(1 << 20),
    )
    given = options.given()
    assert given == {
        "workers": 2, "chunksize": 3, "timeout": 30, "retries": 1, "max_tasks_per_worker": 50,
        "max_ahead": 100, "max_ahead_bytes": 1 << 20,
    }  # fmt: skip
    assert {type(value) for value in given.values()} == {int}
    assert tagged.options(workers=numpy.int64(2), chunksize=Index(2))(range(6))[5][0] == 5
    assert pmap(square, range(5), workers=numpy.int64(2), retries=Index(1)) == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="workers must be >= 1, got "):
        pmap(square, [1], workers=numpy.int64(0))
    with pytest.raises(TypeError, match="chunksize must be an int >= 1 or None"):
        pmap(square, [1], chunksize=numpy.float64(2.0))


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"backend": "thread", "start_method": "spawn"}, ("start_method", "backend='thread'")),
        ({"backend": "serial", "start_method": "fork"}, ("start_method", "backend='serial'")),
        ({"backend": "dask", "start_method": "spawn"}, ("start_method", "backend='dask'")),
        ({"backend": "ray", "start_method": "forkserver"}, ("start_method", "backend='ray'")),
        ({"backend": "process", "address": "tcp://h:8786"}, ("address", "backend='process'")),
        ({"backend": "thread", "address": "tcp://h:8786"}, ("address", "backend='thread'")),
        ({"address": "tcp://h:8786"}, ("address", "backend='process' (the default)")),
        ({"initargs": ("db",)}, ("initargs", "initializer")),
        ({"initargs": ("db",), "initializer": None}, ("initargs", "initializer")),
        ({"chunksize": 100, "max_ahead": 10}, ("max_ahead=10", "chunksize=100")),
    ],
)
def test_options_that_cannot_apply_together(
    options: dict[str, Any], names: tuple[str, str]
) -> None:
    """An option that cannot apply with another one given (or with the default backend) is a
    ValueError naming both, raised by the call before any worker starts."""
    pattern = ".*".join(map(re.escape, names))
    with pytest.raises(ValueError, match=pattern):
        pmap(square, [1], **options)
    with pytest.raises(ValueError, match=pattern):
        imap(square, [1], **options)  # at the call, not at the first result
    with pytest.raises(ValueError, match=pattern):
        parallel(**options)(square)([1])


def test_contradictions_across_decorator_options_and_call() -> None:
    """Options merge (decorator, then ``.options()``): the contradiction is in the merged ones,
    and it fails as soon as both are given."""
    threaded = parallel(square, backend="thread")
    with pytest.raises(ValueError, match="start_method='fork' cannot apply with backend='thread'"):
        threaded.options(start_method="fork")
    spawning = parallel(square, start_method="spawn")
    with pytest.raises(ValueError, match="start_method='spawn' cannot apply with backend='serial'"):
        spawning.options(backend="serial")
    # An option that a later one completes is not a contradiction, and None undoes one.
    assert spawning.options(backend="serial", start_method=None)([3]) == [9]
    needs_init = parallel(read_tag, initargs=("given later",), backend="thread")
    with pytest.raises(ValueError, match=r"initargs=.*initializer"):
        needs_init([1])
    assert needs_init.options(initializer=set_tag)([1]) == ["given later"]
    assert parallel(square, address="tcp://h:8786").options(address=None)([2]) == [4]
    # The defaults themselves never contradict.
    assert pmap(square, [2], backend="thread", start_method=None, address=None, initargs=()) == [4]


def test_a_backend_from_the_environment_never_contradicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PARALLELIZE_BACKEND`` moves a map elsewhere; options written for the process backend (or
    for a cluster) must still run there."""
    monkeypatch.setenv("PARALLELIZE_BACKEND", "thread")
    pids = {pid for _, pid in tagged.options(start_method="spawn")(range(4))}
    assert pids == {os.getpid()}  # it ran on threads
    assert pmap(square, [3], address="tcp://h:8786") == [9]
    monkeypatch.setenv("PARALLELIZE_BACKEND", "serial")
    assert pmap(square, [4], start_method="fork", address="tcp://h:8786") == [16]
    # An explicit backend is the user's again.
    with pytest.raises(ValueError, match="backend='thread'"):
        pmap(square, [1], backend="thread", start_method="spawn")


def spawn_nested(x: int) -> list[int]:
    """A nested map written for the process backend: in a worker it runs serially."""
    return pmap(square, range(x), backend="process", start_method="spawn", workers=2)


def test_nested_maps_turning_serial_is_not_a_contradiction() -> None:
    assert pmap(spawn_nested, [2, 3], workers=2) == [[0, 1], [0, 1, 4]]


def test_progress_options_are_checked_without_importing_tqdm() -> None:
    """A progress mapping is checked when the options are made (the decorator runs in every
    spawned worker that imports it), and that needs no tqdm: only a bar imports it."""
    code = (
        "import sys\n"
        "from parallelize import parallel, pmap\n"
        "f = parallel(abs, progress={'desc': 'd', 'total': 3, 'ncols': 80, 'leave': False})\n"
        "try:\n"
        "    parallel(abs, progress={'total': 'x'})\n"
        "except TypeError as error:\n"
        "    print(error)\n"
        "print(pmap(abs, [-1], backend='serial'), 'tqdm' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "progress['total'] must be a number >= 0 or None, got 'x'",
        "[1] False",
    ]


def test_progress_keys_are_the_tqdm_options() -> None:
    """The keys a progress mapping may hold are tqdm's keyword arguments, less ``iterable`` (the
    map drives the bar) and ``gui`` (internal to tqdm): a new tqdm option shows up here."""
    import inspect

    from tqdm.std import tqdm  # the class that tqdm.auto's bars extend

    from parallelize._options import PROGRESS_KEYS

    names = set(inspect.signature(tqdm.__init__).parameters)
    assert set(PROGRESS_KEYS) == names - {"self", "iterable", "gui", "kwargs"}


def test_every_valid_progress_option_reaches_tqdm(capfd: pytest.CaptureFixture[str]) -> None:
    spec: dict[str, Any] = {
        "desc": "all", "total": 4, "leave": True, "file": sys.stderr, "ncols": 60,
        "mininterval": 0, "maxinterval": 1.5, "miniters": 1, "ascii": True, "disable": False,
        "unit": "sq", "unit_scale": False, "dynamic_ncols": False, "smoothing": 0.5,
        "bar_format": "{desc}: {n_fmt}/{total_fmt} {unit}", "initial": 0, "position": None,
        "postfix": None, "unit_divisor": 1024, "write_bytes": False, "lock_args": None,
        "nrows": None, "colour": "green", "delay": 0,
    }  # fmt: skip
    assert pmap(square, range(4), progress=spec, backend="thread") == [0, 1, 4, 9]
    assert "all: 4/4 sq" in capfd.readouterr().err


def test_bad_arguments_fail_at_call_time() -> None:
    with pytest.raises(TypeError, match="callable"):
        pmap(42, [1])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="argument 2 to pmap"):
        pmap(square, 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="argument 3 to imap"):
        imap(add, [1], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="at least one iterable"):
        pmap(square)


def test_option_as_function_keyword_points_to_options() -> None:
    with pytest.raises(TypeError, match=r"scaled\.options\(workers=4\)"):
        scaled([1, 2], workers=4)
    with pytest.raises(TypeError, match="unexpected keyword"):
        scaled([1, 2], nonsense=1)


def test_environment_sets_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_BACKEND", "serial")
    assert {pid for _, pid in tagged.options(chunksize=1)(range(3))} == {os.getpid()}
    # an explicit option beats the environment
    assert os.getpid() not in {pid for _, pid in tagged.options(backend="process")(range(3))}
    monkeypatch.setenv("PARALLELIZE_BACKEND", "nope")
    with pytest.raises(ValueError, match="PARALLELIZE_BACKEND"):
        pmap(square, [1])
    monkeypatch.setenv("PARALLELIZE_BACKEND", "process")
    monkeypatch.setenv("PARALLELIZE_WORKERS", "0")
    with pytest.raises(ValueError, match="PARALLELIZE_WORKERS"):
        pmap(square, [1])


def test_the_environment_is_read_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same call with the same options, the environment changed in between: it follows."""
    monkeypatch.setenv("PARALLELIZE_BACKEND", "serial")
    assert {pid for _, pid in tagged.options(chunksize=1)(range(3))} == {os.getpid()}
    monkeypatch.setenv("PARALLELIZE_BACKEND", "process")
    assert os.getpid() not in {pid for _, pid in tagged.options(chunksize=1)(range(3))}
    monkeypatch.setenv("PARALLELIZE_WORKERS", "2")
    assert pmap(square, [1]) == [1]
    monkeypatch.setenv("PARALLELIZE_WORKERS", "0")
    with pytest.raises(ValueError, match="PARALLELIZE_WORKERS"):
        pmap(square, [1])


def test_workers_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLELIZE_WORKERS", "3")
    pids = {pid for _, pid in tagged.options(workers=None, chunksize=1)(range(60))}
    assert 1 <= len(pids) <= 3


def test_public_names_are_exported() -> None:
    public = {name for name in dir(parallelize) if not name.startswith("_")}
    public -= {"annotations"}
    assert set(parallelize.__all__) == public
    assert parallelize.__all__ == sorted(parallelize.__all__)


def test_every_option_is_typed_and_validated() -> None:
    from parallelize import MapOptions
    from parallelize._options import OPTION_NAMES, Options, Resolved

    assert tuple(MapOptions.__annotations__) == OPTION_NAMES
    assert Resolved.__slots__ == OPTION_NAMES
    assert Options(workers=2).merged(Options(chunksize=5)).given() == {"workers": 2, "chunksize": 5}
    with pytest.raises(AttributeError):
        Options().workers = 3  # type: ignore[misc]


def test_options_survive_pickling() -> None:
    import pickle

    from parallelize._options import Options

    options = Options(workers=2, progress="items")
    assert pickle.loads(pickle.dumps(options)).given() == {"workers": 2, "progress": "items"}


def test_workers_and_the_api_do_not_load_concurrent_futures() -> None:
    """It costs tens of milliseconds to import: in every spawned worker, in the fork server and
    at ``from parallelize import pmap``. Only a crash report needs it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import parallelize._worker.loop\n"
        "from parallelize import pmap\n"
        "print(sorted(m for m in sys.modules if m.startswith(('concurrent', 'logging'))))\n"
        "from parallelize import WorkerCrashedError\n"
        "from concurrent.futures.process import BrokenProcessPool\n"
        "assert issubclass(WorkerCrashedError, BrokenProcessPool)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_crash_errors_pickled_by_0_1_0_still_load() -> None:
    """0.1.0 defined WorkerCrashedError in parallelize._errors; its pickles name that module."""
    import pickle

    from parallelize import WorkerCrashedError

    old = b"cparallelize._errors\n_rebuild_crash\n(Vgone\nI3\nI-9\ntR."
    error = pickle.loads(old)
    assert isinstance(error, WorkerCrashedError)
    assert (str(error), error.index, error.exitcode) == ("gone", 3, -9)


