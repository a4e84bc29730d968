"""The backends and start methods the behaviour suite runs on: one list, ``BACKENDS``.

Every cell of the suite takes the ``backend_options`` fixture (the options selecting one backend,
passed as ``**backend_options``) and so runs once per entry of ``BACKENDS``. To add a backend, add
an entry: its options, what it needs started (an engine), and where it legitimately differs from
the contract, each difference with its reason. A cell that checks a clause calls
``differs("clause")`` first, which marks it ``xfail(strict=True)`` or skips it on a backend that
lists the clause, so a difference is always visible in the report, never silently left out.

The fixture is package-scoped: pytest groups the cells by backend, so a Dask cluster or a Ray
session starts once for the whole suite and is shut down before the next backend's cells run
(and before ``test_dask.py`` and ``test_ray.py`` start their own; two engines at once are too
much for a 2-core machine).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

# Worker count of the local pools: the machine has 2 cores, and 2 workers are enough for items to
# run concurrently, to interleave increments and to show which worker ran what.
WORKERS = 2

# The contract's clauses that some backend may not keep (see ``differs``).
CLAUSES = frozenset(
    {"timeout", "initializer", "initializer_timeout", "caller_lock", "recycling"}
)

EngineStarter = Callable[[], AbstractContextManager[dict[str, Any]]]


@contextlib.contextmanager
def dask_cluster() -> Iterator[dict[str, Any]]:
    """A LocalCluster of two single-threaded worker processes, its client the current one.

    Yields the options another process (a script) needs to reach the same cluster.
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: the default 8787 warns when it is taken
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster),
    ):
        yield {"address": cluster.scheduler_address}


@contextlib.contextmanager
def ray_session() -> Iterator[dict[str, Any]]:
    """A local Ray session of two CPUs, started here, so the backend uses the running one.

    Yields the options another process (a script) needs to join the same session.
    """
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield {"address": context.address_info["gcs_address"]}
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Backend:
    """One backend (and start method) of the matrix, and how it legitimately differs."""

    id: str
    options: Mapping[str, Any]
    # What stands in a TimeoutError's message: how the overrunning item was stopped.
    timeout_stops: str
    # What runs the initializer once: each worker "process", or each worker "thread".
    initializer_per: str = "process"
    # Items run in the caller's own process (threads, serial): the same objects, live frames.
    in_caller: bool = False
    # Workers are child processes of the caller that outlive a map (the warm pool).
    child_processes: bool = False
    # Starts the engine the backend runs on, for the whole suite; yields a script's options.
    engine: EngineStarter | None = None
    # Clause -> why this backend does not keep it: such cells are xfail(strict=True).
    xfails: Mapping[str, str] = field(default_factory=dict)
    # Clause -> why the clause does not apply to this backend: such cells are skipped.
    skips: Mapping[str, str] = field(default_factory=dict)
    marks: tuple[pytest.MarkDecorator, ...] = ()


NO_RECYCLING = "max_tasks_per_worker recycles the workers of the local process pool only"
ENGINE_RECYCLING = (
    f"{NO_RECYCLING}; engines recycle their own workers and ignore it (docs/scaling-out.md)"
)


ENGINE_INIT_TIMEOUT = (
    "on Dask and Ray the initializer runs inside the task, before the items that timeout= "
    "watches (docs/errors.md)"
)


def _process(start_method: str) -> Backend:
    return Backend(
        id=f"process-{start_method}",
        options={"backend": "process", "start_method": start_method, "workers": WORKERS},
        timeout_stops="its worker was stopped and replaced",
        child_processes=True,
    )


BACKENDS: list[Backend] = [
    *(_process(method) for method in ("fork", "spawn", "forkserver")),
    Backend(
        id="thread",
        options={"backend": "thread", "workers": WORKERS},
        timeout_stops="its thread was abandoned",  # a thread cannot be killed
        initializer_per="thread",
        in_caller=True,
        skips={"recycling": f"{NO_RECYCLING}; the thread backend ignores it"},
    ),
    Backend(
        id="interpreters",
        options={"backend": "interpreters", "workers": WORKERS},
        timeout_stops="its interpreter was abandoned",  # an interpreter cannot be stopped
        initializer_per="thread",  # each interpreter runs in a thread of its own
        skips={
            "recycling": "the cells tell workers apart by process or thread, and a recycled "
            "interpreter's thread may reuse its predecessor's id: tests/test_interpreters.py "
            "checks max_tasks_per_worker"
        },
        marks=(
            pytest.mark.skipif(
                sys.version_info < (3, 13), reason="subinterpreter workers need Python 3.13"
            ),
        ),
    ),
    Backend(
        id="serial",
        options={"backend": "serial"},
        timeout_stops="",  # it does not stop one at all: see xfails
        initializer_per="thread",  # the caller's own thread, once per map
        in_caller=True,
        xfails={
            "timeout": "the serial backend runs items in the caller's own thread and does not "
            "enforce timeout (docs/errors.md)",
            "caller_lock": "serial items run in the caller's thread, which already holds the "
            "counter's recursive lock, so they take it at once",
        },
        skips={
            "recycling": f"{NO_RECYCLING}; the serial backend has no workers",
            "initializer_timeout": "the serial backend runs the initializer in the caller, "
            "where nothing can interrupt it (docs/errors.md)",
        },
    ),
    Backend(
        id="dask",
        options={"backend": "dask"},
        timeout_stops="its thread on the worker was abandoned",
        engine=dask_cluster,
        skips={"recycling": ENGINE_RECYCLING, "initializer_timeout": ENGINE_INIT_TIMEOUT},
        marks=(pytest.mark.dask,),
    ),
    Backend(
        id="ray",
        options={"backend": "ray"},
        timeout_stops="its thread on the worker was abandoned",
        engine=ray_session,
        skips={"recycling": ENGINE_RECYCLING, "initializer_timeout": ENGINE_INIT_TIMEOUT},
        marks=(pytest.mark.ray,),
    ),
]


@dataclass(frozen=True)
class Running:
    """A backend whose engine (if any) is running, and how a script reaches it."""

    backend: Backend
    # The options a separate interpreter passes to map on the same backend (and engine).
    script_options: dict[str, Any]


@pytest.fixture(
    scope="package",
    params=[pytest.param(backend, id=backend.id, marks=backend.marks) for backend in BACKENDS],
)
def running_backend(request: pytest.FixtureRequest) -> Iterator[Running]:
    """One backend of ``BACKENDS``, its engine started once for all of its cells."""
    chosen: Backend = request.param
    if chosen.engine is None:
        yield Running(chosen, dict(chosen.options))
        if chosen.id == "interpreters":
            from support import close_interpreters

            close_interpreters()
        return
    with chosen.engine() as reach:
        yield Running(chosen, {**chosen.options, **reach})




@pytest.fixture
def backend(running_backend: Running) -> Backend:
    """The backend a cell runs on, with what it legitimately does differently."""
    return running_backend.backend


@pytest.fixture
def backend_options(running_backend: Running) -> dict[str, Any]:
    """Options selecting one backend (and start method): pass as ``**backend_options``."""
    return dict(running_backend.backend.options)


@pytest.fixture
def script_options(running_backend: Running) -> dict[str, Any]:
    """The options a separate interpreter (a script) passes to map on the same backend, with
    the address of the running engine if there is one."""
    return dict(running_backend.script_options)


@pytest.fixture
def differs(backend: Backend, request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Call with the clause a cell checks: a backend that does not keep it marks the cell
    ``xfail(strict=True)`` with its reason, or skips it when the clause does not apply."""

    def check(clause: str) -> None:
        assert clause in CLAUSES, f"unknown clause {clause!r}: add it to CLAUSES"
        reason = backend.skips.get(clause)
        if reason is not None:
            pytest.skip(reason)
        reason = backend.xfails.get(clause)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    return check
