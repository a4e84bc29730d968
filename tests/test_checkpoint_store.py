"""The checkpoint store on its own: the file, its lock, its checks."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from parallelize._checkpoint import (
    Checkpoint,
    CheckpointError,
    Store,
    function_identity,
    item_digest,
    summary,
)


def square(x: int) -> int:
    return x * x


def cube(x: int) -> int:
    return x * x * x


def test_results_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    store = Store(Checkpoint(path), function_identity(square))
    store.add(0, item_digest(3), 9)
    store.add(2, item_digest(5), None, failed=True)
    store.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = Store(Checkpoint(path), function_identity(square))
    assert again.stored() == {0: (item_digest(3), False), 2: (item_digest(5), True)}
    assert again.load(0, 1) == [9]
    again.close()
    info = summary(str(path))
    assert (info["done"], info["failed"]) == (1, 1)
    assert info["function"].endswith("square")


def test_numpy_results_are_stored_as_raw_buffers(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    path = tmp_path / "arrays.ckpt"
    store = Store(Checkpoint(path), function_identity(square))
    store.add(0, b"d" * 16, np.arange(1_000_000, dtype=np.float64))
    store.close()
    db = sqlite3.connect(path)
    (size,) = db.execute("SELECT length(data) FROM buffers").fetchone()
    db.close()
    assert size == 8_000_000
    store = Store(Checkpoint(path), function_identity(square))
    assert store.load(0, 1)[0].sum() == np.arange(1_000_000, dtype=np.float64).sum()
    store.close()


def test_another_function_is_refused_unless_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    store = Store(Checkpoint(path), function_identity(square))
    store.add(0, b"d" * 16, 1)
    store.close()
    with pytest.raises(CheckpointError, match="cube"):
        Store(Checkpoint(path), function_identity(cube))
    store = Store(Checkpoint(path, on_mismatch="recompute"), function_identity(cube))
    assert store.stored() == {}
    store.close()


def test_a_second_map_on_the_file_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    first = Store(Checkpoint(path), function_identity(square))
    with pytest.raises(CheckpointError, match="in use"):
        Store(Checkpoint(path), function_identity(square))
    first.close()
    Store(Checkpoint(path), function_identity(square)).close()


def test_a_file_that_is_not_a_checkpoint_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n" * 100)
    with pytest.raises(CheckpointError, match="not a parallelize checkpoint"):
        Store(Checkpoint(path), function_identity(square))
    assert path.read_text() == "my notes\n" * 100


def test_results_are_not_unpickled_from_a_file_others_may_write(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    store = Store(Checkpoint(path), function_identity(square))
    store.add(0, b"d" * 16, 1)
    store.close()
    os.chmod(path, 0o666)
    with pytest.raises(CheckpointError, match="others may write to it"):
        Store(Checkpoint(path), function_identity(square))  # refused when opened


def test_a_bad_checkpoint_is_refused_when_built() -> None:
    with pytest.raises(TypeError):
        Checkpoint(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_mismatch"):
        Checkpoint("x", on_mismatch="ignore")  # type: ignore[arg-type]
