"""``Retry``: how often a failing item runs again, which failures qualify, and how long to wait.

``retries=3`` means ``Retry(3)``: any exception, crash or timeout, at once. A map whose retries
wait (``backoff > 0``) has them made by the scheduler, which holds the item back until its time
while the other items go on; without a wait, a worker retries a raised exception itself, which
costs no round trip.
"""

from __future__ import annotations

import math
from typing import Any, Final

from ._numbers import as_int, as_real

# Where a retry delay stops growing, unless the Retry says otherwise: one minute.
MAX_BACKOFF: Final = 60.0


class Retry:
    """Run a failing item again, up to ``times`` times.

    ``on``: only failures that are instances of this exception type (or tuple of types) are
    retried; None, any exception, a crash or a timeout (put ``WorkerCrashedError`` or
    ``TimeoutError`` in ``on`` to retry those). ``backoff``: wait ``backoff * 2**k`` seconds
    (at most ``max_backoff``) before the k-th retry of an item (k from 0), without holding up
    the other items: no worker sleeps, the scheduler holds the item back.

    A bad value raises at once: ``TypeError`` for the wrong type, ``ValueError`` out of range.

    >>> Retry(3, backoff=0.5, on=(ConnectionError, TimeoutError)).delay(2)
    2.0
    """

    __slots__ = ("backoff", "max_backoff", "on", "times")

    times: int
    backoff: float
    max_backoff: float
    on: tuple[type[BaseException], ...] | None

    def __init__(
        self,
        times: int,
        *,
        backoff: float = 0.0,
        max_backoff: float = MAX_BACKOFF,
        on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    ):
        count = as_int(times)
        if count is None:
            raise TypeError(f"Retry(times=...) must be an int >= 0, got {times!r}")
        if count < 0:
            raise ValueError(f"Retry(times=...) must be >= 0, got {times!r}")
        object.__setattr__(self, "times", count)
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            seconds = as_real(value)
            if seconds is None:
                raise TypeError(f"Retry({name}=...) must be a number of seconds, got {value!r}")
            if not (seconds >= 0 and math.isfinite(seconds)):
                raise ValueError(f"Retry({name}=...) must be >= 0 and finite, got {value!r}")
            object.__setattr__(self, name, seconds)
        object.__setattr__(self, "on", _exception_types(on))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a Retry is immutable; make a new one to change {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"backoff": self.backoff, "max_backoff": self.max_backoff, "on": self.on}
        return (_rebuild, (self.times, kwargs))

    def __repr__(self) -> str:
        parts = [str(self.times)]
        if self.backoff:
            parts.append(f"backoff={self.backoff!r}")
        if self.max_backoff != MAX_BACKOFF:
            parts.append(f"max_backoff={self.max_backoff!r}")
        if self.on is not None:
            names = ", ".join(cls.__name__ for cls in self.on)
            parts.append(f"on=({names},)" if len(self.on) == 1 else f"on=({names})")
        return f"Retry({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retry) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def _fields(self) -> tuple[object, ...]:
        return (self.times, self.backoff, self.max_backoff, self.on)

    def delay(self, k: int) -> float:
        """Seconds to wait before the k-th retry of an item (k from 0)."""
        if not self.backoff:
            return 0.0
        return min(self.max_backoff, self.backoff * 2.0 ** min(k, 64))

    def covers(self, error: BaseException | type[BaseException]) -> bool:
        """Whether a failure (an exception, or the type of a crash or timeout) is retried."""
        if self.on is None:
            return True
        if isinstance(error, type):
            return issubclass(error, self.on)
        return isinstance(error, self.on)


def _rebuild(times: int, kwargs: dict[str, Any]) -> Retry:
    return Retry(times, **kwargs)


def _exception_types(on: object) -> tuple[type[BaseException], ...] | None:
    if on is None:
        return None
    given = on if isinstance(on, tuple) else (on,)
    types = tuple(t for t in given if isinstance(t, type) and issubclass(t, BaseException))
    if not types or len(types) != len(given):
        raise TypeError(f"Retry(on=...) must be an exception type or a tuple of them, got {on!r}")
    return types


def as_retry(retries: int | Retry) -> Retry:
    """The ``retries`` option as a Retry (an int is ``Retry(n)``)."""
    if isinstance(retries, Retry):
        return retries
    if retries == 0 and type(retries) is int:
        return _NO_RETRIES  # the default, on every map: made once
    return Retry(retries)


_NO_RETRIES: Final = Retry(0)
