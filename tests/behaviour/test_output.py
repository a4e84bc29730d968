"""Workers' output: ``output="forward"`` (the default) hands their log records to the caller's
handlers and their text to the caller's current ``sys.stdout``/``sys.stderr``; ``"drop"``
discards both; ``"inherit"`` leaves them to the workers' own file descriptors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parallelize import WorkerCrashedError, imap, pmap
from support import script_env

from .conftest import Backend
from .workloads import (
    WORKER_LOGGER,
    chatty,
    half_lines,
    last_words,
    log_failure,
    log_odd_extra,
)

pytestmark = pytest.mark.timeout(60)


def _worker_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == WORKER_LOGGER]


def test_records_reach_the_callers_handlers_once(
    backend_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Each record passing the caller's level is handled once by the caller's handlers, with
    its name, level, message and extra fields, the worker's pid and the item's index."""
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    assert pmap(chatty, range(6), **backend_options) == list(range(6))
    records = _worker_records(caplog)
    assert sorted(record.getMessage() for record in records) == [f"item {i}" for i in range(6)]
    for record in records:
        assert record.levelno == logging.INFO  # the debug records did not pass the level
        index = int(record.getMessage().split()[1])
        assert record.item_index == index  # type: ignore[attr-defined]
        assert record.tag == f"t{index}"  # type: ignore[attr-defined]
        assert isinstance(record.worker_pid, int)  # type: ignore[attr-defined]


def test_the_callers_level_at_the_start_decides(
    backend_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that lowers a logger's level gets that logger's debug records too; one that
    raises it gets none."""
    caplog.set_level(logging.DEBUG, logger=WORKER_LOGGER)
    pmap(chatty, range(3), **backend_options)
    messages = sorted(record.getMessage() for record in _worker_records(caplog))
    assert messages == sorted([f"item {i}" for i in range(3)] + [f"debug {i}" for i in range(3)])
    caplog.clear()
    caplog.set_level(logging.WARNING, logger=WORKER_LOGGER)
    pmap(chatty, range(3), **backend_options)
    assert _worker_records(caplog) == []


def test_extra_values_that_are_not_plain_data_arrive_as_their_repr(
    backend: Backend, backend_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Plain data (a dict of lists) arrives as itself; anything else as its repr, so that a
    value the caller could not rebuild never costs the map."""
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    assert pmap(log_odd_extra, range(3), **backend_options) == [0, 1, 2]
    records = _worker_records(caplog)
    assert len(records) == 3
    for record in records:
        index = record.item_index  # type: ignore[attr-defined]
        assert record.ctx == {"user": index, "tags": ["a", "b"]}  # type: ignore[attr-defined]
        odd = record.odd  # type: ignore[attr-defined]
        if backend.in_caller:  # handled in the caller's process: the object itself
            assert isinstance(odd, Exception)
        else:
            assert odd == f"TwoArgError({index}, 2)" or "TwoArgError" in odd


def test_an_exception_logged_in_a_worker_keeps_its_traceback(
    backend_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    pmap(log_failure, range(2), **backend_options)
    records = _worker_records(caplog)
    assert len(records) == 2
    for record in records:
        text = caplog.handler.format(record)
        assert "lookup failed for" in text
        assert "KeyError: 'missing" in text


def test_printed_lines_reach_the_callers_stdout_and_stderr(
    backend_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Whole lines, each once, in the caller's current streams; nothing else in them."""
    assert list(imap(chatty, range(8), **backend_options)) == list(range(8))
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == sorted(f"out {i}" for i in range(8))
    assert sorted(line for line in err.splitlines() if line.startswith("err")) == sorted(
        f"err {i}" for i in range(8)
    )


def test_a_partial_line_is_delivered_when_its_item_ends(
    backend_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Pieces of a line arrive as one line; a line the item never ended arrives on its own."""
    pmap(half_lines, range(4), **backend_options)
    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(
        [f"start {i} end {i}" for i in range(4)] + [f"partial {i}" for i in range(4)]
    )


def test_drop_discards_text_and_records(
    backend_options: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=WORKER_LOGGER)
    assert pmap(chatty, range(4), output="drop", **backend_options) == list(range(4))
    out, err = capsys.readouterr()
    assert "out " not in out
    assert "err " not in err
    assert _worker_records(caplog) == []


INHERIT_SCRIPT = """
import logging
from parallelize import pmap

def chatty(x):
    print(f"out {{x}}", flush=True)
    return x

if __name__ == "__main__":
    assert pmap(chatty, range(3), output="inherit", **{options!r}) == [0, 1, 2]
"""


@pytest.mark.slow  # a new interpreter per backend: the default suite keeps its time
@pytest.mark.timeout(120)
def test_inherit_leaves_output_to_the_workers_descriptors(
    backend: Backend, script_options: dict[str, Any], tmp_path: Path
) -> None:
    """Today's behaviour: a worker writes to the descriptors it inherited, here the script's."""
    if backend.engine is not None:
        pytest.skip("an engine's workers write to the engine's own logs")
    (tmp_path / "script.py").write_text(INHERIT_SCRIPT.format(options=script_options))
    done = subprocess.run(
        [sys.executable, "script.py"],
        capture_output=True, text=True, timeout=100, check=False, cwd=tmp_path, env=script_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for i in range(3):  # threads may tear each other's lines here: that is what forward mends
        assert f"out {i}" in done.stdout


def test_output_before_a_crash_comes_before_the_error(
    backend: Backend, backend_options: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """What a worker printed just before it died is delivered, then the crash raises."""
    if not backend.child_processes:
        pytest.skip("only a worker process of our pool can die without taking the caller")
    with pytest.raises(WorkerCrashedError):
        pmap(last_words, range(3), chunksize=1, **backend_options)
    assert "last words of 2" in capsys.readouterr().out


def test_bad_output_option_fails_before_any_worker_starts(
    backend_options: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="output"):
        pmap(chatty, range(2), output="loud", **backend_options)
    with pytest.raises(TypeError, match="output"):
        pmap(chatty, range(2), output=True, **backend_options)
