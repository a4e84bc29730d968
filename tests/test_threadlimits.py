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

import pytest

from parallelize._cpu import usable_cpus
from parallelize._threadlimits import THREAD_VARIABLES, limit_native_threads, thread_share

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
