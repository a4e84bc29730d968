"""Large arrays travel through shared memory in both directions, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parallelize import pmap

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20


def total(a: object) -> float:
    return float(np.asarray(a).sum())


def make(i: int) -> object:
    return np.full(MB // 8 * 2, i, dtype=np.float64)  # 2 MB: above the threshold


def echo(a: object) -> object:
    return a


def test_large_arrays_both_ways(start_method: str) -> None:
    arrays = [np.arange(MB // 4, dtype=np.float64) * i for i in range(6)]  # 2 MB each
    assert pmap(total, arrays, workers=2, start_method=start_method) == [a.sum() for a in arrays]
    made = pmap(make, range(6), workers=2, start_method=start_method)
    assert [float(m[0]) for m in made] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    back = pmap(echo, arrays, workers=2, start_method=start_method)
    assert all((a == b).all() for a, b in zip(arrays, back, strict=True))
    back[1][:] = -1  # returned arrays are the caller's own, writable memory
    assert arrays[1][1] == 1.0


def test_big_bytes_and_small_buffers_mixed() -> None:
    items = [b"x" * (3 * MB), b"small", bytearray(2 * MB)]
    assert pmap(len, items, workers=2) == [3 * MB, 5, 2 * MB]


def test_nothing_outlives_the_interpreter(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "shm.py"
    script.write_text(
        textwrap.dedent(f"""
        import numpy as np
        from parallelize import pmap

        def make(i):
            return np.full(300_000, i, dtype=np.float64)

        if __name__ == "__main__":
            arrays = [np.ones(300_000) * i for i in range(8)]
            for _ in range(3):
                sums = pmap(np.sum, arrays, workers=2, start_method={start_method!r})
                made = pmap(make, range(8), workers=2, start_method={start_method!r})
            kept = made[3]
            print(sums[2], float(kept[0]))
    """)
    )
    before = set(os.listdir("/dev/shm"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["600000.0", "3.0"]
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr
    assert done.stderr == ""
    assert set(os.listdir("/dev/shm")) - before == set()
