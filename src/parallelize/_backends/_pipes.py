"""What the backends whose workers read pickled messages from a pipe share (processes and
interpreters): loading a map's function into a worker once."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, Final, cast

from .._wire.protocol import Call, Load, to_wire

# Maps whose function pickles to the same bytes share one id, so a warm worker loads it once.
CALL_IDS_KEPT: Final = 64


class CallIds:
    """The call id of each pickled function a pool has loaded, the last CALL_IDS_KEPT of them."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}

    def message(self, blob: bytes, new_id: Callable[[], int]) -> tuple[int, bytes]:
        """The id of the function pickled in ``blob`` (a ``new_id()`` if it is new here), and
        the LOAD message that loads it into a worker."""
        call_id = self._ids.get(blob)
        if call_id is None:
            if len(self._ids) >= CALL_IDS_KEPT:
                self._ids.clear()
            call_id = self._ids[blob] = new_id()
        return call_id, pickle.dumps(to_wire(Load(call_id, cast(Call, _Blob(blob)))), 5)


class _Blob:
    """A pickled Call inside a LOAD message: unpickled as the Call itself, in the worker."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes):
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.blob,))
