"""What only the interpreters backend does: which Python it needs, the extension modules that
refuse a subinterpreter, abandoned and recycled interpreters, warm interpreters, and a clean exit.

The behaviour every backend keeps, interpreters included, is the behaviour suite in
``behaviour/``. The functions mapped here are this module's, imported in each interpreter: so
it imports nothing that refuses a subinterpreter (psutil, via ``support``) at the top.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parallelize import Executor, MapOptions, Pool, aimap, apmap, imap, parallel, pmap

pytestmark = pytest.mark.timeout(60)

needs_313 = pytest.mark.skipif(
    sys.version_info < (3, 13), reason="subinterpreter workers need Python 3.13"
)


@pytest.fixture(autouse=True, scope="module")
def _close_interpreters_after() -> Iterator[None]:
    """No interpreter outlives this module (see support.close_interpreters)."""
    yield
    from support import close_interpreters

    close_interpreters()


def square(x: int) -> int:
    return x * x


def interpreter_id(_: object) -> int:
    """The id of the interpreter running this call (unique in the process, never reused)."""
    import _interpreters  # type: ignore[import-not-found,unused-ignore]

    return int(_interpreters.get_current()[0])


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def uses_numpy(x: int) -> int:
    import numpy  # refuses to load in a subinterpreter

    return int(numpy.int64(x))


def import_numpy() -> None:
    import numpy  # noqa: F401


# -- before 3.13 --


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="this Python has subinterpreters")
def test_older_pythons_refuse_at_call_time_naming_the_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Choosing the backend is fine (options, decorator); calling a map raises, before any
    worker starts, a RuntimeError (also an ImportError) that names the Python it needs."""
    options = MapOptions(backend="interpreters")
    f = parallel(square, backend="interpreters")
    for call in (
        lambda: f([1, 2]),
        lambda: pmap(square, [1], **options),
        lambda: list(imap(square, [1], backend="interpreters")),
    ):
        with pytest.raises(RuntimeError, match=r"Python 3\.13 or newer") as raised:
            call()
        assert isinstance(raised.value, ImportError)
        assert 'backend="process"' in str(raised.value)
    monkeypatch.setenv("PARALLELIZE_BACKEND", "interpreters")
    with pytest.raises(RuntimeError, match=r"Python 3\.13"):
        pmap(square, [1])


# -- 3.13 and newer --


@needs_313
def test_every_entry_point_runs_on_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decorator, pmap, imap, MapOptions, Pool, Executor, the asyncio forms and the
    environment variable."""
    expected = [x * x for x in range(10)]
    assert parallel(square, backend="interpreters")(range(10)) == expected
    assert pmap(square, range(10), **MapOptions(backend="interpreters", workers=2)) == expected
    assert sorted(imap(square, range(10), backend="interpreters", ordered=False)) == expected
    with Pool(2, backend="interpreters") as pool:
        assert pool.map(square, range(10)) == expected
    with Executor(2, backend="interpreters") as executor:
        assert list(executor.map(square, range(10))) == expected

    async def both() -> tuple[list[int], list[int]]:
        listed = await apmap(square, range(10), backend="interpreters", workers=2)
        streamed = [x async for x in aimap(square, range(10), backend="interpreters")]
        return listed, streamed

    assert asyncio.run(both()) == (expected, expected)
    monkeypatch.setenv("PARALLELIZE_BACKEND", "interpreters")
    ids = set(pmap(interpreter_id, range(8), chunksize=1, workers=2))
    assert 0 not in ids  # 0 is the main interpreter


@needs_313
def test_closures_and_lambdas_travel_by_value() -> None:
    offset = 10
    assert pmap(lambda x: x + offset, [1, 2], backend="interpreters") == [11, 12]


@needs_313
@pytest.mark.parametrize("where", ["the item", "the function's module", "the initializer"])
def test_an_extension_module_that_refuses_interpreters_is_named(where: str) -> None:
    """NumPy refuses to load in a subinterpreter: the error says so, names it, and suggests
    backend="process", whether the item imports it, the function's module does (the function
    then cannot be unpickled there), or the initializer does. The pool is usable after."""
    pytest.importorskip("numpy")
    kwargs: dict[str, Any] = {"backend": "interpreters", "workers": 2}
    fn: Any = uses_numpy
    if where == "the function's module":
        import numpy

        fn = numpy.abs  # pickled by reference: unpickling it imports numpy
    elif where == "the initializer":
        kwargs["initializer"] = import_numpy
    with pytest.raises(ImportError, match=r"numpy cannot be imported in a subinterpreter") as e:
        pmap(fn, [1, 2], **kwargs)
    assert 'backend="process"' in str(e.value)
    assert e.value.name is not None and e.value.name.startswith("numpy")
    assert pmap(square, [3], backend="interpreters") == [9]


@needs_313
def test_a_timed_out_item_abandons_its_interpreter_and_the_map_goes_on() -> None:
    """An interpreter cannot be stopped mid-item: the item fails with TimeoutError, its
    interpreter is replaced at once, and ends on its own when the item returns."""
    import _interpreters

    assert pmap(square, range(4), backend="interpreters", workers=2) == [0, 1, 4, 9]
    warm = len(_interpreters.list_all())  # this configuration's pool, and others kept warm
    began = time.monotonic()
    out = pmap(
        nap,
        [3.0, 0.01, 0.01, 0.01],
        chunksize=1,
        timeout=0.5,
        on_error="return",
        backend="interpreters",
        workers=2,
    )
    assert time.monotonic() - began < 2.5  # nobody waited for the 3 s item
    assert isinstance(out[0], TimeoutError)
    assert "interpreter was abandoned" in str(out[0])
    assert out[1:] == [0.01] * 3
    deadline = time.monotonic() + 10
    while len(_interpreters.list_all()) > warm and time.monotonic() < deadline:
        time.sleep(0.05)  # the abandoned one ends once its nap returns
    assert len(_interpreters.list_all()) <= warm


@needs_313
def test_max_tasks_per_worker_recycles_interpreters() -> None:
    ran = pmap(
        interpreter_id,
        range(12),
        chunksize=1,
        max_tasks_per_worker=2,
        backend="interpreters",
        workers=2,
    )
    per_interpreter = {i: ran.count(i) for i in set(ran)}
    assert len(per_interpreter) >= 6 and max(per_interpreter.values()) <= 2, per_interpreter


@needs_313
def test_interpreters_stay_warm_between_maps_and_per_configuration() -> None:
    """The same interpreters run the next map of the same configuration, also after a map of
    another configuration ran between them."""
    first = set(pmap(interpreter_id, range(8), chunksize=1, backend="interpreters", workers=2))
    pmap(interpreter_id, range(3), chunksize=1, backend="interpreters", workers=1)
    again = set(pmap(interpreter_id, range(8), chunksize=1, backend="interpreters", workers=2))
    assert again <= first


@needs_313
def test_a_fork_after_an_interpreters_map_works() -> None:
    """CPython aborts a child forked from a process holding subinterpreters: the idle ones are
    closed before any fork, and started again by the next map."""
    assert pmap(square, range(4), backend="interpreters", workers=2) == [0, 1, 4, 9]
    assert pmap(square, range(4), start_method="fork", workers=2) == [0, 1, 4, 9]
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert pmap(square, range(4), backend="interpreters", workers=2) == [0, 1, 4, 9]


@needs_313
def test_breaking_out_of_imap_leaves_no_thread_or_descriptor() -> None:
    from support import open_fds  # not at the top: it imports psutil, which refuses interpreters

    pmap(square, range(4), backend="interpreters", workers=2)  # warm
    threads, fds = threading.active_count(), open_fds()
    for _ in imap(nap, [0.2] * 20, chunksize=1, backend="interpreters", workers=2):
        break
    assert pmap(square, range(4), backend="interpreters", workers=2) == [0, 1, 4, 9]
    deadline = time.monotonic() + 10
    while (threading.active_count(), open_fds()) > (threads, fds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads
    assert open_fds() <= fds


@needs_313
def test_a_script_exits_cleanly_with_busy_and_idle_interpreters(tmp_path: Path) -> None:
    """At exit, idle interpreters are closed and an abandoned busy one does not hold the exit
    up; __main__ functions and classes travel by value; nothing is printed to stderr."""
    from support import script_env

    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import time
        from parallelize import pmap

        class Box:
            def __init__(self, value):
                self.value = value

        def unbox(box):
            if box.value < 0:
                time.sleep(60)
            return box.value * 2

        if __name__ == "__main__":
            print(pmap(unbox, [Box(1), Box(2)], backend="interpreters"))
            out = pmap(unbox, [Box(-1)], backend="interpreters", timeout=0.3,
                       on_error="return")
            print(type(out[0]).__name__)
    """)
    )
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[2, 4]", "TimeoutError"]
    assert done.stderr == ""
    assert time.monotonic() - began < 30


@needs_313
def test_descriptor_numbers_past_1024_work() -> None:
    """An interpreter's pipes are the caller's descriptors: a program that holds many files
    gets numbers past select()'s limit, and its maps still run."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    null = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(null) for _ in range(1030)]
    try:
        assert pmap(square, range(6), backend="interpreters", workers=1) == [
            x * x for x in range(6)
        ]
    finally:
        for fd in [null, *held]:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@needs_313
def test_a_reply_after_the_caller_let_go_does_not_kill_the_caller(tmp_path: Path) -> None:
    """With SIGPIPE at its default action (a script piped into ``head`` sets it so), an
    abandoned interpreter that replies once its item returns must not end the process."""
    from support import script_env

    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
        import signal, time
        from parallelize import pmap

        def nap(seconds):
            time.sleep(seconds)
            return seconds

        if __name__ == "__main__":
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            out = pmap(nap, [1.0], timeout=0.2, on_error="return", backend="interpreters")
            time.sleep(2)  # the abandoned item returns and its interpreter replies meanwhile
            # Interpreters that retire, and a pool closed after its workers ended.
            pmap(abs, range(8), chunksize=1, max_tasks_per_worker=2, backend="interpreters")
            print(type(out[0]).__name__, "alive")
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False, capture_output=True, text=True, env=script_env(), timeout=50,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert done.stdout.split() == ["TimeoutError", "alive"]


@needs_313
def test_a_path_entry_that_is_not_a_string_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.path may hold other objects (import skips them): interpreters start all the same."""
    monkeypatch.setattr(sys, "path", [*sys.path, Path("/nonexistent"), b"/nowhere"])
    fresh = {"workers": 1, "max_tasks_per_worker": 97}  # a configuration no warm pool has
    assert pmap(square, range(3), backend="interpreters", **fresh) == [0, 1, 4]


@needs_313
def test_workers_output_reaches_the_caller(capfd: pytest.CaptureFixture[str]) -> None:
    def shout(x: int) -> int:
        print(f"item {x}")
        return x

    pmap(shout, range(3), backend="interpreters", workers=2)
    out = capfd.readouterr().out
    assert sorted(line for line in out.splitlines() if line.startswith("item")) == [
        "item 0",
        "item 1",
        "item 2",
    ]


@needs_313
def test_no_process_is_started() -> None:
    """A map on interpreters runs in this process."""
    assert set(pmap(lambda _: os.getpid(), range(4), backend="interpreters")) == {os.getpid()}
