"""Running a job: the backend's workers under the scheduler, then order, progress and errors.

Done once here for every backend: results in input order (or as they complete), the progress bar
counted in items, and the error policy (:mod:`parallelize._core.policy`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import closing
from typing import Any

from .._backends import get_backend
from .._checkpoint import Store
from . import stats
from .checkpoints import closed_with, computed_by, open_store, resumed
from .job import Batch, Job
from .output import Sink
from .policy import ErrorPolicy
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


def run_list(job: Job) -> list[Any]:
    """Run a job to completion; the results in input (or completion) order."""
    options = job.options
    policy = ErrorPolicy(options.on_error)
    bar = open_bar(options.progress, job.total)
    if options.checkpoint is not None:
        return _run_list_checkpointed(job, policy, bar)
    try:
        with closing(_batches(job, bar)) as batches:
            if not options.ordered:
                out: list[Any] = []
                for batch in batches:
                    out += policy.values(batch.values, batch.failed)
                    bar.update(len(batch.values))
                policy.finish(out)
                return out
            received = []
            for batch in batches:
                received.append((batch.start, policy.values(batch.values, batch.failed)))
                bar.update(len(batch.values))
    finally:
        bar.close()
    received.sort(key=_start)
    out = []
    for _, values in received:
        out += values
    policy.finish(out)
    return out


def _start(pair: tuple[int, list[Any]]) -> int:
    return pair[0]


def _run_list_checkpointed(job: Job, policy: ErrorPolicy, bar: Bar) -> list[Any]:
    """run_list with a checkpoint: the results always in input order."""
    out: list[Any] = []
    try:
        assert job.options.checkpoint is not None
        store = open_store(job.options.checkpoint, job.fn, job.total)
        try:
            compute = computed_by(job, lambda sub: _batches(sub, bar))
            up_front = job.total is not None
            with closing(resumed(store, job.items, compute, up_front=up_front)) as runs:
                for values in runs:
                    out += policy.values(values, True)
                    bar.update(len(values))
        finally:
            store.close()
    finally:
        bar.close()
    if job.input_error is not None:
        raise job.input_error
    policy.finish(out)
    return out


def run_stream(job: Job) -> Iterator[Any]:
    """Run a job lazily, yielding results as the consumer asks for them. A checkpoint's file is
    opened (and refused) now; the workers start at the first ``next()``."""
    if job.options.checkpoint is None:
        return _stream(job)
    store = open_store(job.options.checkpoint, job.fn, job.total)
    return closed_with(_stream_checkpointed(job, store), store)


def _stream_checkpointed(job: Job, store: Store) -> Generator[Any, None, None]:
    """run_stream with a checkpoint: the results always in input order."""
    options = job.options
    policy = ErrorPolicy(options.on_error)
    bar = open_bar(options.progress, job.total)
    try:
        compute = computed_by(job, lambda sub: _batches(sub, bar))
        with closing(resumed(store, job.items, compute)) as runs:
            for values in runs:
                bar.update(len(values))
                yield from policy.stream(values, True)
    finally:
        store.close()
        bar.close()
    if job.input_error is not None:
        raise job.input_error
    policy.finish(None)


def _stream(job: Job) -> Generator[Any, None, None]:
    options = job.options
    policy = ErrorPolicy(options.on_error)
    bar = open_bar(options.progress, job.total)
    try:
        with closing(_batches(job, bar)) as batches:
            if not options.ordered:
                for batch in batches:
                    bar.update(len(batch.values))
                    yield from policy.stream(batch.values, batch.failed)
            else:
                # In input order, a failure is raised when the stream reaches it, after the
                # results before it.
                waiting: dict[int, Batch] = {}
                next_index = 0
                for batch in batches:
                    waiting[batch.start] = batch
                    bar.update(len(batch.values))
                    while (ready := waiting.pop(next_index, None)) is not None:
                        next_index += len(ready.values)
                        yield from policy.stream(ready.values, ready.failed)
    finally:
        bar.close()
    policy.finish(None)
