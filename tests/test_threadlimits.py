"""Workers cap their native (BLAS/OpenMP) thread pools at their share of the CPUs.

The integration tests run a fresh interpreter per case, so the environment the workers inherit is
exactly the one given (a fork server started earlier in the session keeps the environment it
started with), and real worker processes report what they see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parallelize._cpu import usable_cpus
from parallelize._threadlimits import THREAD_VARIABLES, limit_native_threads, thread_share
from support import script_env

VARIABLES = [name for names in THREAD_VARIABLES.values() for name in names]
METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # never resize this test process


def test_share_is_cpus_over_workers_at_least_one() -> None:
    assert thread_share(2, cpus=8) == 4
    assert thread_share(3, cpus=8) == 2
    assert thread_share(9, cpus=8) == 1
    assert thread_share(1) == usable_cpus()


@pytest.mark.usefixtures("clean_env")
def test_sets_every_variable_to_the_share() -> None:
    limit_native_threads(3)
    assert {name: os.environ[name] for name in VARIABLES} == dict.fromkeys(VARIABLES, "3")


@pytest.mark.usefixtures("clean_env")
def test_a_variable_the_user_set_is_kept() -> None:
    os.environ["OMP_NUM_THREADS"] = "7"
    limit_native_threads(1)
    assert os.environ["OMP_NUM_THREADS"] == "7"
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"


def test_zero_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        limit_native_threads(0)


_PROBE = textwrap.dedent(
    """
    import json, os, sys
    from parallelize import pmap

    NAMES = {names!r}

    def seen(_):
        return {{name: os.environ.get(name) for name in NAMES}}

    def blas_threads(_):
        import numpy
        from threadpoolctl import threadpool_info
        return sorted({{pool["num_threads"] for pool in threadpool_info()
                       if pool["user_api"] == "blas"}})

    if {numpy!r}:
        import numpy  # loaded before the workers fork: only threadpoolctl can resize its BLAS
    fn = blas_threads if {numpy!r} else seen
    print(json.dumps(pmap(fn, range({workers}), workers={workers},
                          start_method={method!r})))
    """
)


def _in_workers(method: str, workers: int, env: dict[str, str], numpy: bool = False) -> list:
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    code = _PROBE.format(names=VARIABLES, workers=workers, method=method, numpy=numpy)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("workers", [1, 2])
def test_workers_default_to_their_share(method: str, workers: int) -> None:
    share = str(max(1, usable_cpus() // workers))
    for environ in _in_workers(method, workers, {}):
        assert environ == dict.fromkeys(VARIABLES, share)


@pytest.mark.parametrize("method", METHODS)
def test_the_users_setting_wins_in_workers(method: str) -> None:
    share = str(max(1, usable_cpus() // 2))
    for environ in _in_workers(method, 2, {"OMP_NUM_THREADS": "5"}):
        assert environ["OMP_NUM_THREADS"] == "5"
        assert environ["MKL_NUM_THREADS"] == share


def test_numpy_loaded_before_fork_is_resized() -> None:
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    share = max(1, usable_cpus() // 2)
    for counts in _in_workers("fork", 2, {}, numpy=True):
        assert all(count <= share for count in counts), counts


_SCRIPT_WITH_NUMPY = """
import json, os, sys
import numpy  # at the top of a script: the fork server loads it, for every worker
from parallelize import pmap


def blas(_):
    resized = "threadpoolctl" in sys.modules  # a worker that had to resize imported it
    from threadpoolctl import threadpool_info  # (and so does this, for the next item)
    counts = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    return os.getpid(), resized, sorted(counts), [os.environ.get(name) for name in sys.argv[1:]]


if __name__ == "__main__":
    print(json.dumps(pmap(blas, range(2), workers=2, chunksize=1, start_method="forkserver")))
"""


def test_numpy_the_fork_server_loads_starts_at_the_workers_share(tmp_path: Path) -> None:
    """A script that imports NumPy has it loaded once, in the fork server, sized for the
    workers' share (a worker need not resize it, and without threadpoolctl could not); the
    variables it was sized with are the workers' own, not the user's choice."""
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT_WITH_NUMPY, encoding="utf-8")
    base = {k: v for k, v in script_env().items() if k not in VARIABLES}
    done = subprocess.run(
        [sys.executable, str(script), *VARIABLES],
        env=base, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    share = max(1, usable_cpus() // 2)
    first_items: set[int] = set()
    for pid, resized, counts, seen in json.loads(done.stdout.strip().splitlines()[-1]):
        if pid not in first_items:  # a worker's first item: it had imported nothing
            assert not resized
            first_items.add(pid)
        assert counts and all(count <= share for count in counts), counts
        assert seen == [str(share)] * len(VARIABLES)
