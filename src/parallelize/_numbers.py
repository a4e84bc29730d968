"""Reading the numbers a user gives (options, ``Retry``): what counts as an int and as a real
number, a bool never being taken for either."""

from __future__ import annotations

import operator


def as_int(value: object) -> int | None:
    """``value`` as a plain int if it is an integer of any kind (``numpy.int64``, anything with
    ``__index__``), else None. A bool is not taken for a number."""
    if isinstance(value, bool):
        return None
    if type(value) is int:
        return value
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def as_real(value: object) -> float | None:
    """``value`` as a float if it is a real number (not a bool or a string), else None."""
    if isinstance(value, bool | str | bytes):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
