"""The serial backend: every item in the caller's own thread, for debugging with pdb.

Exceptions keep their live traceback. ``timeout`` cannot interrupt code running in the caller and is
not enforced here; ``retries`` and ``on_error`` work as everywhere.
"""

from __future__ import annotations

from collections.abc import Generator

from .._execute import Call, fresh_status, run_chunk
from .base import Backend, Batch, Job


class SerialBackend(Backend):
    """Runs a job item by item in the calling thread."""

    name = "serial"

    def run(self, job: Job) -> Generator[Batch, None, None]:
        call = Call(job.fn, job.star, job.options.on_error == "return", timed=False)
        status = fresh_status(cancel=-1)
        for index, item in enumerate(job.items):
            outcome = run_chunk(call, index, index, [item], job.options.retries, status)
            assert outcome is not None  # nothing cancels a serial chunk
            yield Batch(index, outcome[0], failed=outcome[2])
