"""Large buffers cross between the caller and process workers through shared memory, not the pipe.

Pickle protocol 5 hands every large contiguous buffer (a NumPy array's data, a ``bytearray``, a
``pickle.PickleBuffer``) to a callback instead of copying it into the pickle. Buffers of at least
``THRESHOLD`` bytes are copied once into a shared-memory segment (a file in ``/dev/shm``), and the
message carries only the segment's name and where each buffer lies; the receiver maps the segment
and unpickles with those views as the buffers, so the arrays it gets are backed by the shared
memory, with no second copy.

Writing into pages already touched is several times faster than into fresh ones, so the segments
of arguments and results are reused:

* **Caller to worker** (arguments): segments come from an :class:`Arena` that the pool keeps
  mapped from map to map. A segment is leased while its chunk is in flight. An array a worker
  receives is valid while its item runs (copy it to keep it).
* **A function's own data** (an array a closure or ``partial`` holds): one segment per function
  and pool, written once, that each worker maps copy on write for as long as it keeps the
  function (see :class:`Owned`).
* **Worker to caller** (results): each worker keeps its own :class:`ReplySegments`. A reply's
  segment is *lent* to the caller; the arrays the caller gets live as long as it holds them, and
  when the last one is gone the caller gives the segment back (with the worker's next chunk) for
  the worker to write its next large result into. A segment that was mapped when the caller
  forked is never reused (the child may still read it). The caller unlinks what a worker left
  behind when it reaps that worker.

Memory kept for reuse is bounded by ``KEEP_BYTES`` for arguments and ``KEEP_BYTES`` for results
(shared among a pool's workers), and freed once the pool has been idle for ``IDLE_SECONDS``, when
it closes, and at exit. Every segment is registered with the multiprocessing resource tracker,
which unlinks it if the caller is killed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar

# Below 1 MiB, copying through the pipe costs less than creating, mapping and finding a segment.
THRESHOLD: Final = 1 << 20
# Cache-line alignment for every buffer within a segment (SIMD loads on the receiving side).
ALIGN: Final = 64
# Bytes of idle segments a pool keeps for reuse: enough for a map of 512 MB of arrays, and never
# more than an eighth of the machine's memory.
KEEP_BYTES: Final = min(1 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
# After this long without work, a pool's idle segments are freed.
IDLE_SECONDS: Final = 10.0
# How many names of segments lent to the caller a worker remembers.
LENT_NAMES_KEPT: Final = 4096
_SHM_DIR: Final = "/dev/shm"
AVAILABLE: Final = sys.platform == "linux" and os.path.isdir(_SHM_DIR)
# Map every page at once: one call instead of a page fault per 4 KiB on first access.
_POPULATE: Final = getattr(mmap, "MAP_POPULATE", 0)
# Names of arguments' segments start with this, those of a function's large data with the next;
# a worker's replies with a prefix its pool chose (see reply_prefix), then its pid, so that the
# caller can find them once the worker is gone.
_ARGS_PREFIX: Final = "pzA"
_OWNED_PREFIX: Final = "pzL"

T = TypeVar("T")


class Segment:
    """A named file in ``/dev/shm``, mapped into this process while ``mapping`` is set."""

    __slots__ = ("mapping", "name", "size")

    def __init__(self, name: str, size: int, mapping: mmap.mmap | None):
        self.name = name  # without a leading slash
        self.size = size
        self.mapping = mapping

    @classmethod
    def create(cls, size: int, prefix: str) -> Segment | None:
        """A new segment whose memory is reserved now, or None when ``/dev/shm`` has no room.

        Without the reservation a full ``/dev/shm`` (64 MB in a default Docker container) would
        kill the writer with SIGBUS; with it, the message simply goes through the pipe.
        """
        name = f"{prefix}{os.getpid()}_{os.urandom(8).hex()}"
        path = os.path.join(_SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _tracker().register("/" + name, "shared_memory")
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                _unlink(name)
                return None
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mapping)

    @classmethod
    def attach(cls, name: str, *, private: bool = False) -> Segment:
        """Map an existing segment: shared, every page at once; or ``private``, copy on write
        (pages are read from the segment as they are first touched, and what this process
        writes stays its own)."""
        fd = os.open(os.path.join(_SHM_DIR, name), os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            flags = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED | _POPULATE
            mapping = mmap.mmap(fd, size, flags=flags)
        finally:
            os.close(fd)
        return cls(name, size, mapping)

    def close(self) -> None:
        """Unmap it here; views still exported keep the mapping until they go."""
        mapping, self.mapping = self.mapping, None
        if mapping is not None:
            with contextlib.suppress(BufferError):
                mapping.close()

    def destroy(self) -> None:
        """Unmap and unlink: the memory is freed once no process maps it."""
        self.close()
        _unlink(self.name)


def _tracker() -> Any:
    from multiprocessing import resource_tracker  # only once a large buffer shows up

    return resource_tracker


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_SHM_DIR, name))
        _tracker().unregister("/" + name, "shared_memory")


def _tracker_shared() -> bool:
    """Whether this process talks to its parent's resource tracker (not one of its own)."""
    resource_tracker = sys.modules.get("multiprocessing.resource_tracker")
    if resource_tracker is None:
        return False
    return getattr(resource_tracker._resource_tracker, "_fd", None) is not None


class Envelope:
    """A message whose large buffers wait in a shared-memory segment."""

    __slots__ = ("blob", "lent", "name", "private", "spans")

    def __init__(
        self,
        blob: bytes,
        name: str,
        spans: list[tuple[int, int]],
        lent: bool,
        private: bool = False,
    ):
        self.blob = blob
        self.name = name
        self.spans = spans  # (offset, length) of each out-of-band buffer, in pickle order
        self.lent = lent  # a worker's reply: the receiver gives the segment back when done
        self.private = private  # mapped copy on write: what the receiver writes stays its own

    def __reduce__(self) -> tuple[Any, ...]:
        return (Envelope, (self.blob, self.name, self.spans, self.lent, self.private))

    def open(self, lent_to: LentSegments | None) -> Any:
        """The message, its buffers backed by the shared segment.

        A lent segment is tracked by ``lent_to`` until nothing maps it here any more.
        """
        segment = Segment.attach(self.name, private=self.private)
        mapping = segment.mapping
        assert mapping is not None
        if self.lent and lent_to is not None:
            lent_to.opened += 1
            lent_to.mapped_bytes += sum(length for _, length in self.spans)
            weakref.finalize(mapping, lent_to.released.append, (self.name, segment.size, _forks))
        view = memoryview(mapping)
        return pickle.loads(self.blob, buffers=[view[o : o + n] for o, n in self.spans])


def load(raw: bytes, lent_to: LentSegments | None = None) -> Any:
    """Unpickle a message that may be an :class:`Envelope`."""
    message = pickle.loads(raw)
    return message.open(lent_to) if type(message) is Envelope else message


class LentSegments:
    """In the caller: one worker's reply segments that are mapped here, and those let go of.

    ``released`` is appended to by a finalizer, in whatever thread drops the last array of a
    segment and at any allocation, so nothing else happens there; the caller's own code drains it.
    """

    __slots__ = ("mapped_bytes", "opened", "released")

    def __init__(self) -> None:
        self.opened = 0  # mapped and not yet drained
        self.mapped_bytes = 0  # bytes of the buffers of every segment mapped here, ever
        self.released: list[tuple[str, int, int]] = []  # (name, size, fork count when mapped)

    def outstanding(self) -> int:
        """Segments whose arrays the caller still holds."""
        return self.opened - len(self.released)

    def drain(self) -> tuple[list[str], list[str]]:
        """Names let go of since the last drain: (to give back, to unlink).

        A segment mapped before this process forked may still be mapped by the child, which
        a worker writing into it again would corrupt: those are unlinked, never reused.
        """
        taken = _drained(self.released)
        self.opened -= len(taken)
        reuse = [name for name, _, forks in taken if forks == _forks]
        drop = [name for name, _, forks in taken if forks != _forks]
        return reuse, drop

    def drain_all(self) -> list[str]:
        """Every name let go of since the last drain, reusable or not (to unlink them all)."""
        reuse, drop = self.drain()
        return reuse + drop


# Forks of this process so far (see LentSegments.drain), not counting those that start our own
# workers: they never touch the caller's arrays.
_forks = 0
_own = threading.local()


@contextlib.contextmanager
def own_fork() -> Iterator[None]:
    """Around the start of one of our workers: a fork that does not count."""
    _own.active = True
    try:
        yield
    finally:
        _own.active = False


def _forked() -> None:
    global _forks
    if not getattr(_own, "active", False):
        _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_parent=_forked, after_in_child=_forked)


Allocate = Callable[[int], Segment | None]


def dumps(
    message: Any, allocate: Allocate | None, *, lent: bool = False, private: bool = False
) -> tuple[bytes, Any]:
    """Pickle ``message``, its large buffers into a segment from ``allocate`` when there are any
    (mapped copy on write by the receiver when ``private``).

    Returns the bytes to send and the :class:`Segment` used (None when everything went in-band,
    also when ``allocate`` declined). Raises what pickling raises.
    """
    if allocate is None or not AVAILABLE:
        return pickle.dumps(message, 5), None
    large: list[memoryview] = []

    def keep_large(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < THRESHOLD:
            return True  # in-band
        large.append(raw)
        return False

    blob = pickle.dumps(message, 5, buffer_callback=keep_large)
    if not large:
        return blob, None
    spans = []
    total = 0
    for raw in large:
        spans.append((total, raw.nbytes))
        total += -(-raw.nbytes // ALIGN) * ALIGN
    segment = allocate(total)
    if segment is None:  # no room: send it all through the pipe after all
        return pickle.dumps(message, 5), None
    target = segment.mapping
    assert target is not None
    for raw, (offset, length) in zip(large, spans, strict=True):
        target[offset : offset + length] = raw
    return pickle.dumps(Envelope(blob, segment.name, spans, lent, private), 5), segment


class Owned:
    """A message whose large buffers wait in a segment of their own, which lives as long as
    something holds the message: every map that may still send it to a worker (a worker that
    loaded it keeps its own mapping). Once the last holder lets go, the next
    :func:`sweep_owned` unlinks it."""

    __slots__ = ("__weakref__", "data", "nbytes")

    def __init__(self, data: bytes, segment: Segment):
        self.data = data
        self.nbytes = segment.size
        segment.close()  # the receivers map it; this process only names it
        _owned[segment.name] = os.getpid()
        # Only noted: the finalizer runs wherever garbage is collected, maybe inside the
        # resource tracker's own lock, so the unlinking waits for sweep_owned.
        weakref.finalize(self, _unheld.append, segment.name)


# The segments of Owned messages, by name, with the pid of the process that made them (a child
# forked with a copy of this table must not unlink its parent's), and those no longer held.
_owned: dict[str, int] = {}
_unheld: list[str] = []


def dumps_owned(message: Any) -> bytes | Owned:
    """Pickle ``message``, its large buffers into a segment of its own that each receiver maps
    copy on write (see :class:`Owned`); plain bytes when it has none or ``/dev/shm`` has no
    room. Raises OSError when no segment can be made."""
    data, segment = dumps(message, lambda size: Segment.create(size, _OWNED_PREFIX), private=True)
    return data if segment is None else Owned(data, segment)


def sweep_owned(everything: bool = False) -> None:
    """Unlink the segments of the Owned messages that nothing holds any more; with
    ``everything``, of every one this process made (at exit)."""
    if everything:
        names = list(_owned)
    elif _unheld:
        names = _drained(_unheld)
    else:
        return
    for name in names:
        if _owned.pop(name, None) == os.getpid():  # one thread unlinks it, and only its maker
            _unlink(name)


def _drained(pending: list[T]) -> list[T]:
    """Take what ``pending`` holds now; what a finalizer appends meanwhile (in whatever thread
    collects garbage) stays for the next time."""
    taken = pending[:]
    del pending[: len(taken)]
    return taken


def _fits(size: int, nbytes: int) -> bool:
    return nbytes <= size <= 4 * nbytes


class Arena:
    """The caller's segments for arguments, kept mapped and reused (module docstring)."""

    def __init__(self, keep: int = KEEP_BYTES):
        self._keep = keep
        self._free: list[Segment] = []
        self._leased: set[Segment] = set()
        self._closed = False

    def lease(self, nbytes: int) -> Segment | None:
        """A segment of at least ``nbytes``, held until :meth:`release`; None once closed (a
        map of another thread still running at exit sends its buffers in-band)."""
        if self._closed:
            return None
        fitting = [s for s in self._free if _fits(s.size, nbytes)]
        if fitting:
            segment = min(fitting, key=lambda s: s.size)
            self._free.remove(segment)
        else:
            made = Segment.create(1 << max(nbytes - 1, 1).bit_length(), _ARGS_PREFIX)
            if made is None:
                return None
            segment = made
        self._leased.add(segment)
        return segment

    def release(self, segment: Segment) -> None:
        """Give a segment back once the chunk it carried is done."""
        if segment in self._leased:
            self._leased.remove(segment)
            self._free.append(segment)

    def holds_memory(self) -> bool:
        return bool(self._free)

    def trim(self, keep: int | None = None) -> None:
        """Unlink idle segments beyond ``keep`` bytes (the arena's bound), oldest first."""
        limit = self._keep if keep is None else keep
        while self._free and sum(s.size for s in self._free) > limit:
            self._free.pop(0).destroy()

    def close(self) -> None:
        """Unlink every segment, leased or not."""
        self._closed = True
        for segment in [*self._free, *self._leased]:
            segment.destroy()
        self._free.clear()
        self._leased.clear()


class ReplySegments:
    """One worker's segments for large results: lent to the caller, given back, written again."""

    def __init__(self) -> None:
        self.keep = KEEP_BYTES  # the worker's share of its pool's bound, set at start
        self.prefix = "pzR_"  # set at start: its pool's reply prefix
        self._free: dict[str, int] = {}  # name -> size, unmapped here, not held by the caller
        self._lent: dict[str, int] = {}

    def lease(self, nbytes: int) -> Segment | None:
        """A segment for a reply of ``nbytes``, mapped for writing; it counts as lent from now."""
        if not _tracker_shared():  # a caller that dies first could not clean it up
            return None
        fitting = [name for name, size in self._free.items() if _fits(size, nbytes)]
        segment: Segment | None = None
        if fitting:
            name = min(fitting, key=self._free.__getitem__)
            del self._free[name]
            try:
                segment = Segment.attach(name)
            except FileNotFoundError:  # the caller gave up on it
                segment = None
        if segment is None:
            segment = Segment.create(max(nbytes, 1), self.prefix)
            if segment is None:
                return None
        self._lent[segment.name] = segment.size
        return segment

    def given_back(self, names: Iterable[str]) -> None:
        """The caller is done with these: keep them for reuse, up to ``keep`` bytes."""
        for name in names:
            size = self._lent.pop(name, None)
            if size is None:  # forgotten below: nothing to reuse it for
                _unlink(name)
            else:
                self._free[name] = size
        while self._free and sum(self._free.values()) > self.keep:
            oldest = next(iter(self._free))
            del self._free[oldest]
            _unlink(oldest)
        # Names the caller unlinked itself never come back; forget the oldest of a long list.
        while len(self._lent) > LENT_NAMES_KEPT:
            del self._lent[next(iter(self._lent))]

    def idle(self) -> bool:
        """Whether some segment waits for reuse (and should be freed if no work comes)."""
        return bool(self._free)

    def release(self) -> None:
        """Unlink every segment not lent to the caller."""
        unlink(self._free)
        self._free.clear()


def reply_prefix() -> str:
    """A new pool's prefix for its workers' reply segments: unique, even across containers that
    share ``/dev/shm`` (and so may reuse each other's pids)."""
    return f"pzR{os.urandom(4).hex()}_"


def reply_leftovers(pool_prefix: str, pid: int) -> list[str]:
    """The segments a worker process left behind (lent ones included), to unlink once it is gone."""
    prefix = f"{pool_prefix}{pid}_"
    try:
        return [name for name in os.listdir(_SHM_DIR) if name.startswith(prefix)]
    except OSError:
        return []


def unlink(names: Iterable[str]) -> None:
    """Unlink segments by name (those already gone are skipped)."""
    for name in names:
        _unlink(name)


_replies = ReplySegments()


def dumps_reply(message: Any) -> bytes:
    """Pickle a worker's reply, its large buffers into a segment lent to the caller."""
    data, segment = dumps(message, _replies.lease, lent=True)
    if segment is not None:
        segment.close()  # the caller maps it; this worker maps it again only to reuse it
    return data


def configure_replies(prefix: str, keep: int) -> None:
    """In a worker: name reply segments from ``prefix``; keep at most ``keep`` bytes for reuse."""
    _replies.prefix = prefix
    _replies.keep = keep


def given_back(names: Iterable[str]) -> None:
    """In a worker: the caller gave these reply segments back."""
    _replies.given_back(names)


def replies_idle() -> bool:
    return _replies.idle()


def release_replies() -> None:
    """In a worker: free the reply segments kept for reuse (idle, or exiting)."""
    _replies.release()
