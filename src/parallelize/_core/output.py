"""Workers' output in the caller: their log records handled by the caller's own loggers, their
text written to the caller's current ``sys.stdout`` and ``sys.stderr``, above the progress bar.

The workers' side (capturing, cutting text into lines, the caller's levels applied in a worker)
is :mod:`parallelize._worker.output`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from .._worker.output import RECORD, STDOUT, Entry
from .progress import NO_BAR, Bar


class Sink:
    """Where a map's workers' output goes in the caller; ``bar`` is cleared while lines are
    written."""

    __slots__ = ("_bar",)

    def __init__(self, bar: Bar = NO_BAR):
        self._bar = bar

    def __call__(self, entries: list[Entry]) -> None:
        with self._above_bar():
            for kind, payload in entries:
                if kind == RECORD:
                    self._handle(payload)
                else:
                    stream = sys.stdout if kind == STDOUT else sys.stderr
                    if stream is not None:
                        # A partial line, sent as its item ended, is a line of its own here.
                        stream.write(payload if payload.endswith("\n") else payload + "\n")

    def write(self, text: str) -> None:
        """Write ``text`` to stderr, above the bar (the map's stats report)."""
        with self._above_bar():
            if sys.stderr is not None:
                sys.stderr.write(text)

    def _handle(self, attributes: dict[str, Any]) -> None:
        import logging  # a worker logged, so logging is loaded here already, or now

        record = logging.makeLogRecord(attributes)
        logger = logging.getLogger(record.name) if record.name != "root" else logging.root
        logger.handle(record)

    @contextlib.contextmanager
    def _above_bar(self) -> Iterator[None]:
        clear = getattr(type(self._bar), "external_write_mode", None)
        if clear is None:
            yield
            return
        with clear(file=sys.stderr):
            yield
