"""``MapOptions``: the keyword options of every map, as a TypedDict for type checkers.

A module of its own so that a map never builds it: a TypedDict costs a millisecond and more to
create, and only type checkers and readers of the API need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, SupportsIndex, TypedDict

if TYPE_CHECKING:
    import os

    from ._checkpoint import Checkpoint
    from ._options import BackendName, OnError, Output, Progress, StartMethod
    from ._retry import Retry


class MapOptions(TypedDict, total=False):
    """The keyword options of ``pmap``, ``imap``, ``@parallel`` and ``.options()``.

    For type checkers: a misspelt option or a value of the wrong type is caught before the code
    runs. At run time the same checks raise TypeError or ValueError. A count takes any integer
    (an int, ``numpy.int64``: anything with ``__index__``), but not a bool.
    """

    workers: SupportsIndex | None
    chunksize: SupportsIndex | None
    ordered: bool
    progress: Progress
    backend: BackendName
    start_method: StartMethod | None
    timeout: float | SupportsIndex | None
    retries: SupportsIndex | Retry
    on_error: OnError
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: SupportsIndex | None
    address: str | None
    max_ahead: SupportsIndex | None
    max_ahead_bytes: SupportsIndex | None
    output: Output
    stats: bool
    max_worker_memory: SupportsIndex | str | None
    checkpoint: str | os.PathLike[str] | Checkpoint | None
