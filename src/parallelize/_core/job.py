"""A map as the scheduler sees it: a :class:`Job` in, :class:`Batch` objects out.

Plain classes: creating a NamedTuple or dataclass class is paid by every cold start.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._options import Resolved


class Job:
    """One map: ``fn`` over ``items``, item ``i`` being input index ``i``."""

    __slots__ = (
        "_source",
        "_taken",
        "fn",
        "input_error",
        "items",
        "options",
        "star",
        "stream",
        "total",
    )

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
        self._taken = 0  # items read so far
        # What the input raised (its note says where): raised once every item read before it
        # has its result delivered.
        self.input_error: Exception | None = None

    @property
    def sliced(self) -> bool:
        """Whether chunks are slices of the input, so that none of it need be taken ahead."""
        return self._source is not None

    def take(self, count: int) -> Sequence[Any]:
        """The next ``count`` items (fewer at the end, or where the input raised).

        From a list, a slice: far cheaper than pulling them one by one through its iterator, for
        the caller's every item. From a range, a range: three numbers to pickle and unpickle,
        whatever the chunk's length. An input that raises ends the items there; the error is kept
        in :attr:`input_error`, with the items read before it.
        """
        if self._source is None:
            taken: list[Any] = []
            try:
                taken.extend(itertools.islice(self.items, count))  # keeps what came before a raise
            except Exception as exc:
                note_input_error(exc, self._taken + len(taken))
                self.input_error = exc
            self._taken += len(taken)
            return taken
        chunk = self._source[self._taken : self._taken + count]
        self._taken += len(chunk)
        return chunk


def note_input_error(exc: Exception, position: int) -> None:
    """Say where the map's input raised ``exc`` (once: a map that reads the input for another
    map, such as a checkpointed one, knows the true position first)."""
    if getattr(exc, "_parallelize_noted", False):
        return
    exc.add_note(
        f"(raised by the input of the map at position {position}; "
        "the results of the items before it were delivered first)"
    )
    exc._parallelize_noted = True  # type: ignore[attr-defined]


class Batch:
    """Results of the consecutive input indices ``start, start + 1, ...``.

    ``failed`` says whether some of ``values`` are :class:`~parallelize._errors.Failure` objects,
    so the common case needs no scan.
    """

    __slots__ = ("failed", "start", "values")

    def __init__(self, start: int, values: list[Any], failed: bool):
        self.start = start
        self.values = values
        self.failed = failed
