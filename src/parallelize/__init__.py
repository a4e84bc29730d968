"""parallelize: run a function of one item over many items on every core.

>>> from parallelize import pmap
>>> pmap(str.upper, ["a", "b"], backend="thread")
['A', 'B']
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._aio import aimap, apmap
    from ._api import imap, pmap
    from ._checkpoint import Checkpoint
    from ._core.stats import collect_stats
    from ._counter import SharedCounter, shared_counter
    from ._decorator import ParallelFunction, parallel
    from ._errors import (
        CheckpointError,
        MapErrorGroup,
        ParallelizeError,
        RemoteError,
        RemoteTraceback,
        SerializationError,
        WorkerCrashedError,
    )
    from ._executor import Executor
    from ._mapoptions import MapOptions
    from ._mapstats import MapStats
    from ._pool import AsyncResult, IMapIterator, Pool, ThreadPool
    from ._retry import Retry

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Checkpoint",
    "CheckpointError",
    "Executor",
    "IMapIterator",
    "MapErrorGroup",
    "MapOptions",
    "MapStats",
    "ParallelFunction",
    "ParallelizeError",
    "Pool",
    "RemoteError",
    "RemoteTraceback",
    "Retry",
    "SerializationError",
    "SharedCounter",
    "ThreadPool",
    "WorkerCrashedError",
    "aimap",
    "apmap",
    "collect_stats",
    "imap",
    "parallel",
    "pmap",
    "shared_counter",
]

# Each public name and the module that defines it, imported on first use (PEP 562): a worker
# process imports ``parallelize._worker``, which needs none of the caller's side.
_SOURCES = {
    "AsyncResult": "._pool",
    "Checkpoint": "._checkpoint",
    "CheckpointError": "._errors",
    "Executor": "._executor",
    "IMapIterator": "._pool",
    "MapErrorGroup": "._errors",
    "MapOptions": "._mapoptions",
    "MapStats": "._mapstats",
    "ParallelFunction": "._decorator",
    "ParallelizeError": "._errors",
    "Pool": "._pool",
    "RemoteError": "._errors",
    "RemoteTraceback": "._errors",
    "Retry": "._retry",
    "SerializationError": "._errors",
    "SharedCounter": "._counter",
    "ThreadPool": "._pool",
    "WorkerCrashedError": "._errors",
    "aimap": "._aio",
    "apmap": "._aio",
    "collect_stats": "._core.stats",
    "imap": "._api",
    "parallel": "._decorator",
    "pmap": "._api",
    "shared_counter": "._counter",
}


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # lazily: a worker that imports the package never needs it

    value = getattr(importlib.import_module(source, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({name for name in globals() if name.startswith("_")} | set(__all__))
