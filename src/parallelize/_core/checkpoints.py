"""A map with ``checkpoint=``: the results stored by an earlier run come from the file, the
others are computed, and each computed result is written as it reaches the caller.

The items still to compute go to the workers as a map of their own, in input order; each item
read notes its place in a plan (stored, or to compute). Results come back a run at a time: a
run's results are written in one transaction, and then reach the caller, in input order, with
the stored results between them. Every face (pmap and imap, Pool, Executor) runs its map through
:func:`resumed`; only how the missing items are computed differs.
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from typing import Any, TypeVar

from .._checkpoint import Checkpoint, Store, function_identity, item_digest
from .._errors import Failure
from .job import Batch, Job, note_input_error

T = TypeVar("T")

# How the missing items (an iterator, or a list when planned up front) are computed: their
# values in input order, a list at a time, failures as Failure objects.
Compute = Callable[[Iterable[Any]], Generator[list[Any], None, None]]
# Stored results after the last computed one come in lists of at most this many.
TAIL = 4096


def open_store(spec: Checkpoint, fn: Callable[..., Any], total: int | None) -> Store:
    """Open and lock the map's file, checked against ``fn``: every refusal is raised here, when
    the map is called, before any worker starts."""
    store = Store(spec, function_identity(fn))
    try:
        store.set_total(total)
    except BaseException:
        store.close()
        raise
    return store


def closed_with(stream: Generator[T, None, None], store: Store) -> Generator[T, None, None]:
    """``stream``, which closes ``store`` when it ends, with the store also closed when the
    stream is dropped unstarted (a generator that never ran has no ``finally`` to run)."""
    weakref.finalize(stream, store.close)
    return stream


def resumed(
    store: Store, items: Iterable[Any], compute: Compute, *, up_front: bool = False
) -> Generator[list[Any], None, None]:
    """Every item's value in input order, a list at a time: stored results from the file, the
    rest from ``compute``, written (failures recorded as failed, with their input position)
    before the caller has them. ``up_front``: plan every item before computing any, so the
    missing ones go to ``compute`` as a list (chunked as a plain map of them would be)."""
    stored = store.stored()
    plan: collections.deque[tuple[int, bytes, bool]] = collections.deque()

    def missing() -> Iterator[Any]:
        position = 0
        source = iter(items)
        while True:
            try:
                item = next(source)
            except StopIteration:
                return
            except Exception as exc:  # its position in the whole input, not among the missing
                note_input_error(exc, position)
                raise
            digest = item_digest(item)
            known = stored.get(position)
            todo = known is None or known[0] != digest or known[1]
            plan.append((position, digest, todo))
            position += 1
            if todo:
                yield item

    def ready() -> Iterator[list[Any]]:
        """The stored results at the head of the plan, in lists of at most TAIL."""
        while plan and not plan[0][2]:
            yield _stored(plan, store, TAIL)

    if up_front:
        todo = list(missing())
        computing = compute(todo) if todo else _nothing()
    else:
        computing = compute(missing())
    with closing(computing) as computed:
        for values in computed:
            out: list[Any] = []
            for value in values:
                if not plan[0][2]:  # stored results come before this one
                    if out:
                        store.commit()
                        yield out
                        out = []
                    yield from ready()
                position, digest, _ = plan.popleft()
                if type(value) is Failure:
                    value.index = position
                    store.add(position, digest, None, failed=True)
                else:
                    store.add(position, digest, value)
                out.append(value)
            store.commit()  # before the caller has them: what it got is never computed again
            yield out
            yield from ready()  # those read already, after this run: not held back
    yield from ready()


def _nothing() -> Generator[list[Any], None, None]:
    """What computes no item."""
    yield from ()


def _stored(plan: collections.deque[tuple[int, bytes, bool]], store: Store, most: int) -> list[Any]:
    """The stored results at the head of the plan (at most ``most``), taken off it. (Indexed,
    not iterated: the thread that reads the items may be adding to the plan meanwhile.)"""
    count = 0
    while count != most and count < len(plan) and not plan[count][2]:
        count += 1
    if not count:
        return []
    first = plan[0][0]
    for _ in range(count):
        plan.popleft()
    return store.load(first, count)


def computed_by(job: Job, batches_of: Callable[[Job], Generator[Batch, None, None]]) -> Compute:
    """How pmap and imap compute a checkpointed job's missing items: as a job of their own,
    run by ``batches_of`` (an input error is handed back to ``job``)."""

    def compute(todo: Iterable[Any]) -> Generator[list[Any], None, None]:
        options = job.options.replace(checkpoint=None)
        if isinstance(todo, list):
            source = None if job.star else todo
            sub = Job(job.fn, iter(todo), job.star, len(todo), options, job.stream, source)
        else:
            sub = Job(job.fn, iter(todo), job.star, None, options, stream=True)
        try:
            with closing(batches_of(sub)) as batches:
                yield from _in_order(batches)
        finally:
            if sub.input_error is not None:
                job.input_error = sub.input_error

    return compute


def _in_order(batches: Iterator[Batch]) -> Iterator[list[Any]]:
    """Batches' values in input order, a batch at a time."""
    waiting: dict[int, Batch] = {}
    next_index = 0
    for batch in batches:
        waiting[batch.start] = batch
        while (ready := waiting.pop(next_index, None)) is not None:
            next_index += len(ready.values)
            yield ready.values
