"""parallelize: run a function of one item over many items on every core.

>>> from parallelize import pmap
>>> pmap(str.upper, ["a", "b"], backend="thread")
['A', 'B']
"""

from ._api import imap, pmap
from ._counter import SharedCounter, shared_counter
from ._decorator import ParallelFunction, parallel
from ._errors import (
    ParallelizeError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerCrashedError,
)
from ._options import MapOptions

__version__ = "0.1.0"

__all__ = [
    "MapOptions",
    "ParallelFunction",
    "ParallelizeError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "SharedCounter",
    "WorkerCrashedError",
    "imap",
    "parallel",
    "pmap",
    "shared_counter",
]
