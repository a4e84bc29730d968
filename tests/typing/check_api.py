"""What a type checker sees of the public API: checked by ``mypy --strict`` and pyright.

Never run, only type-checked (see ``tests/test_typing.py``). Each ``assert_type`` states what a
user's editor should infer; each ``type: ignore[...]`` marks a mistake the checker must catch
(with ``warn_unused_ignores``, a mistake that stops being caught fails the check).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from typing import assert_type

from parallelize import Executor, ParallelFunction, Pool, aimap, apmap, imap, parallel, pmap


@parallel
def shout(word: str) -> str:
    return word.upper()


@parallel(workers=2, progress="scaling")
def scale(x: int, *, by: float = 2.0) -> float:
    return x * by


def length(word: str) -> int:
    return len(word)


def add(x: int, y: int) -> int:
    return x + y


# The decorator: iterables in, a list of the function's return type out.
assert_type(shout, ParallelFunction[str, [], str])
assert_type(shout(["a", "b"]), list[str])
assert_type(shout(w for w in "ab"), list[str])
assert_type(shout.imap(["a", "b"]), Iterator[str])
assert_type(shout.__wrapped__, Callable[[str], str])
assert_type(shout.__wrapped__("a"), str)
assert_type(shout.options(workers=4), ParallelFunction[str, [], str])
assert_type(shout.options(backend="thread")(["a"]), list[str])

# With options and keyword arguments bound per call.
assert_type(scale([1, 2], by=3.0), list[float])
assert_type(scale.imap(range(10)), Iterator[float])
assert_type(scale.__wrapped__(1, by=0.5), float)

# As a plain call, not a decorator.
fast_length = parallel(length, workers=2)
assert_type(fast_length, ParallelFunction[str, [], int])
assert_type(fast_length(["ab"]), list[int])

# pmap and imap: the list or iterator of the function's return type.
assert_type(pmap(length, ["a", "bb"]), list[int])
assert_type(pmap(add, [1, 2], [3, 4]), list[int])
assert_type(pmap(str.upper, ["a"], backend="thread", progress=True), list[str])
assert_type(imap(length, ["a", "bb"], ordered=False), Iterator[int])
for n in imap(length, ["a"]):
    assert_type(n, int)

# Mistakes the checker must catch.
shout([1, 2])  # type: ignore[list-item]
shout(3)  # type: ignore[arg-type]
shout.__wrapped__(1)  # type: ignore[arg-type]
too_many: list[str] = scale([1])  # type: ignore[assignment]

# pmap/imap are shaped like the builtin map: a lambda's parameter types are inferred from the items.
assert_type(pmap(lambda w: w.upper(), ["a"]), list[str])
assert_type(imap(lambda x, y: x * y, [1], [2.5]), Iterator[float])

# Options are checked: a misspelt option or a wrong value is an error before the code runs.
pmap(length, ["a"], workerz=2)  # type: ignore[call-overload]
pmap(length, ["a"], backend="gpu")  # type: ignore[call-overload]
shout.options(ordered="yes")  # type: ignore[arg-type]
shout.options(workers=2.5)  # type: ignore[arg-type]


# A count takes any integer, such as numpy.int64: anything with __index__.
class Count:
    def __index__(self) -> int:
        return 2


assert_type(shout.options(workers=Count(), chunksize=Count()), ParallelFunction[str, [], str])
assert_type(pmap(length, ["a"], workers=Count(), max_tasks_per_worker=Count()), list[int])


# On a method, the instance (or, for a classmethod, the class) is bound: the item comes next.
class Scaler:
    def __init__(self, factor: float) -> None:
        self.factor = factor

    @parallel
    def scale(self, x: int, *, offset: float = 0.0) -> float:
        return x * self.factor + offset

    @parallel
    def halve(self, x: int) -> float:
        return x / 2

    @parallel
    @classmethod
    def label(cls, x: int) -> str:
        return f"{cls.__name__}{x}"

    @staticmethod
    @parallel
    def double(x: int) -> int:
        return 2 * x

    @parallel
    @staticmethod
    def triple(x: int) -> int:
        return 3 * x


scaler = Scaler(2.0)
assert_type(scaler.halve, ParallelFunction[int, [], float])
assert_type(Scaler.halve([scaler], [1]), list[float])  # unbound on the class: instances zipped
assert_type(scaler.scale([1, 2]), list[float])
assert_type(scaler.scale([1, 2], offset=1.0), list[float])
assert_type(scaler.scale.imap(range(3)), Iterator[float])
assert_type(scaler.scale.options(workers=2)([1]), list[float])
assert_type(scaler.scale.__wrapped__(1), float)
assert_type(Scaler.label([1]), list[str])
assert_type(scaler.label.imap([1]), Iterator[str])
assert_type(Scaler.double([1]), list[int])
assert_type(scaler.triple([1]), list[int])
scaler.scale(["a"])  # type: ignore[list-item]
Scaler.label(["a"])  # type: ignore[list-item]


# -- the drop-in faces and asyncio ------------------------------------------------------------


async def faces() -> None:
    with Pool(2) as pool:
        assert_type(pool.map(length, ["a"]), list[int])
        assert_type(pool.apply(length, ("a",)), int)
        assert_type(pool.apply_async(length, ("a",)).get(1.0), int)
        assert_type(pool.map_async(length, ["a"]).get(), list[int])
        assert_type(next(pool.imap_unordered(length, ["a"])), int)
    with Executor(2) as executor:
        assert_type(executor.submit(length, "a"), concurrent.futures.Future[int])
        assert_type(list(executor.map(length, ["a"], buffersize=2)), list[int])
    assert_type(await apmap(length, ["a"], workers=2), list[int])
    assert_type(await apmap(add, [1], [2]), list[int])
    assert_type([x async for x in aimap(length, ["a"])], list[int])
    assert_type(await shout.amap(["a"]), list[str])
    assert_type([x async for x in shout.aimap(["a"])], list[str])
    await apmap(length, ["a"], wokers=2)  # type: ignore[call-overload]
