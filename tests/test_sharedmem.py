"""Large arrays travel through shared memory in both directions, and nothing is left behind."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from parallelize import pmap

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20


def total(a: object) -> float:
    return float(np.asarray(a).sum())


def make(i: int) -> object:
    return np.full(MB // 8 * 2, i, dtype=np.float64)  # 2 MB: above the threshold


def echo(a: object) -> object:
    return a


def test_large_arrays_both_ways(start_method: str) -> None:
    arrays = [np.arange(MB // 4, dtype=np.float64) * i for i in range(6)]  # 2 MB each
    assert pmap(total, arrays, workers=2, start_method=start_method) == [a.sum() for a in arrays]
    made = pmap(make, range(6), workers=2, start_method=start_method)
    assert [float(m[0]) for m in made] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = pmap(echo, arrays, workers=2, start_method=start_method)
    assert all((a == b).all() for a, b in zip(arrays, back, strict=True))
    back[1][:] = -1  # returned arrays are the caller's own, writable memory
    assert arrays[1][1] == 1.0


def backing(a: object) -> str:
    """Where an array's data lives in this process: "shm" (a /dev/shm segment) or "private"."""
    if isinstance(a, dict):
        a = a["array"]
    address = np.asarray(a).__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(bound, 16) for bound in fields[0].split("-"))
            if low <= address < high:
                return "shm" if len(fields) > 5 and fields[5].startswith("/dev/shm/") else "private"
    return "private"


def test_large_arguments_are_views_of_shared_memory(start_method: str) -> None:
    """What docs/faq.md and docs/comparison.md say: an item's array of 1 MiB or more, even inside
    a dict or a list, reaches the worker through shared memory, and so does one the function
    carries (a closure, ``functools.partial``); a smaller one is pickled."""
    big = np.ones(2 * MB // 8)
    small = np.ones(MB // 8 // 2)  # 512 KiB: below the threshold
    items = [big, small, {"array": big}]
    assert pmap(backing, items, workers=2, start_method=start_method) == ["shm", "private", "shm"]
    carried = pmap(lambda _: backing(big), [0], workers=1, start_method=start_method)
    assert carried == ["shm"]
    carried = pmap(functools.partial(backing_of_carried, small), [0], workers=1)
    assert carried == ["private"]


def backing_of_carried(a: object, _: int) -> str:
    return backing(a)


def claim_and_check(carried: Any, i: int) -> tuple[bool, float]:
    """Write this worker's pid into the array the function carries, give the other worker time
    to do the same, then read it back."""
    carried[0] = os.getpid()
    time.sleep(0.3)
    return bool(carried[0] == os.getpid()), float(carried[1])


def test_an_array_the_function_carries_is_each_workers_own(start_method: str) -> None:
    """Shared pages, private writes: what one worker writes to the array its function carries is
    seen neither by the other worker nor by the caller, as when each had a pickled copy; and a
    later map with new contents in the same array gets the new contents."""
    big = np.zeros(2 * MB // 8)
    big[1] = 7.0
    claim = functools.partial(claim_and_check, big)
    options: dict[str, Any] = {"workers": 2, "chunksize": 1, "start_method": start_method}
    assert pmap(claim, range(2), **options) == [(True, 7.0), (True, 7.0)]
    assert big[0] == 0.0
    big[1] = 8.0
    assert pmap(claim, range(2), **options) == [(True, 8.0), (True, 8.0)]


def test_carried_arrays_are_freed_with_the_pool(start_method: str) -> None:
    from parallelize._backends import process

    for i in range(3):  # three functions, each holding its own array
        big = np.full(2 * MB // 8, float(i))
        carried = functools.partial(backing_of_carried, big)
        assert pmap(carried, [0], workers=2, start_method=start_method) == ["shm"]
    assert _ours("pzL")
    process._shutdown_all()
    assert _ours("pzL") == set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "method",
    [
        pytest.param(
            "fork",
            marks=pytest.mark.xfail(
                reason="fork workers started before the caller's resource tracker runs cannot "
                "register segments, so their results come through the pipe (docs/faq.md says so)",
                strict=True,
            ),
        ),
        "forkserver",
        "spawn",
    ],
)
def test_large_results_are_views_of_shared_memory(method: str, tmp_path: Path) -> None:
    """A worker's result of 1 MiB or more reaches the caller through shared memory. In a fresh
    interpreter, as a user's first map: a pool started later in this one may behave otherwise."""
    script = tmp_path / "results.py"
    script.write_text(
        textwrap.dedent(f"""
        import numpy as np
        from parallelize import pmap
        from test_sharedmem import backing

        def make(i):
            return np.full(300_000, i, dtype=np.float64)

        if __name__ == "__main__":
            print(*[backing(a) for a in pmap(make, range(2), workers=2, start_method={method!r})])
    """)
    )
    tests = str(Path(__file__).parent)  # for backing(), by name in spawned workers too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["shm", "shm"]


def test_big_bytes_and_small_buffers_mixed() -> None:
    items = [b"x" * (3 * MB), b"small", bytearray(2 * MB)]
    assert pmap(len, items, workers=2) == [3 * MB, 5, 2 * MB]


def test_nothing_outlives_the_interpreter(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "shm.py"
    script.write_text(
        textwrap.dedent(f"""
        import numpy as np
        from parallelize import pmap

        def make(i):
            return np.full(300_000, i, dtype=np.float64)

        if __name__ == "__main__":
            arrays = [np.ones(300_000) * i for i in range(8)]
            for _ in range(3):
                sums = pmap(np.sum, arrays, workers=2, start_method={start_method!r})
                made = pmap(make, range(8), workers=2, start_method={start_method!r})
                carried = pmap(lambda i: arrays[i][0], range(8), start_method={start_method!r})
            kept = made[3]
            print(sums[2], float(kept[0]), carried[5])
    """)
    )
    before = set(os.listdir("/dev/shm"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["600000.0", "3.0", "5.0"]
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr
    assert done.stderr == ""
    assert set(os.listdir("/dev/shm")) - before == set()


def _ours(prefixes: str | tuple[str, ...] = ("pzA", "pzR", "pzL")) -> set[str]:
    """Segments of this test process and its workers."""
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefixes)}


def test_returned_arrays_survive_later_maps(start_method: str) -> None:
    # A worker reuses a reply segment only once the caller has let go of every array in it.
    first = pmap(make, range(8), workers=2, start_method=start_method)
    for _ in range(3):
        again = pmap(make, range(100, 108), workers=2, start_method=start_method)
        assert [float(a[-1]) for a in again] == [float(i) for i in range(100, 108)]
    assert [float(a[0]) for a in first] == [float(i) for i in range(8)]
    assert all((a == a[0]).all() for a in first)


def test_reply_segments_are_reused_not_piled_up() -> None:
    pmap(make, range(8), workers=2)  # warm: the pool has made its segments
    before = _ours()
    for _ in range(5):
        assert len(pmap(make, range(8), workers=2)) == 8
    # Each map's results are dropped before the next, so their segments are written again.
    assert len(_ours() - before) <= 4


def test_idle_pool_frees_its_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallelize._backends import process
    from parallelize._wire import sharedmem

    monkeypatch.setattr(sharedmem, "IDLE_SECONDS", 0.5)
    process._shutdown_all()  # workers read the idle period when they start
    arrays = [np.ones(MB // 4) * i for i in range(4)]
    for _ in range(2):  # the second map gives the first one's reply segments back
        made = pmap(make, range(4), workers=2)
        assert pmap(total, arrays, workers=2) == [a.sum() for a in arrays]
        del made
    assert _ours(), "the pool kept nothing for reuse"
    deadline = time.monotonic() + 10
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ours() == set()
    assert pmap(total, arrays, workers=2) == [a.sum() for a in arrays]  # and it still works
    process._shutdown_all()


def make_or_die(i: int) -> object:
    if i == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return make(i)


def test_a_killed_workers_segments_are_unlinked(start_method: str) -> None:
    from parallelize import WorkerCrashedError
    from parallelize._backends import process

    kept = pmap(make, range(4), workers=2, start_method=start_method)
    with pytest.raises(WorkerCrashedError):
        pmap(make_or_die, range(8), workers=2, start_method=start_method, chunksize=1)
    assert [float(a[0]) for a in kept] == [0.0, 1.0, 2.0, 3.0]  # still mapped, still valid
    process._shutdown_all()
    assert _ours() == set()
    assert [float(a[-1]) for a in kept] == [0.0, 1.0, 2.0, 3.0]


def _run(tmp_path: Path, code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (these tests fork it, which must have no threads)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.split()


def test_arrays_held_by_a_forked_child_are_not_overwritten(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
        import multiprocessing, time
        import numpy as np
        from parallelize import pmap

        def make(i):
            return np.full(1 << 18, i, dtype=np.float64)

        def consume(arrays, out):
            time.sleep(0.5)  # the parent lets go of the arrays and maps again meanwhile
            out.put([float(a[0]) for a in arrays if (a == a[0]).all()])

        if __name__ == "__main__":
            made = pmap(make, range(4), workers=2, chunksize=1)
            context = multiprocessing.get_context("fork")
            queue = context.SimpleQueue()
            child = context.Process(target=consume, args=(made, queue))
            child.start()
            del made
            again = pmap(make, range(100, 104), workers=2, chunksize=1)  # not into them
            print(queue.get(), [float(a[0]) for a in again])
            child.join()
        """,
    )
    assert out == ["[0.0,", "1.0,", "2.0,", "3.0]", "[100.0,", "101.0,", "102.0,", "103.0]"]


def test_results_dropped_after_the_map_are_freed_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from parallelize._backends import process
    from parallelize._wire import sharedmem

    monkeypatch.setattr(sharedmem, "IDLE_SECONDS", 0.3)
    process._shutdown_all()
    made = pmap(make, range(6), workers=2)  # small arguments: only results use shared memory
    time.sleep(1.0)  # idle, but the caller still holds the arrays: they stay
    assert [float(a[-1]) for a in made] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert _ours()
    del made
    deadline = time.monotonic() + 10
    while _ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ours() == set()
    process._shutdown_all()


def test_idle_release_survives_a_fork(tmp_path: Path) -> None:
    out = _run(
        tmp_path,
        """
        import os, time
        import numpy as np
        import parallelize._wire.sharedmem as sharedmem
        from parallelize import pmap

        def ours():
            return [n for n in os.listdir("/dev/shm") if n.startswith(f"pzA{os.getpid()}_")]

        if __name__ == "__main__":
            sharedmem.IDLE_SECONDS = 0.5
            arrays = [np.ones(1 << 18) * i for i in range(4)]
            pmap(np.sum, arrays, workers=2)
            kept = len(ours())  # the arena keeps the arguments' segments for the next map
            pid = os.fork()  # the idle timer stops for the fork and must start again after it
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            deadline = time.monotonic() + 10
            while ours() and time.monotonic() < deadline:
                time.sleep(0.1)
            print(kept > 0, ours())
        """,
    )
    assert out == ["True", "[]"]


def mapped_function_segments(carried: Any, _: int) -> int:
    """How many segments of functions' data this worker maps (unlinked ones included)."""
    with open("/proc/self/maps") as maps:
        return len({line.split()[5] for line in maps if "/dev/shm/pzL" in line})


def test_an_idle_pool_lets_a_functions_data_go_without_a_reload() -> None:
    """Idle, the pool unlinks the segment of a function's data; the next map of the same
    function shares it anew under the same id, so no worker loads (and maps) it twice."""
    from parallelize._backends import process

    process._shutdown_all()
    carried = functools.partial(mapped_function_segments, np.ones(2 * MB // 8))
    assert pmap(carried, range(2), workers=2, chunksize=1) == [1, 1]
    for backend in list(process._backends):
        backend._release_idle()  # what the idle timer does
    assert _ours("pzL") == set()
    for _ in range(3):
        assert pmap(carried, range(2), workers=2, chunksize=1) == [1, 1]
    process._shutdown_all()
    assert _ours("pzL") == set()


def test_a_function_whose_data_finds_no_segment_travels_in_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from parallelize._backends import process
    from parallelize._wire import sharedmem

    def refuse(size: int, prefix: str) -> None:
        raise PermissionError(13, "Permission denied", "/dev/shm")

    process._shutdown_all()
    monkeypatch.setattr(sharedmem.Segment, "create", staticmethod(refuse))
    big = np.full(2 * MB // 8, 3.0)
    assert pmap(functools.partial(backing_of_carried, big), [0], workers=1) == ["private"]
    assert pmap(total, [big], workers=1) == [big.sum()]  # as an item's array already did
    process._shutdown_all()


def first_value(carried: Any, _: int) -> float:
    return float(carried[0])


def test_the_data_a_worker_gets_is_the_data_its_id_stands_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The id is found from, and the segment written from, one snapshot of the array: a write
    landing in between (another thread) cannot leave new contents under the old ones' id."""
    from parallelize._backends import process
    from parallelize._wire import sharedmem

    process._shutdown_all()
    array = np.zeros(2 * MB // 8)
    share = sharedmem.dumps_owned

    def written_meanwhile(message: Any) -> Any:
        array[0] = 99.0
        return share(message)

    carried = functools.partial(first_value, array)
    monkeypatch.setattr(sharedmem, "dumps_owned", written_meanwhile)
    pmap(carried, [0], workers=2)
    monkeypatch.setattr(sharedmem, "dumps_owned", share)
    array[0] = 0.0
    assert pmap(carried, range(2), workers=2, chunksize=1) == [0.0, 0.0]
    process._shutdown_all()


def test_a_pool_keeps_a_bounded_amount_of_functions_data(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallelize import Pool
    from parallelize._backends import _pipes
    from parallelize._core import scheduler

    monkeypatch.setattr(_pipes, "CALL_BYTES_KEPT", 8 * MB)
    monkeypatch.setattr(scheduler, "CALL_BYTES_KEPT", 8 * MB)
    with Pool(2) as pool:
        for i in range(12):
            carried = functools.partial(first_value, np.full(2 * MB // 8, float(i)))
            assert pool.map(carried, [0]) == [float(i)]
            kept = sum(os.path.getsize(f"/dev/shm/{name}") for name in _ours("pzL"))
            assert kept <= 24 * MB  # both bounds, and the map's own


POOL_CARRYING_ARRAYS = """
import functools, sys
import numpy as np
from parallelize import Pool

def first(carried, i):
    return float(carried[0]) + i

if __name__ == "__main__":
    with Pool(2, start_method=sys.argv[1]) as pool:  # terminated at the end, then exit
        for k in range(40):
            carried = functools.partial(first, np.full(1_000_000, float(k)))
            assert pool.map(carried, [1]) == [k + 1]
"""


def test_functions_data_is_unlinked_quietly_at_exit(tmp_path: Path) -> None:
    """The segments of a terminated pool's functions go at exit, with no warning of leaked
    shared memory from the resource tracker (what unlinks them is the same under every start
    method; fork makes the race with exit likeliest)."""
    start_method = "fork"
    script = tmp_path / "carrying.py"
    script.write_text(POOL_CARRYING_ARRAYS)
    before = set(os.listdir("/dev/shm"))
    done = subprocess.run(
        [sys.executable, str(script), start_method],
        capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert set(os.listdir("/dev/shm")) - before == set()
