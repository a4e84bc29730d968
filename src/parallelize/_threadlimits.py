"""Native thread pools in workers: each gets its share of the CPUs, not all of them.

NumPy's BLAS (OpenBLAS, MKL, Accelerate), OpenMP code and numexpr each start one thread per CPU
by default. In a pool of N workers on N CPUs that is N x N threads fighting for N CPUs, and a
NumPy-heavy map runs slower in parallel than in one process. So a worker caps those pools at
``usable CPUs // workers`` (at least 1), as joblib's loky does.

The cap is a default, never a ceiling the user cannot lift: a variable already set in the
environment (``OMP_NUM_THREADS=4 python app.py``) is left as it is, and the library it governs is
left alone too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Final

from ._cpu import usable_cpus

# The variables each native runtime reads when it loads, grouped by the threadpoolctl API that
# can still resize that runtime's pool once it is loaded (before fork, or by an initializer).
THREAD_VARIABLES: Final = {
    "openmp": ("OMP_NUM_THREADS",),
    "blas": ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"),
    None: ("NUMEXPR_NUM_THREADS",),  # numexpr reads it on import; threadpoolctl does not know it
}


def thread_share(workers: int, cpus: int | None = None) -> int:
    """The native threads each of ``workers`` workers may use: its share of the CPUs, at least 1.

    >>> thread_share(2, cpus=8), thread_share(3, cpus=8), thread_share(16, cpus=8)
    (4, 2, 1)
    """
    total = usable_cpus() if cpus is None else cpus
    return max(1, total // max(1, workers))


def limit_native_threads(n: int) -> None:
    """Cap this process's BLAS and OpenMP thread pools at ``n`` threads, unless the user chose.

    Called once by a worker as it starts, before the user's initializer and function run. For
    each of ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ``VECLIB_MAXIMUM_THREADS`` and ``NUMEXPR_NUM_THREADS`` that is not already set, it sets
    ``str(n)``, which every runtime loaded from now on obeys. A runtime that is already loaded
    (NumPy imported before a ``fork``) no longer reads its variable, so when NumPy is loaded and
    threadpoolctl is installed, its pools are resized too, those whose variables the user set
    excepted.

    It never raises for want of threadpoolctl, or when a runtime refuses to be resized: the
    worker then simply runs with more threads than its share.

    In a worker of a pool of 2 on 8 CPUs, started as ``OMP_NUM_THREADS=3 python app.py``,
    ``limit_native_threads(thread_share(2))`` leaves ``OMP_NUM_THREADS`` at ``"3"`` and the
    OpenMP pool alone, and sets the BLAS variables to ``"4"`` (it changes ``os.environ``, so it is
    not run as a doctest here).
    """
    if n < 1:
        raise ValueError(f"a worker needs at least 1 native thread, got {n}")
    value = str(n)
    user_set: list[str | None] = []
    for api, names in THREAD_VARIABLES.items():
        if any(name in os.environ for name in names):
            user_set.append(api)
        for name in names:
            os.environ.setdefault(name, value)
    if "numpy" not in sys.modules:
        return  # nothing loaded yet: the variables are enough
    try:
        from threadpoolctl import threadpool_limits  # optional, and only once numpy is loaded
    except ImportError:
        return
    for api in ("openmp", "blas"):
        if api not in user_set:
            # A runtime that cannot be resized must not stop the worker.
            with contextlib.suppress(Exception):
                threadpool_limits(limits=n, user_api=api)
