"""Running a job: the backend's workers under the scheduler, then order, progress and errors.

Done once here for every backend: results in input order (or as they complete), the progress bar
counted in items, and the error policy (raise the first failure, or return it in place).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import closing
from typing import Any

from .._backends import get_backend
from .._errors import Failure
from . import stats
from .job import Batch, Job
from .output import Sink
from .progress import Bar, open_bar
from .scheduler import Scheduler


def _batches(job: Job, bar: Bar) -> Generator[Batch, None, None]:
    """The job's batches in completion order; closing it cancels the rest and releases the
    workers (or keeps them warm for the next map). The workers' output goes above ``bar``."""
    options = job.options
    sink = Sink(bar)
    if not stats.wanted(options.stats):
        with get_backend(options.backend).open(options) as pool:
            yield from Scheduler(pool, job, sink=sink).run()
        return
    recorder = stats.Recorder(job.fn, options.backend)
    try:
        with get_backend(options.backend).open(options) as pool:
            recorder.attach(pool)
            for batch in Scheduler(pool, job, sink=sink, recorder=recorder).run():
                recorder.items += len(batch.values)
                yield batch
    finally:
        stats.report(recorder.finish(), sink if options.stats else None)


def _values(batch: Batch, raise_first: bool) -> list[Any]:
    """The batch's values with failures raised, or turned into exception objects."""
    return batch.values if not batch.failed else list(_emit(batch, raise_first))


def _emit(batch: Batch, raise_first: bool) -> Iterator[Any]:
    """The batch's values one by one; a failure is raised (or yielded) where it stands."""
    if not batch.failed:
        yield from batch.values
        return
    for value in batch.values:
        if type(value) is Failure:
            error = value.exception()
            if raise_first:
                raise error
            yield error
        else:
            yield value


def run_list(job: Job) -> list[Any]:
    """Run a job to completion; the results in input (or completion) order."""
    options = job.options
    raise_first = options.on_error == "raise"
    bar = open_bar(options.progress, job.total)
    try:
        with closing(_batches(job, bar)) as batches:
            if not options.ordered:
                out: list[Any] = []
                for batch in batches:
                    out += _values(batch, raise_first)
                    bar.update(len(batch.values))
                return out
            received = []
            for batch in batches:
                received.append((batch.start, _values(batch, raise_first)))
                bar.update(len(batch.values))
    finally:
        bar.close()
    received.sort(key=_start)
    out = []
    for _, values in received:
        out += values
    return out


def _start(pair: tuple[int, list[Any]]) -> int:
    return pair[0]


def run_stream(job: Job) -> Iterator[Any]:
    """Run a job lazily, yielding results as the consumer asks for them."""
    options = job.options
    raise_first = options.on_error == "raise"
    bar = open_bar(options.progress, job.total)
    try:
        with closing(_batches(job, bar)) as batches:
            if not options.ordered:
                for batch in batches:
                    values = _values(batch, raise_first)
                    bar.update(len(values))
                    yield from values
                return
            # In input order, a failure is raised when the stream reaches it, after the results
            # before it.
            waiting: dict[int, Batch] = {}
            next_index = 0
            for batch in batches:
                waiting[batch.start] = batch
                bar.update(len(batch.values))
                while (ready := waiting.pop(next_index, None)) is not None:
                    next_index += len(ready.values)
                    yield from _emit(ready, raise_first)
    finally:
        bar.close()
