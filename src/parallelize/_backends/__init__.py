"""The backends: one module per transport, each imported only when a map first names it.

A backend starts workers, moves chunks and reports events (see :mod:`.base`); the one scheduler in
:mod:`parallelize._core` drives them all.
"""

from __future__ import annotations

import importlib
from typing import Final

from .base import Backend

# backend name -> (module, class)
_REGISTRY: Final = {
    "process": ("parallelize._backends.process", "ProcessBackend"),
    "thread": ("parallelize._backends.thread", "ThreadBackend"),
    "serial": ("parallelize._backends.serial", "SerialBackend"),
    "interpreters": ("parallelize._backends.interpreters", "InterpreterBackend"),
    "dask": ("parallelize._backends.dask", "DaskBackend"),
    "ray": ("parallelize._backends.ray", "RayBackend"),
}
_instances: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name``, importing it (and its engine) on first use."""
    backend = _instances.get(name)
    if backend is None:
        module_name, class_name = _REGISTRY[name]
        module = importlib.import_module(module_name)
        backend = _instances[name] = getattr(module, class_name)()
    return backend


def loaded_backends() -> list[Backend]:
    """The backends started so far."""
    return list(_instances.values())
