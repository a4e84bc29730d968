"""``shared_counter``: a locked 64-bit integer that every worker can reach, however it gets there.

``multiprocessing.Value`` can only travel by inheritance: pickling one into a task raises, and a
worker started before the value existed can never see it. A :class:`SharedCounter` instead pickles
to a *name*, and any process on the machine reopens the counter from that name. So it works as an
argument, inside a closure, under every start method, and in a pool that was warm before the
counter existed; nothing restarts.

Design (one small file per counter, see ``docs/shared-state.md``):

* The integer lives in a 128-byte file in ``/dev/shm`` (memory, not disk), mapped with ``mmap``.
  Its name is the handle that crosses the pipe.
* The counter's lock is a robust, process-shared pthread mutex in the same file (``mutex.py``,
  through ctypes). Free, it is taken and given back in user space with no system call; held, a
  waiter sleeps on a futex; and when its holder dies the kernel hands it to the next locker
  (``EOWNERDEAD``), so a worker killed mid-update (a timeout) cannot wedge the others. A mutex
  belongs to a thread, so threads of one process exclude each other with it too, and it is
  recursive, as the idiom ``with c.get_lock(): c.value += 1`` needs. The file stays mapped for as
  long as the process holds the counter, at exit too (a thread may be waiting inside the mutex),
  and for the process's life if the counter is dropped while one of its threads holds the lock
  (the mutex is on that thread's robust list, which the kernel walks when the thread ends). It
  is mapped through a descriptor closed at once, so that the mapping keeps no liveness mark
  (below) alive.
* Every process that holds the counter keeps a shared OFD lock on byte 0 of the file: a liveness
  mark the kernel also drops at death. A process letting go (garbage collection, or its exit)
  tries to turn its mark exclusive: if it can, no other process holds the counter and it unlinks
  the file. Releases are serialized by an OFD lock on byte 1, so two leaving at once cannot both
  miss being last.
* Lifetime backstop: the creator registers the file with multiprocessing's resource tracker, so a
  SIGKILLed creator's file is still removed when its process tree ends. When the creator lets go
  cleanly it unregisters and the liveness marks take over. Only the creator registers (attaching
  never does), which avoids the early unlink that ``SharedMemory`` suffers from before 3.13.
* Fork: the child shares the parent's mapping, so the mutex is the same one; it owns nothing (a
  lock held by the parent is not held by the child). On first use it reopens the file through
  ``/proc/self/fd`` as its own open file description, so its liveness mark is its own, and only
  then counts as a holder.
* A counter made while ``multiprocessing`` bootstraps a process (a spawn or forkserver worker
  running the caller's script again, or a module that script imports) is the worker's copy of a
  module-level counter, not the caller's: the caller's arrives pickled. It creates its file when
  first used or pickled (``_Deferred``), so a copy nobody uses costs no file, no tracker entry and
  no leak warning when its worker is killed. The caller's counters are created at once.

The seam for other engines: a :class:`SharedCounter` is a thin face over a storage object with
``get``/``set``/``add`` and a recursive ``acquire``/``release`` (:class:`CounterStorage`).
:class:`FileStorage` is the one for processes on this machine. A distributed backend pickles the
user's function and items inside ``with crossing(engine):`` (a :class:`CounterEngine`); a counter
pickled there first moves its value into a storage of that engine and points itself at it, so
the caller's own counter and every task's copy reach the same integer, on any machine.
"""

from .local import CounterEngine, CounterStorage, SharedCounter, crossing, shared_counter

__all__ = ["CounterEngine", "CounterStorage", "SharedCounter", "crossing", "shared_counter"]
