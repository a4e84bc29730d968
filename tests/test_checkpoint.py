"""``checkpoint=``: a map run again computes only what its file does not hold."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parallelize import Checkpoint, CheckpointError, Executor, MapErrorGroup, Pool, imap, pmap
from parallelize._checkpoint import summary
from support import script_env

pytestmark = pytest.mark.timeout(120)


def noted(folder: str, x: int) -> int:
    """x*x, noting in ``folder`` that item x was computed."""
    with open(os.path.join(folder, f"ran-{x}"), "a") as f:
        f.write("x")
    if x == 13:
        raise ValueError("thirteen")
    return x * x


def _ran(folder: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in folder.glob("ran-*")}


def _clear(folder: Path) -> None:
    for p in folder.glob("ran-*"):
        p.unlink()


@pytest.mark.parametrize("backend", ["process", "thread", "serial"])
def test_a_second_run_computes_only_what_is_missing(tmp_path: Path, backend: str) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    assert pmap(fn, range(10), checkpoint=path, backend=backend) == [x * x for x in range(10)]
    _clear(work)
    assert pmap(fn, range(15), checkpoint=path, backend=backend, on_error="return")[:13] == [
        x * x for x in range(13)
    ]
    assert _ran(work) == {10, 11, 12, 13, 14}
    _clear(work)
    items = [0, 99, 2, 3]  # the item at position 1 changed: computed again
    assert list(imap(fn, items, checkpoint=path, backend=backend)) == [x * x for x in items]
    assert _ran(work) == {99}


def test_a_map_fully_stored_runs_no_item(tmp_path: Path) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    pmap(fn, range(6), checkpoint=path)
    _clear(work)
    assert pmap(fn, range(6), checkpoint=path) == [x * x for x in range(6)]
    assert _ran(work) == set()


def test_failures_are_not_results(tmp_path: Path) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    out = pmap(fn, [12, 13], checkpoint=path, on_error="return", backend="thread")
    assert isinstance(out[1], ValueError)
    assert (summary(str(path))["done"], summary(str(path))["failed"]) == (1, 1)
    _clear(work)
    pmap(fn, [12, 13], checkpoint=path, on_error="return", backend="thread")
    assert _ran(work) == {13}


def test_another_function_on_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    pmap(abs, [1, -2], checkpoint=path, backend="thread")
    with pytest.raises(CheckpointError, match="len"):
        pmap(len, ["a"], checkpoint=path, backend="thread")
    assert pmap(len, ["ab"], checkpoint=Checkpoint(path, on_mismatch="recompute"),
                backend="thread") == [2]  # fmt: skip


def test_two_maps_on_one_file_the_second_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    stream = imap(abs, range(100), checkpoint=path, backend="thread")
    next(stream)
    with pytest.raises(CheckpointError, match="in use"):
        pmap(abs, range(3), checkpoint=path, backend="thread")
    stream.close()  # type: ignore[attr-defined]
    assert pmap(abs, range(3), checkpoint=path, backend="thread") == [0, 1, 2]


def test_an_imap_takes_the_lock_when_called_and_a_dropped_one_gives_it_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "map.ckpt"
    first = imap(abs, range(3), checkpoint=path, backend="thread")
    with pytest.raises(CheckpointError, match="in use"):
        imap(abs, range(3), checkpoint=path, backend="thread")
    del first  # never started: dropping it releases the file
    assert list(imap(abs, range(3), checkpoint=path, backend="thread")) == [0, 1, 2]


HOLDER = """
import sys, time
from parallelize import imap

def slow(x):
    time.sleep(0.2)
    return x

if __name__ == "__main__":
    stream = imap(slow, range(1000), checkpoint=sys.argv[1], backend="thread")
    next(stream)
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_map_in_another_process_holds_the_file(tmp_path: Path) -> None:
    script, path = tmp_path / "hold.py", tmp_path / "map.ckpt"
    script.write_text(HOLDER)
    with subprocess.Popen(
        [sys.executable, str(script), str(path)], env=script_env(), stdout=subprocess.PIPE,
        text=True,
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
            with pytest.raises(CheckpointError, match="in use"):
                pmap(abs, range(3), checkpoint=path, backend="thread")
        finally:
            holder.kill()
    again = Checkpoint(path, on_mismatch="recompute")
    assert pmap(abs, range(3), checkpoint=again, backend="thread") == [0, 1, 2]


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_workers_started_during_a_map_do_not_keep_its_lock(
    tmp_path: Path, start_method: str
) -> None:
    path = tmp_path / "map.ckpt"
    assert pmap(abs, [1, -2], checkpoint=path, workers=3, start_method=start_method) == [1, 2]
    other = "from parallelize import pmap; import sys; print(pmap(abs, [1, -2], "
    other += "checkpoint=sys.argv[1], backend='thread'))"
    done = subprocess.run(
        [sys.executable, "-c", other, str(path)], env=script_env(), capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout == "[1, 2]\n", done.stderr


def test_results_stored_in_a_file_others_may_write_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    pmap(abs, [1, -2], checkpoint=path, backend="thread")
    os.chmod(path, 0o666)
    with pytest.raises(CheckpointError, match="unpickling runs code"):
        pmap(abs, [1, -2], checkpoint=path, backend="thread")


def test_a_file_that_is_not_a_checkpoint_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me\n")
    with pytest.raises(CheckpointError, match="not a parallelize checkpoint"):
        pmap(abs, [1], checkpoint=path, backend="thread")
    assert path.read_text() == "keep me\n"


def test_a_group_records_its_failures_to_run_again(tmp_path: Path) -> None:
    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    for _ in range(2):
        _clear(work)
        with pytest.raises(MapErrorGroup) as caught:
            pmap(fn, [11, 12, 13], checkpoint=path, on_error="group")
        assert caught.value.failed_indexes == [2]
        assert caught.value.results[:2] == [121, 144]
    assert _ran(work) == {13}


def test_unordered_results_come_in_input_order(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    pmap(abs, range(-5, 0), checkpoint=path)
    assert pmap(abs, range(-5, 5), checkpoint=path, ordered=False) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]


def test_pool_and_executor_maps_keep_a_checkpoint(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    fn = functools.partial(noted, str(work))
    with Pool(2) as pool:
        assert pool.map(fn, range(4), checkpoint=tmp_path / "pool.ckpt") == [0, 1, 4, 9]
        _clear(work)
        assert pool.map(fn, range(6), checkpoint=tmp_path / "pool.ckpt") == [
            x * x for x in range(6)
        ]
        assert _ran(work) == {4, 5}
        _clear(work)
        with pytest.raises(ValueError, match="thirteen"):
            pool.starmap(noted, [(str(work), 12), (str(work), 13)],
                         checkpoint=tmp_path / "star.ckpt")  # fmt: skip
        assert summary(str(tmp_path / "star.ckpt"))["done"] == 1
    _clear(work)
    with Executor(2) as executor:
        assert list(executor.map(fn, range(3), checkpoint=tmp_path / "ex.ckpt")) == [0, 1, 4]
        _clear(work)
        assert list(executor.map(fn, range(5), checkpoint=tmp_path / "ex.ckpt")) == [
            x * x for x in range(5)
        ]
        assert _ran(work) == {3, 4}


def test_a_bad_checkpoint_option_fails_before_any_worker_starts() -> None:
    with pytest.raises(TypeError, match="checkpoint"):
        pmap(abs, [1], checkpoint=3)


KILLED = """
import os, sys, time
from parallelize import pmap

def slow(x):
    open(os.path.join(sys.argv[2], f"ran-{{x}}"), "a").write("x")
    time.sleep(0.05)
    return x * x

if __name__ == "__main__":
    print(sum(pmap(slow, range(60), checkpoint=sys.argv[1], chunksize=1, workers=2)))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT])
def test_a_map_killed_half_way_resumes_where_it_stopped(tmp_path: Path, signum: int) -> None:
    """SIGKILL (or Ctrl-C) the caller mid-map; the second run computes only what the first did
    not deliver, and returns what a fresh run returns."""
    script, path, work = tmp_path / "s.py", tmp_path / "map.ckpt", tmp_path / "work"
    work.mkdir()
    script.write_text(textwrap.dedent(KILLED.format()))
    cmd = [sys.executable, str(script), str(path), str(work)]
    first = subprocess.Popen(cmd, env=script_env(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_ran(work)) < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signum)
    first.wait()
    stored = summary(str(path))["done"]
    assert 0 < stored < 60
    _clear(work)
    done = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, check=True)
    assert int(done.stdout) == sum(x * x for x in range(60))
    assert len(_ran(work)) <= 60 - stored


SEEDED = """
import sys
from parallelize import pmap

def kind(word):
    return word in {"alpha", "beta", "gamma", "delta"}

if __name__ == "__main__":
    items = [frozenset({"x", "y", "z"}), "alpha", "omega"]
    print(pmap(kind, items, checkpoint=sys.argv[1], backend="thread"))
"""


def test_a_set_in_the_code_or_the_items_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    script, path = tmp_path / "seeded.py", tmp_path / "map.ckpt"
    script.write_text(SEEDED)
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, str(script), str(path)], env={**script_env(), "PYTHONHASHSEED": seed},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.stdout == "[False, True, False]\n", done.stderr
    assert summary(str(path))["done"] == 3


def scaled(x: int, scale: int = 2) -> int:
    return x * scale


def test_changed_default_arguments_are_another_function(tmp_path: Path) -> None:
    path = tmp_path / "map.ckpt"
    pmap(scaled, [1, 2], checkpoint=path, backend="thread")
    scaled.__defaults__ = (3,)
    try:
        with pytest.raises(CheckpointError, match="default or bound arguments"):
            pmap(scaled, [1, 2], checkpoint=path, backend="thread")
    finally:
        scaled.__defaults__ = (2,)


def test_what_plain_pickle_refuses_works_on_threads(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "map.ckpt"
    lock = threading.Lock()
    out = pmap(lambda x: lambda: x, [lock, 2], checkpoint=path, backend="thread")
    assert out[1]() == 2
    again = pmap(lambda x: lambda: x, [lock, 2], checkpoint=path, backend="thread")
    assert again[1]() == 2


def test_arrays_read_back_are_writable(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "map.ckpt"
    pmap(np.arange, [100_000], checkpoint=path, backend="thread")
    (array,) = pmap(np.arange, [100_000], checkpoint=path, backend="thread")
    array += 1
    assert array[0] == 1


def test_a_file_with_no_tables_yet_becomes_a_checkpoint(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "map.ckpt"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")  # a first run killed before it made its tables
    db.close()
    assert pmap(abs, [-1], checkpoint=path, backend="thread") == [1]


def test_an_input_error_names_its_position_in_the_whole_input(tmp_path: Path) -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise KeyError("bad input")

    path = tmp_path / "map.ckpt"
    pmap(abs, range(3), checkpoint=path, backend="thread")
    for run in (pmap, lambda *a, **k: list(imap(*a, **k))):
        with pytest.raises(KeyError) as caught:
            run(abs, items(), checkpoint=path, backend="thread")
        assert "at position 5" in caught.value.__notes__[-1]


def test_the_asyncio_maps_refuse_a_checkpoint(tmp_path: Path) -> None:
    import asyncio

    from parallelize import apmap

    with pytest.raises(ValueError, match="checkpoint= is not supported by apmap"):
        asyncio.run(apmap(abs, [1], checkpoint=tmp_path / "map.ckpt"))


def test_the_summary_counts_the_last_runs_items(tmp_path: Path) -> None:
    path = tmp_path / "odd #name?.ckpt"
    pmap(abs, range(10), checkpoint=path, backend="thread")
    pmap(abs, range(3), checkpoint=path, backend="thread")
    info = summary(str(path))
    assert (info["done"], info["failed"], info["total"]) == (3, 0, 3)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        summary(str(tmp_path / "missing.ckpt"))


def test_the_command_line_shows_a_checkpoint(tmp_path: Path) -> None:
    import json

    path = tmp_path / "map.ckpt"
    pmap(abs, [1, -2, 3], checkpoint=path, backend="thread")
    cli = [sys.executable, "-m", "parallelize", "checkpoint", str(path)]
    text = subprocess.run(cli, env=script_env(), capture_output=True, text=True, check=True)
    assert "builtins.abs" in text.stdout
    assert "3 done, 0 failed, 3 in all" in text.stdout
    as_json = subprocess.run(
        [*cli, "--json"], env=script_env(), capture_output=True, text=True, check=True
    )
    info = json.loads(as_json.stdout)
    assert (info["function"], info["done"], info["total"]) == ("builtins.abs", 3, 3)
    assert info["created"] and info["updated"]
    missing = subprocess.run(
        [*cli[:-1], str(tmp_path / "nope.ckpt")], env=script_env(), capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "no checkpoint file" in missing.stderr


def crash_on(folder: str, x: int) -> int:
    """x*x, noting the item; the worker dies on item 5 while ``folder`` holds a ``crash`` file."""
    with open(os.path.join(folder, f"ran-{x}"), "a") as f:
        f.write("x")
    if x == 5 and os.path.exists(os.path.join(folder, "crash")):
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_what_came_back_before_a_worker_crash_is_kept(tmp_path: Path, start_method: str) -> None:
    from parallelize import WorkerCrashedError

    work, path = tmp_path / "work", tmp_path / "map.ckpt"
    work.mkdir()
    (work / "crash").touch()
    fn = functools.partial(crash_on, str(work))
    options: dict[str, object] = {"workers": 2, "chunksize": 1, "start_method": start_method}
    with pytest.raises(WorkerCrashedError):
        pmap(fn, range(10), checkpoint=path, **options)
    kept = summary(str(path))["done"]
    (work / "crash").unlink()
    _clear(work)
    assert pmap(fn, range(10), checkpoint=path, **options) == [x * x for x in range(10)]
    assert len(_ran(work)) == 10 - kept and 5 in _ran(work)


def test_an_executor_map_over_an_input_too_long_for_len_keeps_a_checkpoint(tmp_path: Path) -> None:
    with Executor(2, backend="thread") as executor:
        # buffersize bounds how far the map runs ahead of the three results read: unbounded, the
        # thread workers race through the endless input and the first commit meets a backlog.
        results = executor.map(abs, range(2**70), checkpoint=tmp_path / "map.ckpt", buffersize=16)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        results.close()  # type: ignore[attr-defined]
