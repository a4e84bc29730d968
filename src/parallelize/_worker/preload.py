"""Loads the caller's main module in the fork server, once, so that the workers forked from it
inherit it instead of each running the caller's script again.

``multiprocessing`` asks its fork server to preload ``__main__``, but before Python 3.13.8 it
hands the server the script's path under a name the server never reads (CPython gh-126631):
every forkserver worker then ran the caller's script itself, and its imports (NumPy: ~140 ms
each here). The caller puts what a worker's own preparation would use into
:data:`MAIN_VARIABLE` while the fork server starts (:func:`main_preparation`); this module, in
the server's preload list, reads it and prepares the server as a starting worker prepares
itself. A worker forked from it then finds that main module in place and skips the script.
"""

from __future__ import annotations

import json
import os
import sys
from multiprocessing import process, spawn, util
from typing import Any, Final

from .._threadlimits import loading_with

MAIN_VARIABLE: Final = "PARALLELIZE_FORKSERVER_MAIN"

# What of multiprocessing's preparation data the main module's import depends on.
_MAIN_KEYS: Final = ("sys_path", "sys_argv", "init_main_from_path", "init_main_from_name")


def main_preparation(threads: int) -> str:
    """What the fork server needs to import this process's main module, as text for
    :data:`MAIN_VARIABLE` (ASCII: JSON escapes whatever else a path holds), with the native
    threads of each worker of the pool that starts it (NumPy, if the script imports it, is
    loaded there)."""
    data = spawn.get_preparation_data("fork-server")
    return json.dumps({"threads": threads, **{key: data[key] for key in _MAIN_KEYS if key in data}})


def _in_fork_server() -> bool:
    """Whether this import is the fork server's preloading (the caller imports this module too,
    and a program it started while the variable was set may as well: those must not act)."""
    server = sys.modules.get("multiprocessing.forkserver")
    frame = sys._getframe(1) if server is not None else None
    while frame is not None:
        if frame.f_code is server.main.__code__:  # type: ignore[union-attr]
            return True
        frame = frame.f_back
    return False


def _load_main() -> None:
    if MAIN_VARIABLE not in os.environ or not _in_fork_server():
        return
    text = os.environ.pop(MAIN_VARIABLE)  # popped: the workers must not carry it
    # The server gives up the caller's stdin after preloading; a script that reads it at its top
    # level must meet its end here too, as in a worker, not wait on the caller's terminal.
    util._close_stdin()  # type: ignore[attr-defined]
    preparation: dict[str, Any] = json.loads(text)
    threads: int = preparation.pop("threads")
    me = process.current_process()
    # As in a starting worker: a script that starts a pool at import, outside its
    # `if __name__ == "__main__":`, gets multiprocessing's clear error instead of recursing.
    setattr(me, "_inheriting", True)  # noqa: B010  # private to multiprocessing, untyped
    try:
        with loading_with(threads):  # as a worker's own import would have sized them
            spawn.prepare(preparation)
    except (Exception, SystemExit):
        pass  # then each worker prepares itself, as before, and reports what failed
    finally:
        delattr(me, "_inheriting")


_load_main()
