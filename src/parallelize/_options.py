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
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from ._checkpoint import Checkpoint, as_checkpoint
from ._cpu import STATM, usable_cpus
from ._numbers import as_int, as_real
from ._retry import Retry


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET

BACKENDS: Final = ("process", "thread", "interpreters", "serial", "dask", "ray")
DEFAULT_BACKEND: Final = "process"
ENGINES: Final = ("dask", "ray")  # the backends that take an ``address``
START_METHODS: Final = ("fork", "spawn", "forkserver")
ON_ERROR: Final = ("raise", "return", "group")
OUTPUTS: Final = ("forward", "inherit", "drop")

BackendName = Literal["process", "thread", "interpreters", "serial", "dask", "ray"]
StartMethod = Literal["fork", "spawn", "forkserver"]
Output = Literal["forward", "inherit", "drop"]
OnError = Literal["raise", "return", "group"]
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
    "max_ahead",
    "max_ahead_bytes",
    "output",
    "stats",
    "max_worker_memory",
    "checkpoint",
)

# What a stream may hold of finished results ahead of its consumer, by default.
DEFAULT_AHEAD_BYTES: Final = 32 << 20

ENV_WORKERS: Final = "PARALLELIZE_WORKERS"
ENV_BACKEND: Final = "PARALLELIZE_BACKEND"


def _check_int(name: str, value: object, *, minimum: int, allow_none: bool) -> int | None:
    """``value`` as a plain int of at least ``minimum`` (or None, if allowed)."""
    if value is None and allow_none:
        return None
    number = as_int(value)
    if number is None:
        allowed = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return number


# A check of one value: True if it is fine, False if its type is right but it is out of range,
# None if its type is wrong (TypeError rather than ValueError).
_Check = Callable[[object], bool | None]


def _at_least(low: float, *, above: bool = False, high: float = math.inf) -> _Check:
    def check(value: object) -> bool | None:
        number = as_real(value)
        if number is None:
            return None
        return (number > low if above else number >= low) and number <= high  # NaN: False

    return check


def _count(value: object) -> bool | None:
    count = as_int(value)
    return None if count is None else count >= 0


def _kind(*types: type) -> _Check:
    return lambda value: isinstance(value, types) or None


def _either(first: _Check, second: _Check) -> _Check:
    return lambda value: first(value) or second(value)


def _or_none(check: _Check) -> _Check:
    return lambda value: value is None or check(value)


_NUMBER = _at_least(0)
_FLAG = _kind(bool)
_TEXT = _kind(str)

# The tqdm keyword arguments a ``progress`` mapping may hold (those of tqdm 4.66 and later), with
# what each takes: a bad one fails before any worker starts, rather than in tqdm at the first
# result, and without importing tqdm (a worker importing a decorated function must not pay for
# it). Left out: ``iterable`` (the map drives the bar) and ``gui`` (internal to tqdm).
# tests/test_api.py checks the names against the installed tqdm's signature.
PROGRESS_KEYS: Final[dict[str, tuple[_Check, str]]] = {
    "desc": (_or_none(_TEXT), "a string or None"),
    "total": (_or_none(_NUMBER), "a number >= 0 or None"),
    "leave": (_or_none(_FLAG), "True, False or None"),
    "file": (
        _or_none(lambda f: callable(getattr(f, "write", None)) or None),
        "a file (with a write method) or None",
    ),
    "ncols": (_or_none(_count), "an int >= 0 or None"),
    "mininterval": (_NUMBER, "a number of seconds >= 0"),
    "maxinterval": (_NUMBER, "a number of seconds >= 0"),
    "miniters": (_or_none(_NUMBER), "a number >= 0 or None"),
    "ascii": (_or_none(_kind(bool, str)), "True, False, a string of bar characters or None"),
    "disable": (_or_none(_FLAG), "True, False or None"),
    "unit": (_TEXT, "a string"),
    "unit_scale": (_either(_FLAG, _NUMBER), "True, False or a number >= 0"),
    "dynamic_ncols": (_FLAG, "True or False"),
    "smoothing": (_at_least(0, high=1), "a number from 0 to 1"),
    "bar_format": (_or_none(_TEXT), "a string or None"),
    "initial": (_NUMBER, "a number >= 0"),
    "position": (_or_none(_count), "an int >= 0 or None"),
    "postfix": (_or_none(_kind(Mapping, str)), "a dict, a string or None"),
    "unit_divisor": (_at_least(0, above=True), "a number > 0"),
    "write_bytes": (_FLAG, "True or False"),
    "lock_args": (_or_none(_kind(tuple)), "a tuple or None"),
    "nrows": (_or_none(_count), "an int >= 0 or None"),
    "colour": (_or_none(_TEXT), "a colour name, a hex code such as '#00ff00', or None"),
    "delay": (_NUMBER, "a number of seconds >= 0"),
}


def _check_progress(spec: Mapping[Any, Any]) -> dict[str, Any]:
    """A copy of the ``progress`` mapping, each key a tqdm option and each value one it takes;
    TypeError for an unknown key or a value of the wrong type, ValueError for one out of range."""
    for key, value in spec.items():
        if key not in PROGRESS_KEYS:
            raise TypeError(
                f"progress={{{key!r}: ...}}: {key!r} is not a tqdm option that a map passes "
                f"through; choose from {', '.join(PROGRESS_KEYS)}"
            )
        check, allowed = PROGRESS_KEYS[key]
        ok = check(value)
        if not ok:
            error = TypeError if ok is None else ValueError
            raise error(f"progress[{key!r}] must be {allowed}, got {value!r}")
    return dict(spec)


def _check_retries(value: object) -> int | Retry:
    """``retries``: a Retry as it is (it checked itself), or a count of at least 0."""
    if isinstance(value, Retry):
        return value
    if as_int(value) is None:
        raise TypeError(f"retries must be an int >= 0 or a parallelize.Retry, got {value!r}")
    count = _check_int("retries", value, minimum=0, allow_none=False)
    assert count is not None
    return count


# The units a max_worker_memory string may carry, in bytes.
MEMORY_UNITS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def memory_size(value: object) -> int:
    """``max_worker_memory`` in bytes: an int, or a string such as ``"2GiB"`` or ``"500MB"``."""
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = match[2].lower() if match else ""
        if match is None or unit not in {"", *MEMORY_UNITS}:
            raise ValueError(
                f"max_worker_memory={value!r} is not a size: give bytes as an int, or a "
                "number with a unit such as '2GiB', '500MB' (B, kB, MB, GB, TB, KiB, MiB, "
                "GiB, TiB)"
            )
        size = int(float(match[1]) * MEMORY_UNITS.get(unit, 1))
    else:
        number = as_int(value)
        if number is None:
            raise TypeError(
                "max_worker_memory must be a number of bytes (an int) or a string such as "
                f"'2GiB', or None, got {value!r}"
            )
        size = number
    if size < 1:
        raise ValueError(f"max_worker_memory must be at least 1 byte, got {value!r}")
    return size


def _check_memory_limit(backend: str, backend_is: str) -> None:
    """ValueError unless ``max_worker_memory`` can apply: process workers, on Linux."""
    if backend in ENGINES:
        own = (
            "Dask's memory_limit= of its workers (they are paused, then restarted, above it)"
            if backend == "dask"
            else "Ray's memory monitor (RAY_memory_usage_threshold) and memory= of tasks"
        )
        raise ValueError(
            f"max_worker_memory cannot apply with backend={backend!r}{backend_is}: the engine "
            f"manages its workers' memory itself; use {own}"
        )
    if backend != "process":
        raise ValueError(
            f"max_worker_memory cannot apply with backend={backend!r}{backend_is}: its "
            "workers share the caller's process and memory; use backend='process'"
        )
    if not os.path.exists(STATM):
        raise ValueError(
            "max_worker_memory needs Linux's /proc to read a worker's memory, which this "
            f"platform ({sys.platform}) does not have"
        )


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _validate(name: str, value: Any) -> Any:
    """The explicit option value as kept (integers as plain ints, a progress mapping copied);
    TypeError or ValueError if it is bad."""
    if name in ("workers", "chunksize", "max_tasks_per_worker", "max_ahead", "max_ahead_bytes"):
        return _check_int(name, value, minimum=1, allow_none=True)
    convert = _CONVERTERS.get(name)
    if convert is not None:
        return None if value is None and name in _NONE_ALLOWED else convert(value)
    if name == "ordered":
        if not isinstance(value, bool):
            raise TypeError(f"ordered must be True or False, got {value!r}")
    elif name == "progress":
        if isinstance(value, Mapping):
            return _check_progress(value)
        if not isinstance(value, bool | str):
            raise TypeError(f"progress must be a bool, a description or a dict, got {value!r}")
    elif name == "backend":
        _check_choice("backend", value, BACKENDS)
    elif name == "start_method":
        if value is not None:
            _check_choice("start_method", value, START_METHODS)
            if value not in multiprocessing.get_all_start_methods():
                raise ValueError(f"start_method {value!r} is not available on this platform")
    elif name == "on_error":
        _check_choice("on_error", value, ON_ERROR)
    elif name == "output":
        if not isinstance(value, str):
            raise TypeError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {value!r}")
        _check_choice("output", value, OUTPUTS)
    elif name == "stats":
        if not isinstance(value, bool):
            raise TypeError(f"stats must be True or False, got {value!r}")
    elif name == "initializer":
        if value is not None and not callable(value):
            raise TypeError(f"initializer must be callable or None, got {value!r}")
    elif name == "address" and value is not None and not isinstance(value, str):
        raise TypeError(f"address must be a string or None, got {value!r}")
    return value


def _check_timeout(value: object) -> float | int:
    seconds = float(value) if isinstance(value, float) else as_int(value)
    if seconds is None:
        raise TypeError(f"timeout must be a number of seconds or None, got {value!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {value!r}")
    return seconds


def _check_initargs(value: object) -> tuple[Any, ...]:
    if not isinstance(value, tuple | list):
        raise TypeError(f"initargs must be a tuple, got {value!r}")
    return tuple(value)


# The options whose value is kept converted, and those of them that may be None.
_NONE_ALLOWED: Final = frozenset({"timeout", "max_worker_memory", "checkpoint"})
_CONVERTERS: Final[dict[str, Callable[[Any], Any]]] = {
    "retries": _check_retries,
    "timeout": _check_timeout,
    "max_worker_memory": memory_size,
    "checkpoint": as_checkpoint,
    "initargs": _check_initargs,
}


class Options:
    """The options of one map as given: each field is a value or ``UNSET``.

    Construction validates every given value, so bad options fail before any worker starts.
    Immutable. A plain class rather than a dataclass: ``dataclasses`` imports ``inspect``, several
    milliseconds of every cold start.
    """

    # _resolved: the last resolve() and what it read from the process (see resolve()).
    __slots__ = (*OPTION_NAMES, "_resolved")
    _resolved: tuple[tuple[Any, ...], Resolved] | None
    workers: int | _Unset | None
    chunksize: int | _Unset | None
    ordered: bool | _Unset
    progress: Progress | _Unset
    backend: BackendName | _Unset
    start_method: StartMethod | _Unset | None
    timeout: float | _Unset | None
    retries: int | Retry | _Unset
    on_error: OnError | _Unset
    initializer: Callable[..., object] | _Unset | None
    initargs: tuple[Any, ...] | _Unset
    max_tasks_per_worker: int | _Unset | None
    address: str | _Unset | None
    max_ahead: int | _Unset | None
    max_ahead_bytes: int | _Unset | None
    output: Output | _Unset
    stats: bool | _Unset
    max_worker_memory: int | _Unset | None
    checkpoint: Checkpoint | _Unset | None

    def __init__(self, **given: Any) -> None:
        """Validate and keep ``given``; every other field is ``UNSET``. Unknown names: TypeError."""
        unknown = sorted(set(given) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}")
        object.__setattr__(self, "_resolved", None)
        for name in OPTION_NAMES:
            value = given.get(name, UNSET)
            if value is not UNSET:
                value = _validate(name, value)
            object.__setattr__(self, name, value)
        # Options given together that cannot apply together fail here, at decoration time.
        # What an option left unset may still become (a later .options(), the environment, the
        # default) is checked once the options are final, in resolve().
        self._check_together(self.backend, self.initializer, "")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Options are immutable; use merged() to change {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with a decorated function sent by value
        return (_options_from, (self.given(),))

    def __repr__(self) -> str:
        return f"Options({', '.join(f'{k}={v!r}' for k, v in self.given().items())})"

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], where: str) -> Options:
        """Build from keyword arguments; an unknown name is a TypeError naming the allowed ones.

        The same arguments again (names, types and values: ``workers=True`` is not
        ``workers=1``) give the same Options, validated once: a loop of ``pmap(fn, items,
        workers=2)`` pays for it once.
        """
        key = tuple([(name, type(value), value) for name, value in kwargs.items()])
        try:
            built, kept = _BUILT.get(key), True
        except TypeError:  # an unhashable value (a list of initargs): built every time
            built, kept = None, False
        if built is not None:
            return built
        unknown = sorted(set(kwargs) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(
                f"{where}() got unexpected option(s) {', '.join(unknown)}; "
                f"options are {', '.join(OPTION_NAMES)}"
            )
        built = cls(**kwargs)
        if kept:
            if len(_BUILT) >= _BUILT_KEPT:
                _BUILT.clear()
            _BUILT[key] = built
        return built

    def merged(self, override: Options) -> Options:
        """These options with every field that ``override`` sets replaced."""
        return Options(**{**self.given(), **override.given()})

    def _check_together(
        self, backend: BackendName | _Unset, initializer: object, backend_is: str
    ) -> None:
        """ValueError naming both options if one cannot apply with ``backend`` (UNSET: not
        checked) or ``initializer`` (UNSET: not checked), or ``max_ahead`` with ``chunksize``;
        ``backend_is`` says where the backend came from, for the message."""
        if backend is not UNSET:
            if self.start_method not in (UNSET, None) and backend != "process":
                raise ValueError(
                    f"start_method={self.start_method!r} cannot apply with "
                    f"backend={backend!r}{backend_is}: only the process backend starts "
                    "processes; drop start_method, or use backend='process'"
                )
            if self.address not in (UNSET, None) and backend not in ENGINES:
                raise ValueError(
                    f"address={self.address!r} cannot apply with backend={backend!r}{backend_is}: "
                    "only the dask and ray backends connect to a cluster; "
                    "drop address, or use backend='dask' or backend='ray'"
                )
        if backend is not UNSET and self.max_worker_memory not in (UNSET, None):
            _check_memory_limit(backend, backend_is)
        chunksize, max_ahead = self.chunksize, self.max_ahead
        if isinstance(chunksize, int) and isinstance(max_ahead, int) and chunksize > max_ahead:
            raise ValueError(
                f"max_ahead={max_ahead} cannot apply with chunksize={chunksize}: a chunk is "
                "read whole, so a stream holds at least one chunk ahead; make max_ahead at "
                "least chunksize, or drop one of them"
            )
        if initializer is None and self.initargs not in (UNSET, ()):
            raise ValueError(
                f"initargs={self.initargs!r} cannot apply without an initializer: "
                "they are its arguments; pass initializer=, or drop initargs"
            )

    def given(self) -> dict[str, Any]:
        """The fields that were set, for reprs and for rebuilding."""
        values = ((name, getattr(self, name)) for name in OPTION_NAMES)
        return {name: value for name, value in values if value is not UNSET}

    def resolve(self) -> Resolved:
        """Fill every unset field from the environment, then from the defaults.

        ValueError if an explicit option cannot apply with the others: ``start_method`` off the
        process backend, ``address`` off Dask and Ray, ``initargs`` without an ``initializer``.
        A backend named by ``PARALLELIZE_BACKEND`` never makes such an error: the environment
        changes where a map runs, not whether the code is right.

        The answer is kept, with what it read (the two environment variables, and the usable
        CPUs when ``workers`` is unset), and given again while those read the same. Treat it as
        read-only.
        """
        read = (
            os.environ.get(ENV_BACKEND),
            os.environ.get(ENV_WORKERS),
            usable_cpus() if self.workers in (UNSET, None) else 0,
        )
        kept = self._resolved
        if kept is not None and kept[0] == read:
            return kept[1]
        resolved = self._resolve()
        object.__setattr__(self, "_resolved", (read, resolved))
        return resolved

    def _resolve(self) -> Resolved:
        if self.backend is not UNSET:
            backend: BackendName = self.backend
        else:
            from_env = _env_backend()
            backend = from_env or DEFAULT_BACKEND
            if from_env is None:
                self._check_together(DEFAULT_BACKEND, UNSET, " (the default)")
        self._check_together(UNSET, _value(self.initializer, None), "")
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
            max_ahead=_value(self.max_ahead, None),
            max_ahead_bytes=_value(self.max_ahead_bytes, None) or DEFAULT_AHEAD_BYTES,
            output=_value(self.output, "forward"),
            stats=_value(self.stats, False),
            max_worker_memory=_value(self.max_worker_memory, None),
            checkpoint=_value(self.checkpoint, None),
        )


# Options built by from_kwargs(), by their arguments: at most _BUILT_KEPT sets of them, each
# keeping its values alive (an initializer function, say) until the next clear.
_BUILT: dict[tuple[Any, ...], Options] = {}
_BUILT_KEPT: Final = 64


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


def _env_backend() -> BackendName | None:
    raw = os.environ.get(ENV_BACKEND, "").strip()
    if not raw:
        return None
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
    retries: int | Retry
    on_error: OnError
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    max_tasks_per_worker: int | None
    address: str | None
    max_ahead: int | None
    max_ahead_bytes: int
    output: Output
    stats: bool
    max_worker_memory: int | None
    checkpoint: Checkpoint | None

    def __init__(self, **values: Any) -> None:
        for name in OPTION_NAMES:
            setattr(self, name, values.pop(name))
        assert not values, values

    def replace(self, **changes: Any) -> Resolved:
        """A copy with ``changes`` applied."""
        return Resolved(**{name: getattr(self, name) for name in OPTION_NAMES} | changes)
