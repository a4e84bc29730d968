"""A map with ``checkpoint=``: the results stored by an earlier run come from the file, the
others are computed, and each computed result is written as it reaches the caller.

The items still to compute go to the scheduler as a job of their own, in input order; each item
read notes its place in a plan (stored, or to compute). Results come back chunk by chunk: a
chunk's results are written in one transaction, and then reach the caller, in input order, with
the stored results between them.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

from .._checkpoint import Store, function_identity, item_digest
from .._errors import Failure
from .job import Batch, Job


def checkpointed(
    job: Job, batches_of: Callable[[Job], Generator[Batch, None, None]]
) -> Generator[list[Any], None, None]:
    """The job's values in input order, in lists (a chunk's worth, with the stored results
    before it), failures as :class:`Failure` objects at their input positions.
    ``batches_of(job)`` runs a job: its batches in completion order."""
    options = job.options
    assert options.checkpoint is not None
    store = Store(options.checkpoint, function_identity(job.fn))
    try:
        store.set_total(job.total)
        stored = store.stored()
        plan: collections.deque[tuple[int, bytes, bool]] = collections.deque()

        def missing() -> Iterator[Any]:
            for position, item in enumerate(job.items):
                digest = item_digest(item)
                known = stored.get(position)
                compute = known is None or known[0] != digest or known[1]
                plan.append((position, digest, compute))
                if compute:
                    yield item

        sub = Job(job.fn, missing(), job.star, None, options.replace(checkpoint=None), stream=True)
        batches = batches_of(sub)
        with contextlib.closing(batches):
            yield from _merged(_in_order(batches), plan, store)
        if sub.input_error is not None:
            job.input_error = sub.input_error
        yield [store.load(position) for position, _, _ in plan]
    finally:
        store.close()


def _merged(
    computed: Iterator[list[Any]],
    plan: collections.deque[tuple[int, bytes, bool]],
    store: Store,
) -> Iterator[list[Any]]:
    """Each run of computed values, written, with the stored results before it."""
    for values in computed:
        out: list[Any] = []
        for value in values:
            while not plan[0][2]:  # the stored results before this one
                out.append(store.load(plan.popleft()[0]))
            position, digest, _ = plan.popleft()
            if type(value) is Failure:
                value.index = position
                store.add(position, digest, None, failed=True)
            else:
                store.add(position, digest, value)
            out.append(value)
        store.commit()  # before the caller has them: what it got is never computed again
        yield out


def _in_order(batches: Iterator[Batch]) -> Iterator[list[Any]]:
    """Batches' values in input order, a batch at a time."""
    waiting: dict[int, Batch] = {}
    next_index = 0
    for batch in batches:
        waiting[batch.start] = batch
        while (ready := waiting.pop(next_index, None)) is not None:
            next_index += len(ready.values)
            yield ready.values
