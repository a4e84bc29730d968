"""The tools under comparison, behind one tiny interface: open a warm pool, map, close.

Every tool runs with its own defaults (chunking, transport, start method unless one is asked
for): the suite measures what a user gets without tuning. The only exception is
``ProcessPoolExecutor``, whose default *is* ``chunksize=1``, the figure the issue quotes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

Fn = Callable[[Any], Any]

# Display order; "parallelize" is the reference every ratio is taken against.
TOOLS = (
    "parallelize",
    "parallelize+progress",
    "serial",
    "ceiling",
    "mp.Pool",
    "ProcessPoolExecutor",
    "joblib",
    "mpire",
)
# Tools that take a multiprocessing start method (the others have their own: loky, fork).
START_METHOD_TOOLS = ("parallelize", "mp.Pool", "ProcessPoolExecutor")


class Tool:
    """A warm pool of ``workers`` processes; ``map`` is timed, opening and closing are not."""

    def __init__(self, workers: int, start_method: str | None):
        self.workers = workers
        self.start_method = start_method

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Serial(Tool):
    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return list(map(fn, items))


class Parallelize(Tool):
    progress = False

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        from parallelize import pmap  # imported when used: a probe times the import apart

        options: dict[str, Any] = {"workers": self.workers, "progress": self.progress}
        if self.start_method is not None:
            options["start_method"] = self.start_method
        with _quiet_stderr(self.progress):
            return pmap(fn, items, **options)

    def close(self) -> None:
        from parallelize._backends import loaded_backends

        for backend in loaded_backends():  # so the next tool starts from a clean slate
            backend.shutdown()


class ParallelizeProgress(Parallelize):
    progress = True


@contextlib.contextmanager
def _quiet_stderr(active: bool) -> Iterator[None]:
    """Send the progress bar to /dev/null: it is still formatted and written, just not shown."""
    if not active:
        yield
        return
    saved = sys.stderr
    with open(os.devnull, "w") as sink:
        sys.stderr = sink
        try:
            yield
        finally:
            sys.stderr = saved


def _serial_map(fn: Fn, items: list[Any]) -> None:
    for item in items:
        fn(item)


class Ceiling(Tool):
    """Not a tool: the speed-up this machine allows, whatever the library.

    Each of ``workers`` processes runs the *whole* serial map at the same time, with no messages
    but one per process. On a machine whose CPUs are as fast together as alone, that takes as
    long as the serial map; the speed-up reported for it is ``workers * serial / that time``
    (see ``workloads.summarise``). Virtual CPUs that share a core, or a host that throttles,
    show up here as a ceiling below ``workers``.
    """

    def __init__(self, workers: int, start_method: str | None):
        super().__init__(workers, start_method)
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        self.executor = ProcessPoolExecutor(workers, mp_context=context)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        runs = [self.executor.submit(_serial_map, fn, items) for _ in range(self.workers)]
        for run in runs:
            run.result()
        return [None] * len(items)  # no results come back: nothing to check

    def close(self) -> None:
        self.executor.shutdown()


class StdlibPool(Tool):
    def __init__(self, workers: int, start_method: str | None):
        super().__init__(workers, start_method)
        self.pool = multiprocessing.get_context(start_method).Pool(workers)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Executor(Tool):
    def __init__(self, workers: int, start_method: str | None):
        super().__init__(workers, start_method)
        # Imported here, not at the top: a cold-start probe times it as this tool's import.
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context(start_method)
        self.executor = ProcessPoolExecutor(workers, mp_context=context)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return list(self.executor.map(fn, items))

    def close(self) -> None:
        self.executor.shutdown(cancel_futures=True)


class Joblib(Tool):
    """A new ``Parallel`` per map, as users write it; loky keeps its workers warm in between.

    Not one ``Parallel`` context reused: that one keeps the memory-mapped copies of arrays it has
    seen, which would time a cache hit on the very same arrays rather than their transport.
    """

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        from joblib import Parallel, delayed  # imported when used: a probe times the import apart

        return list(Parallel(n_jobs=self.workers)(delayed(fn)(item) for item in items))

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


class Mpire(Tool):
    def __init__(self, workers: int, start_method: str | None):
        super().__init__(workers, start_method)
        from mpire import WorkerPool  # imported when used: a probe times the import apart

        self.pool = WorkerPool(n_jobs=workers, start_method=start_method or "fork", keep_alive=True)

    def map(self, fn: Fn, items: list[Any]) -> list[Any]:
        return self.pool.map(fn, items, progress_bar=False, concatenate_numpy_output=False)

    def close(self) -> None:
        self.pool.terminate()


_CLASSES: dict[str, type[Tool]] = {
    "parallelize": Parallelize,
    "parallelize+progress": ParallelizeProgress,
    "serial": Serial,
    "ceiling": Ceiling,
    "mp.Pool": StdlibPool,
    "ProcessPoolExecutor": Executor,
    "joblib": Joblib,
    "mpire": Mpire,
}


def open_tool(
    name: str, warm: tuple[Fn, list[Any]], workers: int, start_method: str | None = None
) -> Tool:
    """A warm pool of the named tool: its workers are started and have run ``fn`` over items."""
    tool = _CLASSES[name](workers, start_method)
    fn, items = warm
    tool.map(fn, items)
    return tool


def default_start_method(name: str) -> str:
    """The start method a tool uses when none is given, for the record."""
    if name.startswith("parallelize"):
        from parallelize._options import default_start_method as parallelize_default

        return parallelize_default()
    return {"serial": "-", "ceiling": "spawn", "joblib": "loky", "mpire": "fork"}.get(
        name, multiprocessing.get_start_method()
    )
