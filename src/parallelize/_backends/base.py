"""The interface every backend implements, and the lookup that imports a backend only when used.

A backend receives a :class:`Job` (the callable, a lazy iterator of items and the resolved options)
and yields :class:`Batch` objects in completion order. Everything else, ordering, the progress bar
and the error policy, is done once for all backends in ``parallelize._api``. Closing the generator
a backend returns must cancel the work still outstanding and leave the backend reusable.
"""

from __future__ import annotations

import abc
import importlib
import itertools
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Final

from .._options import Resolved

# Job and Batch are plain classes: a NamedTuple or dataclass costs a tenth of a millisecond and
# more to create, paid by every cold start.


class Job:
    """One map: ``fn`` over ``items``, item ``i`` being input index ``i``."""

    __slots__ = ("_source", "_taken", "fn", "items", "options", "star", "stream", "total")

    def __init__(
        self,
        fn: Callable[..., Any],
        items: Iterator[Any],
        star: bool,
        total: int | None,
        options: Resolved,
        stream: bool = False,
        source: list[Any] | range | None = None,
    ):
        self.fn = fn
        self.items = items  # one argument each, or argument tuples when ``star``
        self.star = star
        self.total = total  # the number of items, when the input has a length
        self.options = options
        self.stream = stream  # results are consumed as they come (imap): bounded look-ahead
        self._source = source  # the input itself, when it is a list or range that ``items`` walks
        self._taken = 0

    @property
    def sliced(self) -> bool:
        """Whether chunks are slices of the input, so that none of it need be taken ahead."""
        return self._source is not None

    def take(self, count: int) -> Sequence[Any]:
        """The next ``count`` items (fewer at the end).

        From a list, a slice: a third of the cost of pulling them one by one through its
        iterator, for the caller's every item. From a range, a range: three numbers to pickle
        and unpickle, whatever the chunk's length.
        """
        if self._source is None:
            return list(itertools.islice(self.items, count))
        chunk = self._source[self._taken : self._taken + count]
        self._taken += len(chunk)
        return chunk


class Batch:
    """Results of the consecutive input indices ``start, start + 1, ...``.

    ``failed`` says whether some of ``values`` are :class:`~parallelize._serialization.Failure`
    objects, so the common case needs no scan.
    """

    __slots__ = ("failed", "start", "values")

    def __init__(self, start: int, values: list[Any], failed: bool):
        self.start = start
        self.values = values
        self.failed = failed


class Backend(abc.ABC):
    """Runs jobs. One instance per backend name lives for the whole interpreter."""

    name: str

    @abc.abstractmethod
    def run(self, job: Job) -> Generator[Batch, None, None]:
        """Yield the job's results as they complete; closing the iterator cancels the rest."""

    def shutdown(self) -> None:  # noqa: B027 - most backends hold nothing between maps
        """Release whatever is kept warm between maps (called at interpreter exit)."""


# backend name -> (module, class, extra to install when its engine is missing)
_REGISTRY: Final = {
    "process": ("parallelize._backends.process", "ProcessBackend", None),
    "thread": ("parallelize._backends.thread", "ThreadBackend", None),
    "serial": ("parallelize._backends.serial", "SerialBackend", None),
    "dask": ("parallelize._backends.dask", "DaskBackend", "dask"),
    "ray": ("parallelize._backends.ray", "RayBackend", "ray"),
}
_instances: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, importing it (and its engine) on first use."""
    backend = _instances.get(name)
    if backend is None:
        module_name, class_name, _ = _REGISTRY[name]
        module = importlib.import_module(module_name)
        backend = _instances[name] = getattr(module, class_name)()
    return backend


def loaded_backends() -> list[Backend]:
    """The backends started so far, for shutdown."""
    return list(_instances.values())


def missing_engine(extra: str, module: str, error: ImportError) -> ImportError:
    """An ImportError that tells the user which extra brings the engine."""
    message = (
        f"backend={extra!r} needs {module}, which is not installed; "
        f'install it with: pip install "parallelize[{extra}]"'
    )
    new = ImportError(message, name=module)
    new.__cause__ = error
    return new
