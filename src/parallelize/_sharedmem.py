"""Large buffers cross between the caller and process workers through shared memory, not the pipe.

Pickle protocol 5 hands every large contiguous buffer (a NumPy array's data, a ``bytearray``, a
``pickle.PickleBuffer``) to a callback instead of copying it into the pickle. Buffers of at least
``THRESHOLD`` bytes are copied once into a shared-memory segment, and the message carries only the
segment's name and where each buffer lies; the receiver maps the segment and unpickles with those
views as the buffers, so the arrays it gets are backed by the shared memory, with no second copy.

* **Caller to worker** (arguments): segments come from an :class:`Arena` that the pool keeps and
  reuses from map to map, since writing to pages already touched is several times faster than to
  fresh ones. A segment is leased while its chunk is in flight. The arena keeps at most
  ``KEEP_BYTES`` between maps and unlinks everything when the pool closes; the resource tracker,
  with which the caller registers every segment, unlinks them if the caller is killed. An array
  a worker receives is valid while its item runs (copy it to keep it).
* **Worker to caller** (results): a worker writes a fresh segment per reply, the caller maps it
  and unlinks it at once. Arrays returned to the caller live as long as the caller holds them;
  the memory is freed with the last one. Workers use this only when they share the caller's
  resource tracker (so that it can clean up after a caller that dies first).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import sys
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Final

# Below 1 MiB, copying through the pipe costs less than creating, mapping and finding a segment.
THRESHOLD: Final = 1 << 20
# Cache-line alignment for every buffer within a segment (SIMD loads on the receiving side).
ALIGN: Final = 64
# Bytes of idle segments an arena keeps between maps: enough for a map of 512 MB of arrays, and
# never more than an eighth of the machine's memory.
KEEP_BYTES: Final = min(1 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
_SHM_DIR: Final = "/dev/shm"
AVAILABLE: Final = sys.platform == "linux" and os.path.isdir(_SHM_DIR)


class Envelope:
    """A message whose large buffers wait in a shared-memory segment."""

    __slots__ = ("blob", "name", "spans", "unlink")

    def __init__(self, blob: bytes, name: str, spans: list[tuple[int, int]], unlink: bool):
        self.blob = blob
        self.name = name  # the segment's name, without the leading slash
        self.spans = spans  # (offset, length) of each out-of-band buffer, in pickle order
        self.unlink = unlink  # the receiver owns the segment: unlink it once mapped

    def __reduce__(self) -> tuple[Any, ...]:
        return (Envelope, (self.blob, self.name, self.spans, self.unlink))

    def open(self) -> Any:
        """The message, its buffers backed by the shared segment."""
        path = os.path.join(_SHM_DIR, self.name)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if self.unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            resource_tracker.unregister("/" + self.name, "shared_memory")
        view = memoryview(mapping)
        return pickle.loads(self.blob, buffers=[view[o : o + n] for o, n in self.spans])


def load(raw: bytes) -> Any:
    """Unpickle a message that may be an :class:`Envelope`."""
    message = pickle.loads(raw)
    return message.open() if type(message) is Envelope else message


Allocate = Callable[[int], SharedMemory | None]


def dumps(
    message: Any, allocate: Allocate | None, *, unlink: bool = False
) -> tuple[bytes, SharedMemory | None]:
    """Pickle ``message``, its large buffers into a segment from ``allocate`` when there are any.

    Returns the bytes to send and the segment used (None when everything went in-band, also when
    ``allocate`` declined). With ``unlink``, the receiver unlinks the segment once it has mapped
    it. Raises what pickling raises.
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
    target = segment.buf
    assert target is not None
    for raw, (offset, length) in zip(large, spans, strict=True):
        target[offset : offset + length] = raw
    envelope = Envelope(blob, segment.name.lstrip("/"), spans, unlink)
    return pickle.dumps(envelope, 5), segment


def fresh_segment(nbytes: int) -> SharedMemory | None:
    """A new segment for a worker's reply, or None when the caller could not clean it up."""
    if not _tracker_shared():
        return None
    return _reserved(max(nbytes, 1))


def _reserved(size: int) -> SharedMemory | None:
    """A new segment whose memory is reserved now, or None when /dev/shm has no room.

    Without the reservation a full /dev/shm (64 MB in a default Docker container) would kill the
    writer with SIGBUS; with it, the message simply goes through the pipe.
    """
    segment = SharedMemory(create=True, size=size)
    try:
        os.posix_fallocate(segment._fd, 0, segment.size)  # type: ignore[attr-defined]
    except OSError:
        _destroy(segment)
        return None
    return segment


def dumps_reply(message: Any) -> bytes:
    """Pickle a worker's reply, its large buffers into a fresh segment that the caller unlinks."""
    data, segment = dumps(message, fresh_segment, unlink=True)
    if segment is not None:
        segment.close()  # the file stays for the caller, who unlinks it
    return data


def _tracker_shared() -> bool:
    """Whether this process talks to its parent's resource tracker (not one of its own)."""
    tracker_fd = getattr(resource_tracker._resource_tracker, "_fd", None)
    return tracker_fd is not None


class Arena:
    """Segments for arguments, reused from chunk to chunk and from map to map (module docstring)."""

    def __init__(self, keep: int = KEEP_BYTES):
        self._keep = keep
        self._free: list[SharedMemory] = []
        self._leased: set[SharedMemory] = set()

    def lease(self, nbytes: int) -> SharedMemory | None:
        """A segment of at least ``nbytes``, held until :meth:`release`."""
        fitting = [s for s in self._free if nbytes <= s.size <= 4 * nbytes]
        if fitting:
            segment = min(fitting, key=lambda s: s.size)
            self._free.remove(segment)
        else:
            made = _reserved(1 << max(nbytes - 1, 1).bit_length())
            if made is None:
                return None
            segment = made
        self._leased.add(segment)
        return segment

    def release(self, segment: SharedMemory) -> None:
        """Give a segment back once the chunk it carried is done."""
        if segment in self._leased:
            self._leased.remove(segment)
            self._free.append(segment)

    def trim(self) -> None:
        """Unlink idle segments beyond what the arena keeps between maps (oldest first)."""
        while self._free and sum(s.size for s in self._free) > self._keep:
            _destroy(self._free.pop(0))

    def close(self) -> None:
        """Unlink every segment, leased or not."""
        for segment in [*self._free, *self._leased]:
            _destroy(segment)
        self._free.clear()
        self._leased.clear()


def _destroy(segment: SharedMemory) -> None:
    with contextlib.suppress(BufferError):  # a view still exported: the mapping dies with it
        segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()
