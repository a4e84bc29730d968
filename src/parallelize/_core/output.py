"""Workers' output in the caller: their log records handled by the caller's own loggers, their
text written to the caller's current ``sys.stdout`` and ``sys.stderr``, above the progress bar.

The workers' side (capturing, cutting text into lines, the caller's levels applied in a worker)
is :mod:`parallelize._worker.output`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .._worker.output import RECORD, STDERR, STDOUT, Entry
from .progress import NO_BAR, Bar


class Sink:
    """Where a map's workers' output goes in the caller; ``bar`` is cleared while lines are
    written."""

    __slots__ = ("_clear",)

    def __init__(self, bar: Bar = NO_BAR):
        # tqdm's way to write above its bars (None: no bar is shown).
        self._clear: Callable[..., AbstractContextManager[None]] | None = getattr(
            type(bar), "external_write_mode", None
        )

    def __call__(self, entries: list[Entry]) -> None:
        if self._clear is None:
            self._emit(entries)
            return
        with self._clear(file=sys.stderr):
            self._emit(entries)

    def _emit(self, entries: list[Entry]) -> None:
        for kind, payload in entries:
            if kind == RECORD:
                _handle(payload)
            else:
                stream = sys.stdout if kind == STDOUT else sys.stderr
                if stream is not None:
                    # A partial line, sent as its item ended, is a line of its own here.
                    stream.write(payload if payload.endswith("\n") else payload + "\n")

    def write(self, text: str) -> None:
        """Write ``text`` to stderr, above the bar (the map's stats report)."""
        if sys.stderr is not None:
            self([(STDERR, text)])


def _handle(attributes: dict[str, Any]) -> None:
    """Rebuild a worker's record and hand it to the caller's logger of the same name."""
    import logging  # a worker logged, so logging is loaded here already

    record = logging.LogRecord.__new__(logging.LogRecord)  # its __init__ would redo the fields
    record.__dict__.update(attributes)
    logger = logging.getLogger(record.name) if record.name != "root" else logging.root
    logger.handle(record)
