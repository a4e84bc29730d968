"""The progress bar: tqdm, imported only when a map asks for a bar.

The bar counts items, not chunks, and knows the total when the input has a length. It writes to
stderr (tqdm's default) and renders as a widget in Jupyter (``tqdm.auto``). Its monitor thread is
turned off: a thread left running in the caller would make every later ``fork`` unsafe.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Protocol

from .._options import Progress


class Bar(Protocol):
    """What a map needs of a progress bar."""

    def update(self, n: int) -> object: ...
    def close(self) -> None: ...


class _NoBar:
    __slots__ = ()

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


NO_BAR: Bar = _NoBar()


@functools.cache
def _bar_class() -> type[Any]:
    from tqdm.auto import tqdm

    class ParallelizeBar(tqdm):  # type: ignore[type-arg]
        monitor_interval = 0  # no monitor thread: see the module docstring

    return ParallelizeBar


def open_bar(spec: Progress, total: int | None) -> Bar:
    """A bar as ``spec`` asks: False for none, True, a description, or tqdm keyword arguments."""
    if spec is False:
        return NO_BAR
    kwargs: dict[str, Any] = {"total": total, "unit": "item", "dynamic_ncols": True}
    if isinstance(spec, str):
        kwargs["desc"] = spec
    elif isinstance(spec, Mapping):
        kwargs.update(spec)
    bar: Bar = _bar_class()(**kwargs)
    return bar
