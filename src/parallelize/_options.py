"""The options every map takes, validated once, merged by precedence: explicit, environment,
default.

An option left out is ``UNSET`` (distinct from None, which is a real value for ``chunksize`` and
``timeout``), so ``f.options(chunksize=None)`` can put automatic chunking back on top of a decorator
that fixed it.
"""

from __future__ import annotations

import enum
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from ._cpu import usable_cpus


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET

BACKENDS: Final = ("process", "thread", "serial", "dask", "ray")
START_METHODS: Final = ("fork", "spawn", "forkserver")
ON_ERROR: Final = ("raise", "return")

BackendName = Literal["process", "thread", "serial", "dask", "ray"]
StartMethod = Literal["fork", "spawn", "forkserver"]
Progress = bool | str | Mapping[str, Any]


# Every option, in the order the docs list them (and ``MapOptions`` declares them).
OPTION_NAMES: Final = (
    "workers",
    "chunksize",
    "ordered",
    "progress",
    "backend",
    "start_method",
    "timeout",
    "retries",
    "on_error",
    "initializer",
    "initargs",
    "max_tasks_per_worker",
    "address",
)

ENV_WORKERS: Final = "PARALLELIZE_WORKERS"
ENV_BACKEND: Final = "PARALLELIZE_BACKEND"


def _check_positive_int(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "an int >= 1 or None" if allow_none else "an int >= 1"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _validate(name: str, value: Any) -> None:
    """Raise TypeError or ValueError for a bad explicit option value."""
    if name == "workers" or name in ("chunksize", "max_tasks_per_worker"):
        _check_positive_int(name, value, allow_none=True)
    elif name == "ordered":
        if not isinstance(value, bool):
            raise TypeError(f"ordered must be True or False, got {value!r}")
    elif name == "progress":
        if not isinstance(value, bool | str | Mapping):
            raise TypeError(f"progress must be a bool, a description or a dict, got {value!r}")
    elif name == "backend":
        _check_choice("backend", value, BACKENDS)
    elif name == "start_method":
        if value is not None:
            _check_choice("start_method", value, START_METHODS)
            if value not in multiprocessing.get_all_start_methods():
                raise ValueError(f"start_method {value!r} is not available on this platform")
    elif name == "timeout":
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"timeout must be a number of seconds or None, got {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(
                    f"timeout must be a positive, finite number of seconds, got {value!r}"
                )
    elif name == "retries":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"retries must be an int >= 0, got {value!r}")
        if value < 0:
            raise ValueError(f"retries must be >= 0, got {value!r}")
    elif name == "on_error":
        _check_choice("on_error", value, ON_ERROR)
    elif name == "initializer":
        if value is not None and not callable(value):
            raise TypeError(f"initializer must be callable or None, got {value!r}")
    elif name == "initargs":
        if not isinstance(value, tuple | list):
            raise TypeError(f"initargs must be a tuple, got {value!r}")
    elif name == "address" and value is not None and not isinstance(value, str):
        raise TypeError(f"address must be a string or None, got {value!r}")


class Options:
    """The options of one map as given: each field is a value or ``UNSET``.

    Construction validates every given value, so bad options fail before any worker starts.
    Immutable. A plain class rather than a dataclass: ``dataclasses`` imports ``inspect``, several
    milliseconds of every cold start.
    """

    __slots__ = OPTION_NAMES
    workers: int | _Unset | None
    chunksize: int | _Unset | None
    ordered: bool | _Unset
    progress: Progress | _Unset
    backend: BackendName | _Unset
    start_method: StartMethod | _Unset | None
    timeout: float | _Unset | None
    retries: int | _Unset
    on_error: Literal["raise", "return"] | _Unset
    initializer: Callable[..., object] | _Unset | None
    initargs: tuple[Any, ...] | _Unset
    max_tasks_per_worker: int | _Unset | None
    address: str | _Unset | None

    def __init__(self, **given: Any) -> None:
        """Validate and keep ``given``; every other field is ``UNSET``. Unknown names: TypeError."""
        unknown = sorted(set(given) - set(self.__slots__))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}")
        for name in OPTION_NAMES:
            value = given.get(name, UNSET)
            if value is not UNSET:
                _validate(name, value)
                if name == "initargs":
                    value = tuple(value)
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Options are immutable; use merged() to change {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with a decorated function sent by value
        return (_options_from, (self.given(),))

    def __repr__(self) -> str:
        return f"Options({', '.join(f'{k}={v!r}' for k, v in self.given().items())})"

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], where: str) -> Options:
        """Build from keyword arguments; an unknown name is a TypeError naming the allowed ones."""
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(
                f"{where}() got unexpected option(s) {', '.join(unknown)}; "
                f"options are {', '.join(OPTION_NAMES)}"
            )
        return cls(**kwargs)

    def merged(self, override: Options) -> Options:
        """These options with every field that ``override`` sets replaced."""
        return Options(**{**self.given(), **override.given()})

    def given(self) -> dict[str, Any]:
        """The fields that were set, for reprs and for rebuilding."""
        values = ((name, getattr(self, name)) for name in OPTION_NAMES)
        return {name: value for name, value in values if value is not UNSET}

    def resolve(self) -> Resolved:
        """Fill every unset field from the environment, then from the defaults."""
        backend = self.backend if self.backend is not UNSET else _env_backend()
        workers = self.workers if self.workers not in (UNSET, None) else _env_workers()
        assert not isinstance(workers, _Unset)
        return Resolved(
            workers=workers if workers is not None else usable_cpus(),
            chunksize=_value(self.chunksize, None),
            ordered=_value(self.ordered, True),
            progress=_value(self.progress, False),
            backend=backend,
            start_method=_value(self.start_method, None) or default_start_method(),
            timeout=_value(self.timeout, None),
            retries=_value(self.retries, 0),
            on_error=_value(self.on_error, "raise"),
            initializer=_value(self.initializer, None),
            initargs=_value(self.initargs, ()),
            max_tasks_per_worker=_value(self.max_tasks_per_worker, None),
            address=_value(self.address, None),
        )


def _options_from(given: dict[str, Any]) -> Options:
    return Options(**given)


def _value(value: Any, default: Any) -> Any:
    return default if value is UNSET else value


def _env_workers() -> int | None:
    raw = os.environ.get(ENV_WORKERS, "").strip()
    if not raw:
        return None
    try:
        workers = int(raw)
    except ValueError:
        raise ValueError(f"{ENV_WORKERS} must be an int >= 1, got {raw!r}") from None
    if workers < 1:
        raise ValueError(f"{ENV_WORKERS} must be an int >= 1, got {raw!r}")
    return workers


def _env_backend() -> BackendName:
    raw = os.environ.get(ENV_BACKEND, "").strip()
    if not raw:
        return "process"
    if raw not in BACKENDS:
        raise ValueError(
            f"{ENV_BACKEND}={raw!r} is not a backend; choose one of {', '.join(BACKENDS)}"
        )
    return raw  # type: ignore[return-value]


def default_start_method() -> StartMethod:
    """forkserver where the platform has it, else spawn.

    Not fork: forking a process that runs threads (tqdm, Dask, Ray, the user's own) can deadlock,
    and Python 3.14 made forkserver its own default for the same reason. Workers are started once
    and reused, so forkserver's extra start-up cost is paid once per pool.
    """
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class Resolved:
    """Every option with its final value, as the backends see them. (A plain class: a
    NamedTuple of 13 fields takes half a millisecond to create, on every cold start.)"""

    __slots__ = OPTION_NAMES

    workers: int
    chunksize: int | None
    ordered: bool
    progress: Progress
    backend: BackendName
    start_method: StartMethod
    timeout: float | None
    retries: int
    on_error: Literal["raise", "return"]
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    address: str | None

    def __init__(self, **values: Any) -> None:
        for name in OPTION_NAMES:
            setattr(self, name, values.pop(name))
        assert not values, values

    def replace(self, **changes: Any) -> Resolved:
        """A copy with ``changes`` applied."""
        return Resolved(**{name: getattr(self, name) for name in OPTION_NAMES} | changes)
