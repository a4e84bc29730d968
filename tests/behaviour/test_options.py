"""Options a backend cannot apply: refused when the user chose them, never when the environment
chose the backend."""

from __future__ import annotations

from typing import Any

import pytest

from parallelize import imap, pmap

from .workloads import square, weighted

pytestmark = pytest.mark.timeout(60)

# An address nothing listens on: a map that used it would fail, so a map that runs ignored it.
NOWHERE = "tcp://127.0.0.1:9"


def _misfits(backend: str) -> dict[str, Any]:
    """The options that cannot apply on ``backend``, each with a value it would otherwise take."""
    misfits: dict[str, Any] = {}
    if backend != "process":
        misfits["start_method"] = "spawn"
    if backend not in ("dask", "ray"):
        misfits["address"] = NOWHERE
    return misfits


def test_an_option_the_backend_cannot_apply_is_refused(backend_options: dict[str, Any]) -> None:
    """``start_method`` off the process backend, ``address`` off Dask and Ray: a ValueError naming
    both options, at the call, before any worker starts."""
    name = backend_options["backend"]
    for option, value in _misfits(name).items():
        pattern = rf"{option}={value!r} cannot apply with backend={name!r}"
        with pytest.raises(ValueError, match=pattern):
            pmap(square, [1], **backend_options, **{option: value})
        with pytest.raises(ValueError, match=pattern):
            imap(square, [1], **backend_options, **{option: value})
        with pytest.raises(ValueError, match=pattern):
            weighted.options(**backend_options).options(**{option: value})


def test_a_backend_from_the_environment_takes_any_option(
    backend_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code written for one backend runs on the one that ``PARALLELIZE_BACKEND`` names: an
    option that cannot apply there is left unused."""
    options = dict(backend_options)
    name = options.pop("backend")
    monkeypatch.setenv("PARALLELIZE_BACKEND", name)
    misfits = _misfits(name)
    assert pmap(square, range(5), **options, **misfits) == [0, 1, 4, 9, 16]
    assert list(weighted.options(**options, **misfits).imap([1.0, 2.0], weight=3)) == [3.0, 6.0]
