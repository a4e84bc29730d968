"""What the backends whose workers read pickled messages from a pipe share (processes and
interpreters): loading a map's function into a worker once."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Final, cast

from .._wire.pickling import Pickled
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
        # The Call travels as the pickle it already is, and reaches the worker as the Call.
        return call_id, pickle.dumps(to_wire(Load(call_id, cast(Call, Pickled(blob)))), 5)
