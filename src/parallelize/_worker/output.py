"""What a worker's ``print`` and ``logging`` calls become while it runs a chunk: sent to the
caller (``output="forward"``), dropped (``"drop"``), or left alone (``"inherit"``).

A :class:`Capture` is active for the chunk: for the whole worker process (a worker of ours runs
one chunk at a time), or for one thread (a thread worker, a task of an engine that runs tasks in
threads, the caller running a serial map). Two hooks find it:

* ``sys.stdout`` and ``sys.stderr`` are replaced by a :class:`Redirected` stream that hands the
  text of a thread with an active capture to it, and passes every other write through. The
  capture cuts text into whole lines and sends each as soon as it is complete, so a line written
  just before a worker dies is in the pipe before the death is noticed; a partial line is sent
  when the item that wrote it ends.
* ``logging.Logger.callHandlers`` is wrapped. A record reaches it only after the logger's level
  and filters passed it, and it is the one place every record goes through exactly once,
  whichever logger it was made on: the record is captured there instead of being handled by the
  worker's own handlers (which, under fork, are copies of the caller's: a ``FileHandler`` would
  write it twice). In the caller's own process (threads, serial) the record is only marked with
  ``worker_pid`` and ``item_index`` and handled there, once.

The levels of the caller's loggers are applied in a worker process (:func:`apply_levels`), so a
record is made and sent exactly when the caller would handle it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    import logging

    from .._wire.protocol import Call

# What a map's workers do with their output.
FORWARD: Final = "forward"
INHERIT: Final = "inherit"
DROP: Final = "drop"

# The kind of an entry of output, first in its tuple: (RECORD, the record's attributes) or
# (STDOUT or STDERR, text).
RECORD: Final = 0
STDOUT: Final = 1
STDERR: Final = 2

Entry = tuple[int, Any]
# The caller's logging levels when a map starts: each named logger's own level ("" for the root),
# the loggers it disabled, and the level of logging.disable().
Levels = tuple[dict[str, int], frozenset[str], int]

_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
# How deep a record's extra value may nest lists and dicts and still travel as itself.
_NESTING: Final = 4


class Capture:
    """A worker's output while it runs one chunk; ``send`` takes each batch of entries (None:
    the output is dropped). ``remote``: records are sent, not handled here."""

    __slots__ = ("_lock", "_partial", "_written_by", "index", "outer", "remote", "send")

    def __init__(
        self,
        send: Callable[[list[Entry]], None] | None,
        remote: bool,
        index: Callable[[], int],
        outer: Capture | None = None,
    ):
        self.send = send
        self.remote = remote
        self.index = index  # the input index of the item running now
        self.outer = outer  # a map nested in a worker: the capture of the item running it
        # Each stream's unfinished line, and the item that wrote it (made at the first write:
        # most chunks write nothing).
        self._partial: dict[int, str] | None = None
        self._written_by: dict[int, int] = {}
        self._lock = threading.Lock()  # a worker process's threads may all print

    def write(self, stream: int, text: str) -> None:
        send = self.send
        if send is None or not text:
            return
        with self._lock:
            entries = self._lines(stream, text)
        if entries:
            send(entries)

    def _lines(self, stream: int, text: str) -> list[Entry]:
        """What of ``text`` (with what came before it) is whole lines to send now."""
        entries: list[Entry] = []
        if self._partial is None:
            self._partial = {STDOUT: "", STDERR: ""}
        partial, item = self._partial[stream], self.index()
        if partial and self._written_by[stream] != item:  # the item that wrote it has ended
            entries.append((stream, partial))
            partial = ""
        text = partial + text
        cut = text.rfind("\n") + 1
        if cut:
            entries.append((stream, text[:cut]))
        self._partial[stream], self._written_by[stream] = text[cut:], item
        return entries

    def log(self, logger: logging.Logger, record: logging.LogRecord) -> None:
        if self.send is None:
            return
        record.worker_pid = os.getpid()
        record.item_index = self.index()
        if self.remote:
            self.send([(RECORD, _portable(record))])
        elif self.outer is not None:
            self.outer.log(logger, record)
        else:
            _handlers_of(logger, record)

    def close(self) -> None:
        """The item or chunk has ended: send the partial lines."""
        with self._lock:
            partial, self._partial = self._partial, None
        if not partial:
            return
        entries = [(stream, text) for stream, text in partial.items() if text]
        if entries and self.send is not None:
            self.send(entries)


class _Local(threading.local):
    capture: Capture | None = None


_local = _Local()
_process_capture: Capture | None = None  # a worker process's, for every thread of it


def current() -> Capture | None:
    """The capture the calling thread writes to, if any."""
    return _local.capture or _process_capture


def _activate(capture: Capture | None, process: bool) -> Capture | None:
    """Make ``capture`` the calling thread's (or, with ``process``, the whole process's); the
    one it replaces."""
    global _process_capture
    if process:
        previous, _process_capture = _process_capture, capture
    else:
        previous, _local.capture = _local.capture, capture
    return previous


def begin(
    call: Call,
    send: Callable[[list[Entry]], None],
    index: Callable[[], int],
    *,
    remote: bool,
    process: bool = False,
) -> tuple[Capture, Capture | None] | None:
    """Start capturing a chunk of ``call`` as it asks (None: its output is inherited): the
    capture, and the one to restore with :func:`end`.

    ``remote``: this is a worker process (the caller's logging levels are applied here, and
    records are sent); ``process``: capture every thread of it, not only the calling one.
    """
    if call.output == INHERIT:
        if remote:
            apply_levels(None)
        return None
    if remote and call.levels is not None and "logging" not in sys.modules:
        # The caller uses logging; the function may import it only as it runs, once hooked.
        import logging  # noqa: F401
    install()
    if remote:
        apply_levels(call.levels if call.output == FORWARD else None)
    capture = Capture(send if call.output == FORWARD else None, remote, index, current())
    return capture, _activate(capture, process)


def end(begun: tuple[Capture, Capture | None], *, process: bool = False) -> None:
    """The chunk ended: send its partial lines, and restore the capture it replaced."""
    capture, previous = begun
    try:
        capture.close()
    finally:
        _activate(previous, process)


class Capturer:
    """A worker's :func:`begin` and :func:`end`, chunk after chunk, with what stays the same."""

    __slots__ = ("_index", "_remote", "_send")

    def __init__(
        self, send: Callable[[list[Entry]], None], index: Callable[[], int], *, remote: bool
    ):
        self._send = send
        self._index = index
        self._remote = remote  # a worker process: capture all its threads

    def begin(self, call: Call) -> tuple[Capture, Capture | None] | None:
        remote = self._remote
        return begin(call, self._send, self._index, remote=remote, process=remote)

    def end(self, begun: tuple[Capture, Capture | None]) -> None:
        end(begun, process=self._remote)


class Redirected:
    """``sys.stdout`` or ``sys.stderr``: the text of a capturing thread goes to its capture,
    everything else to the stream it replaced (whose other attributes it shows)."""

    def __init__(self, target: TextIO | None, stream: int):
        self.target = target
        self.stream = stream

    def write(self, text: str) -> int:
        capture = _local.capture or _process_capture
        if capture is not None:
            capture.write(self.stream, text)
        elif self.target is not None:
            self.target.write(text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_install_lock = threading.Lock()


def _fresh_lock() -> None:
    """In a forked child: the lock another thread of the parent may have held at the fork."""
    global _install_lock
    _install_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock)
# logging.Logger.callHandlers as logging defines it, once it is wrapped.
_handlers_of: Callable[[logging.Logger, logging.LogRecord], None]


def _capturing_call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    capture = _local.capture or _process_capture
    if capture is None:
        _handlers_of(self, record)
    else:
        capture.log(self, record)


def install() -> None:
    """Put the hooks in place in this process (once; they pass everything through while no
    capture is active). Logging is hooked only once something imported it: importing it costs
    every worker milliseconds, and whoever logs has imported it before the chunk starts (the
    function's module, unpickled with the map)."""
    global _handlers_of
    logging = sys.modules.get("logging")
    hooked = logging is None or logging.Logger.callHandlers is _capturing_call_handlers
    if hooked and _redirected():
        return
    with _install_lock:
        if logging is not None and logging.Logger.callHandlers is not _capturing_call_handlers:
            _handlers_of = logging.Logger.callHandlers
            logging.Logger.callHandlers = _capturing_call_handlers
        if not isinstance(sys.stdout, Redirected):
            sys.stdout = Redirected(sys.stdout, STDOUT)
        if not isinstance(sys.stderr, Redirected):
            sys.stderr = Redirected(sys.stderr, STDERR)


_holders = 0  # maps capturing in this (the caller's) process now


@contextlib.contextmanager
def held(mode: str) -> Iterator[None]:
    """Around a map whose workers are threads of the caller's process (threads, serial): once
    no such map captures any more, give ``sys.stdout`` and ``sys.stderr`` back their streams
    (unless someone replaced ours meanwhile)."""
    global _holders
    if mode == INHERIT:
        yield
        return
    with _install_lock:
        _holders += 1
    try:
        yield
    finally:
        with _install_lock:
            _holders -= 1
            if not _holders:
                if isinstance(sys.stdout, Redirected):
                    sys.stdout = sys.stdout.target
                if isinstance(sys.stderr, Redirected):
                    sys.stderr = sys.stderr.target


def _redirected() -> bool:
    return isinstance(sys.stdout, Redirected) and isinstance(sys.stderr, Redirected)


def _portable(record: logging.LogRecord) -> dict[str, Any]:
    """The record's attributes as the caller rebuilds it: the message formatted, the exception
    as text, and any ``extra`` value that is not plain data (strings, numbers, None, and lists,
    tuples and string-keyed dicts of them) as its repr: anything else might pickle here and not
    unpickle in the caller, which must never lose a map to a log record."""
    attributes = dict(record.__dict__)
    try:
        attributes["msg"] = record.getMessage()
    except Exception as exc:  # a bad format string: say so rather than lose the record
        attributes["msg"] = f"{record.msg!r} % {record.args!r} (could not format: {exc!r})"
    attributes["args"] = None
    if record.exc_info:
        if not record.exc_text:
            import logging

            attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
        attributes["exc_info"] = None
    for key, value in attributes.items():
        if type(value) not in _PLAIN and not _plain_data(value, 0):
            attributes[key] = repr(value)
    return attributes


def _plain_data(value: object, depth: int) -> bool:
    """Whether ``value`` is plain data, nested at most a few levels."""
    if type(value) in _PLAIN:
        return True
    if depth >= _NESTING:
        return False
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        return all(_plain_data(item, depth + 1) for item in value)
    if isinstance(value, dict) and type(value) is dict:
        return all(type(k) is str and _plain_data(v, depth + 1) for k, v in value.items())
    return False


_applied: Levels | None = None
_saved: dict[str, tuple[int, bool]] = {}  # each logger's own level and disabled flag before
_saved_disable = 0


def _logger(name: str) -> logging.Logger:
    import logging  # loaded already: see apply_levels

    return logging.getLogger(name) if name else logging.root


def apply_levels(levels: Levels | None) -> None:
    """Give this worker process's loggers the caller's levels (None: their own again)."""
    global _applied, _saved_disable
    if levels is _applied or "logging" not in sys.modules:  # nothing here can log (yet)
        return
    import logging

    for name, (level, disabled) in _saved.items():
        logger = _logger(name)
        logger.setLevel(level)
        logger.disabled = disabled
    _saved.clear()
    if _applied is not None:
        logging.disable(_saved_disable)
    _applied = levels
    if levels is None:
        return
    own, disabled_names, disable = levels
    for name in {*own, *disabled_names}:
        logger = _logger(name)
        _saved[name] = (logger.level, logger.disabled)
        logger.setLevel(own.get(name, logging.NOTSET))
        logger.disabled = name in disabled_names
    _saved_disable = logging.root.manager.disable
    logging.disable(disable)


def caller_levels() -> Levels | None:
    """The levels this process's loggers have now, for :func:`apply_levels` in a worker; None
    if it never imported logging (so it configured none)."""
    logging = sys.modules.get("logging")
    if logging is None:
        return None
    own = {"": logging.root.level}
    disabled = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            if logger.level:
                own[name] = logger.level
            if logger.disabled:
                disabled.append(name)
    return own, frozenset(disabled), logging.root.manager.disable
