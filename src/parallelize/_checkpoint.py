"""``checkpoint=``: a map's finished results kept in a SQLite file, so a map run again after a
crash computes only what is missing.

The file: ``meta`` (format, the function's name and code digest, created and updated times) and
``results`` (an item's position, the digest of its pickled bytes, whether it failed, and the
result pickled with protocol 5, its large buffers, NumPy arrays', stored raw in ``buffers``).
WAL journal with ``synchronous=NORMAL``: a result committed survives the caller being killed;
one committed just before a power loss may be lost, and is computed again. Results are written
a transaction per run of results that reach the caller together (split at ``BATCH`` results or
``BATCH_BYTES``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pickle
import stat
import threading
import types
from typing import TYPE_CHECKING, Any, Final, Literal

from ._errors import CheckpointError

if TYPE_CHECKING:
    import sqlite3  # imported where a map opens a checkpoint: it costs every program ~2 ms

FORMAT: Final = "parallelize-checkpoint/1"
# The checkpoint files this process has open, by (device, inode): their locked descriptors.
_open_files: dict[tuple[int, int], int] = {}
_open_lock = threading.Lock()


def _forget_in_child() -> None:
    """In a forked child: close the copies of the parent's locked descriptors (the lock stays
    with the parent, which still has its own) and forget them."""
    global _open_lock
    _open_lock = threading.Lock()
    for fd in _open_files.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_files.clear()


def _hold_for_fork() -> None:
    """No fork while the registry changes: a child must not copy a locked descriptor that is
    not in the registry yet."""
    _open_lock.acquire()


def _release_after_fork() -> None:
    _open_lock.release()


os.register_at_fork(
    before=_hold_for_fork, after_in_parent=_release_after_fork, after_in_child=_forget_in_child
)
# The most results, and pickled bytes, one transaction holds.
BATCH: Final = 4096
BATCH_BYTES: Final = 64 << 20


class Checkpoint:
    """Where a map keeps its finished results (``checkpoint=Checkpoint(path)``), and what to do
    when the file holds another function's: ``on_mismatch="error"`` (raise
    ``CheckpointError``) or ``"recompute"`` (start the file afresh)."""

    __slots__ = ("on_mismatch", "path")

    path: str
    on_mismatch: Literal["error", "recompute"]

    def __init__(
        self, path: str | os.PathLike[str], *, on_mismatch: Literal["error", "recompute"] = "error"
    ):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"Checkpoint(path) must be a str or os.PathLike, got {path!r}")
        if on_mismatch not in ("error", "recompute"):
            raise ValueError(
                f"Checkpoint(on_mismatch=...) must be 'error' or 'recompute', got {on_mismatch!r}"
            )
        object.__setattr__(self, "path", os.fspath(path))
        object.__setattr__(self, "on_mismatch", on_mismatch)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Checkpoint is immutable")

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, on_mismatch={self.on_mismatch!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and (self.path, self.on_mismatch) == (
            other.path,
            other.on_mismatch,
        )

    def __hash__(self) -> int:
        return hash((self.path, self.on_mismatch))


def as_checkpoint(value: object) -> Checkpoint:
    """The ``checkpoint`` option as a Checkpoint; TypeError for what is not a path."""
    if isinstance(value, Checkpoint):
        return value
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"checkpoint must be a path (str or os.PathLike) or a parallelize.Checkpoint, "
            f"got {value!r}"
        )
    return Checkpoint(value)


# Items pickled as they are: nothing in them depends on the hash seed.
_PLAIN: Final = frozenset({int, float, str, bytes, bool, type(None)})


def _canonical(obj: Any, depth: int = 0) -> Any:
    """``obj`` with its sets and frozensets (inside tuples, lists and dicts, 4 levels deep) as
    tuples of their elements sorted by their pickles: the order a set iterates in depends on the
    hash seed of the process, and pickle keeps that order."""
    kind = type(obj)
    if kind in _PLAIN or depth > 3:
        return obj
    if kind is set or kind is frozenset:
        return (kind.__name__, tuple(sorted((_canonical(x, depth + 1) for x in obj), key=_bytes)))
    if kind is tuple or kind is list:
        return kind(_canonical(x, depth + 1) for x in obj)
    if kind is dict:
        return {key: _canonical(value, depth + 1) for key, value in obj.items()}
    return obj


def _bytes(obj: Any) -> bytes:
    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def _canonical_bytes(obj: Any) -> bytes:
    return _bytes(obj if type(obj) in _PLAIN else _canonical(obj))


def item_digest(item: Any) -> bytes:
    """A digest of the item's pickled bytes: an item changed at a position is computed again.
    An item that does not pickle (a lock, on the thread backend) is digested by its ``repr``."""
    try:
        blob = _canonical_bytes(item)
    except Exception:
        try:
            import cloudpickle

            blob = cloudpickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        except Exception:
            blob = repr(item).encode()
    digest: bytes = _hash(blob).digest()
    return digest


_BLAKE2B: list[Any] = []  # hashlib.blake2b, once imported


def _hash(data: bytes = b"") -> Any:
    """A 16-byte BLAKE2b hash of ``data``. hashlib is imported on first use: it costs every
    program ~3 ms to import, and only a map with a checkpoint hashes."""
    if not _BLAKE2B:
        import hashlib

        _BLAKE2B.append(hashlib.blake2b)
    return _BLAKE2B[0](data, digest_size=16)


def function_identity(fn: Any) -> tuple[str, str]:
    """The function's qualified name and a digest of what decides its results: its code, and
    where they are plain data, its default arguments, its closure's values and a partial's bound
    arguments."""
    digest = _hash()
    name = _describe(fn, digest)
    return name, digest.hexdigest()


def _describe(fn: Any, digest: Any) -> str:
    if isinstance(fn, functools.partial):
        for value in (*fn.args, *sorted(fn.keywords.items())):
            digest.update(item_digest(value) if _is_data(value) else b"-")
        return f"partial({_describe(fn.func, digest)})"
    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType):
        _code_digest(code, digest)
        values = [getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None)]
        for cell in getattr(fn, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # a cell not filled yet
                values.append(cell.cell_contents)
        for value in values:  # data only: a lock or a counter differs in every run
            digest.update(item_digest(value) if _is_data(value) else b"-")
    module = getattr(fn, "__module__", None) or ""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else qualname


def _is_data(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain data (numbers, strings, bytes, None, and tuples, lists, sets
    and str-keyed dicts of them): what a function's defaults and closure are digested for."""
    if type(value) in _PLAIN:
        return True
    if depth > 3:
        return False
    if type(value) in (tuple, list, set, frozenset):
        return all(_is_data(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _is_data(v, depth + 1) for k, v in value.items())
    return False


def _code_digest(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, digest)
        else:
            digest.update(item_digest(const))


class Store:
    """An open checkpoint file for one run of a map: locked for it, checked against its
    function. ``stored()`` says what is there; ``add()`` records a result as it reaches the
    caller; ``close()`` commits the rest and unlocks."""

    def __init__(self, spec: Checkpoint, function: tuple[str, str]):
        self.path = spec.path
        self._pending: list[tuple[int, bytes, int, bytes]] = []
        self._pending_buffers: list[tuple[int, int, memoryview]] = []
        self._stale: list[tuple[int]] = []  # positions whose old buffers go
        self._pending_bytes = 0
        self._closed = False
        self._rewritten: set[int] = set()
        self._lock_fd = self._open_locked()
        db: sqlite3.Connection | None = None
        try:
            db = self._db = self._connect()
            self._check(function, spec.on_mismatch)
            if db.execute("SELECT 1 FROM results LIMIT 1").fetchone() is not None:
                self._check_owner()  # now, before any worker starts
        except BaseException:
            if db is not None:
                db.close()
            self._unlock()
            raise

    def _open_locked(self) -> int:
        """Open (or create, mode 0600) the file and take its lock: a second map on the same file
        fails at once, in this process (a registry of open files) or another (a ``flock``).

        Not a POSIX record lock: SQLite drops every such lock this process has on the file
        when it unlocks. For the same reason a file this process already has open is refused
        before it is opened again: closing a second descriptor would drop SQLite's locks. A
        forked child closes its copy of the descriptor at once (:func:`_forget_in_child`), so a
        worker forked during the map does not keep the lock.
        """
        in_use = CheckpointError(
            f"the checkpoint file {self.path} is in use by another map (it holds the file's "
            "lock); wait for it to end, or give this map another file"
        )
        with _open_lock:
            with contextlib.suppress(OSError):
                info = os.stat(self.path)
                if (info.st_dev, info.st_ino) in _open_files:
                    raise in_use
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise CheckpointError(
                    f"cannot open the checkpoint file {self.path}: {exc}"
                ) from exc
            info = os.fstat(fd)
            self._key = (info.st_dev, info.st_ino)
            try:
                if self._key in _open_files:  # renamed into place meanwhile: still ours
                    raise BlockingIOError
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise in_use from None
            _open_files[self._key] = fd
        return fd

    def _connect(self) -> sqlite3.Connection:
        """Connect, refusing a file that is not a checkpoint (left untouched). A file with no
        tables (empty, or a first run killed before it made them) becomes a new checkpoint."""
        import sqlite3

        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if tables and not {"meta", "results", "buffers"} <= tables:
                raise CheckpointError(
                    f"{self.path} is a SQLite file but not a parallelize checkpoint; it was "
                    "left untouched: give the map another path"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if not tables:
                db.executescript(
                    """
                    BEGIN IMMEDIATE;
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    CREATE TABLE results (
                        position INTEGER PRIMARY KEY, digest BLOB NOT NULL,
                        failed INTEGER NOT NULL, data BLOB NOT NULL);
                    CREATE TABLE buffers (
                        position INTEGER NOT NULL, number INTEGER NOT NULL,
                        data BLOB NOT NULL, PRIMARY KEY (position, number));
                    COMMIT;
                    """
                )
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise CheckpointError(
                    f"{self.path} is not a parallelize checkpoint ({exc}); it was left "
                    "untouched: give the map another path"
                ) from exc
            raise
        return db

    def _check(self, function: tuple[str, str], on_mismatch: str) -> None:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        now = _now()
        if not meta:
            self._write_meta({"format": FORMAT, "created": now}, function)
            return
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.path} holds checkpoint format {meta.get('format')!r}, not {FORMAT!r}"
            )
        name, code = function
        differs = []
        if meta.get("function") != name:
            differs.append(f"the function is {name}, the file's is {meta.get('function')}")
        elif meta.get("function_digest") != code:
            differs.append(
                f"the code of {name}, or its default or bound arguments or the values it "
                "closes over, changed since the file was written"
            )
        if not differs:
            return
        if on_mismatch == "error":
            raise CheckpointError(
                f"the checkpoint {self.path} belongs to another function: {differs[0]}; pass "
                "checkpoint=Checkpoint(path, on_mismatch='recompute') to start it afresh"
            )
        with self._transaction():
            self._db.execute("DELETE FROM results")
            self._db.execute("DELETE FROM buffers")
        self._write_meta({"created": now}, function)

    def _write_meta(self, values: dict[str, str], function: tuple[str, str]) -> None:
        values = {**values, "function": function[0], "function_digest": function[1]}
        values["updated"] = _now()
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values.items()
            )

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def set_total(self, total: int | None) -> None:
        """The number of the map's items, when its input has a length (for the summary)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('total', ?)",
                (str(total) if total is not None else "",),
            )

    def stored(self) -> dict[int, tuple[bytes, bool]]:
        """Each stored position's item digest, and whether its item failed."""
        rows = self._db.execute("SELECT position, digest, failed FROM results")
        found = {position: (digest, bool(failed)) for position, digest, failed in rows}
        self._rewritten = set(found)  # a result written there replaces the old one's buffers
        return found

    def load(self, first: int, count: int) -> list[Any]:
        """The ``count`` results stored from position ``first`` on, unpickled (only from a file
        that is this user's and not writable by others: unpickling runs code)."""
        last = first + count - 1
        buffers: dict[int, list[bytearray]] = {}
        for position, data in self._db.execute(
            "SELECT position, data FROM buffers WHERE position BETWEEN ? AND ? "
            "ORDER BY position, number",
            (first, last),
        ):
            buffers.setdefault(position, []).append(bytearray(data))  # arrays stay writable
        rows = self._db.execute(
            "SELECT position, data FROM results WHERE position BETWEEN ? AND ? ORDER BY position",
            (first, last),
        )
        return [pickle.loads(data, buffers=buffers.get(position, ())) for position, data in rows]

    def _check_owner(self) -> None:
        info = os.fstat(self._lock_fd)
        if info.st_uid != os.getuid():
            why = f"it belongs to another user (uid {info.st_uid})"
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            why = f"others may write to it (mode {stat.S_IMODE(info.st_mode):04o})"
        else:
            return
        raise CheckpointError(
            f"refusing to unpickle results from {self.path}: {why}, and unpickling runs code; "
            "make it yours, mode 0600"
        )

    def add(self, position: int, digest: bytes, value: Any, *, failed: bool = False) -> None:
        """Record a result (or, ``failed``, that the item failed: it runs again next time).
        Large buffers (NumPy arrays') are kept out of the pickle and stored raw. A result that
        does not pickle, even with cloudpickle, is not kept."""
        if position in self._rewritten:
            self._stale.append((position,))
        if failed:
            self._pending.append((position, digest, 1, b""))
            return
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = pickle.dumps(value, 5, buffer_callback=buffers.append)
        except Exception:  # a lambda, say, on the thread backend
            import cloudpickle

            buffers.clear()
            try:
                data = cloudpickle.dumps(value, 5, buffer_callback=buffers.append)
            except Exception:
                return  # not kept: computed again next time
        self._pending.append((position, digest, 0, data))
        self._pending_bytes += len(data)
        for number, buffer in enumerate(buffers):
            raw = buffer.raw()
            self._pending_buffers.append((position, number, raw))
            self._pending_bytes += raw.nbytes
        if len(self._pending) >= BATCH or self._pending_bytes >= BATCH_BYTES:
            self.commit()

    def commit(self) -> None:
        """Write the results added since the last commit, in one transaction."""
        if not self._pending:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO results (position, digest, failed, data) "
                "VALUES (?, ?, ?, ?)",
                self._pending,
            )
            if self._stale:
                self._db.executemany("DELETE FROM buffers WHERE position = ?", self._stale)
            if self._pending_buffers:
                self._db.executemany(
                    "INSERT INTO buffers (position, number, data) VALUES (?, ?, ?)",
                    self._pending_buffers,
                )
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('updated', ?)", (_now(),)
            )
        self._pending, self._pending_buffers, self._stale = [], [], []
        self._pending_bytes = 0

    def close(self) -> None:
        """Commit what is pending, close the file and release its lock (once; again does
        nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.commit()
            self._db.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        """Close the file (which drops its lock) and forget it."""
        with _open_lock:
            if _open_files.get(self._key) == self._lock_fd:  # not in a forked child
                del _open_files[self._key]
                os.close(self._lock_fd)


def _now() -> str:
    import datetime  # when a checkpoint is written, not with parallelize

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def summary(path: str) -> dict[str, Any]:
    """What ``python -m parallelize checkpoint PATH`` prints: the function, items done and
    failed (of the last run's items, when its input had a length), and when the file was created
    and last updated (read-only; no lock needed)."""
    import pathlib
    import sqlite3

    if not os.path.isfile(path):
        raise CheckpointError(f"there is no checkpoint file at {path}")
    db = None
    try:
        db = sqlite3.connect(f"{pathlib.Path(path).resolve().as_uri()}?mode=ro", uri=True)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a parallelize checkpoint (no format {FORMAT})")
        total = int(meta["total"]) if meta.get("total") else None
        done, failed = db.execute(
            "SELECT COUNT(*) - COALESCE(SUM(failed), 0), COALESCE(SUM(failed), 0) FROM results "
            "WHERE position < ?",
            (total if total is not None else 2**63 - 1,),
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(f"{path} is not a parallelize checkpoint ({exc})") from exc
    finally:
        if db is not None:
            db.close()
    return {
        "path": path,
        "function": meta.get("function"),
        "done": done,
        "failed": failed,
        "total": total,
        "created": meta.get("created"),
        "updated": meta.get("updated"),
    }
