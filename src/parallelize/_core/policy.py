"""What a map does with its items' failures, as ``on_error`` says: raise the first where the
results reach it (``"raise"``), put each in its item's place (``"return"``), or run every item
and raise them all at the end as one :class:`~parallelize.MapErrorGroup` (``"group"``).

Every face uses it: ``pmap`` and ``imap`` (:mod:`parallelize._core.results`) and the asyncio
forms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._errors import Failure, MapErrorGroup


class ErrorPolicy:
    """One map's ``on_error``, and (grouped) the failures seen so far."""

    __slots__ = ("_failures", "_raise_first")

    def __init__(self, on_error: str):
        self._raise_first = on_error == "raise"
        # Grouped: each failure's input index and exception, as they come.
        self._failures: list[tuple[int, BaseException]] | None = [] if on_error == "group" else None

    def values(self, values: list[Any], failed: bool) -> list[Any]:
        """A batch's values, each failure raised or turned into its exception."""
        return values if not failed else list(self.emit(values))

    def emit(self, values: list[Any]) -> Iterator[Any]:
        """A batch's values one by one; a failure is raised (or yielded) where it stands."""
        for value in values:
            if type(value) is Failure:
                yield self._error(value)
            else:
                yield value

    def stream(self, values: list[Any], failed: bool) -> Iterator[Any]:
        """A batch's values for a stream: grouped, the failures are kept for the end instead."""
        if not failed:
            yield from values
            return
        for value in values:
            if type(value) is not Failure:
                yield value
                continue
            error = self._error(value)
            if self._failures is None:
                yield error

    def _error(self, failure: Failure) -> BaseException:
        error = failure.exception()
        if self._raise_first:
            raise error
        if self._failures is not None:
            self._failures.append((failure.index, error))
        return error

    def finish(self, results: list[Any] | None) -> None:
        """The map has run every item: grouped, raise its failures, if any (``results``: its
        whole list, None for a stream)."""
        if not self._failures:
            return
        failures = sorted(self._failures, key=_index)
        for _, error in failures:  # an ExceptionGroup holds Exceptions only: raise any other
            if not isinstance(error, Exception):
                raise error
        count = len(failures)
        raise MapErrorGroup(
            f"{count} item{'s' if count > 1 else ''} of the map failed",
            [error for _, error in failures],  # type: ignore[misc]
            results=results,
            failed_indexes=[index for index, _ in failures],
        )


def _index(failure: tuple[int, BaseException]) -> int:
    return failure[0]
