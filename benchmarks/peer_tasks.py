"""The functions of the peers' benchmark (``bench_peers.py``), in a module of their own so that
every tool's workers import them by name.

Three workloads, rebuilt from the description of the benchmark mpire's authors published to
tell multiprocessing libraries apart:

* numerical: NumPy work per item (singular values of a 200 x 300 block) on one large input array
  that every item reads;
* stateful: each worker keeps state across items (a cache of tables that cost ~5 ms to build,
  50 of them, and ~1 ms of work per item with its table);
* expensive initialization: each worker first loads a large "model" (~0.7 s of work, 18 MB),
  then every item (~5 ms) uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROWS, COLUMNS, BLOCK = 2000, 300, 200
TABLE_KEYS = 50
MODEL_SIZE = 1500


def shared_input() -> Any:
    return np.random.default_rng(0).standard_normal((ROWS, COLUMNS))


def numerical(data: Any, i: int) -> float:
    start = (i * 7) % (ROWS - BLOCK)
    return float(np.linalg.svd(data[start : start + BLOCK], compute_uv=False)[0])


# -- numerical, for the tools whose idiom for one big input is an initializer and a global --

_data: Any = None


def keep_input(data: Any) -> None:
    global _data
    _data = data


def numerical_from_global(i: int) -> float:
    return numerical(_data, i)


# -- stateful: a per-worker cache --

_tables: dict[int, Any] = {}


def _table(key: int) -> Any:
    rng = np.random.default_rng(key)
    return np.linalg.qr(rng.standard_normal((300, 300)))[0]


def stateful(i: int) -> float:
    """With the worker's cache as a module global (how every tool but mpire keeps state)."""
    return _stateful(_tables, i)


def stateful_mpire(worker_state: dict[int, Any], i: int) -> float:
    """With mpire's ``worker_state`` dict."""
    return _stateful(worker_state, i)


def _stateful(cache: dict[int, Any], i: int) -> float:
    key = i % TABLE_KEYS
    table = cache.get(key)
    if table is None:
        table = cache[key] = _table(key)
    return float(np.linalg.norm(table @ table[:, : 30 + i % 7]))


# -- expensive initialization: a model loaded once per worker --

_model: Any = None


def load_model() -> None:
    global _model
    matrix = np.random.default_rng(2).standard_normal((MODEL_SIZE, MODEL_SIZE))
    _model = np.linalg.qr(matrix)[0]


def predict(i: int) -> float:
    """Uses the model an initializer loaded (or loads it, where a tool has no initializer)."""
    if _model is None:
        load_model()
    vector = _model[i % MODEL_SIZE]
    for _ in range(4):
        vector = _model @ vector
    return float(vector[0])


def predict_mpire(worker_state: Any, i: int) -> float:
    return predict(i)


def load_model_mpire(worker_state: Any) -> None:
    """mpire's ``worker_init`` (it passes the worker state)."""
    load_model()
