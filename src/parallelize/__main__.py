"""The command line: ``python -m parallelize demo`` and ``python -m parallelize bench``.

``demo`` maps a CPU-bound function over a few hundred items with a progress bar and prints the
speed-up over a plain loop, with a note when the machine was too busy for that speed-up to mean
anything (its processes got too little of a CPU while they ran); ``bench`` times a plain loop,
parallelize and ``multiprocessing.Pool`` on a tiny and a CPU-bound workload and prints the
ratios. Both need nothing but the package.

Exit codes: 0 success, 1 a check failed (results differ) or stdout was closed, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import timeit
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Final, TypeVar, cast

from . import __version__, imap, pmap, shared_counter
from ._cpu import usable_cpus
from ._options import ENV_WORKERS, StartMethod, default_start_method

R = TypeVar("R")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2  # what argparse itself uses for a bad command line
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as shells report it

# Demo defaults: 300 items of ~6 ms each is ~2 s of serial work on a current core, so the whole
# demo (map + loop) takes ~3 s on 2 cores while each item is far above the per-item overhead.
DEMO_ITEMS: Final = 300
DEMO_SIZE: Final = 5_000
# Bench defaults: the tiny workload is overhead-bound (a multiplication per item), the CPU-bound
# one is ~1 s of serial work in items of ~5 ms; best of 3 hides a cold cache or a noisy neighbour.
BENCH_TINY_ITEMS: Final = 100_000
BENCH_CPU_ITEMS: Final = 200
BENCH_REPEAT: Final = 3
# Calls per latency figure (medians), and operations per counter timing.
BENCH_CALLS: Final = 40
BENCH_COUNTER_OPS: Final = 100_000
# Processes incrementing one counter at once, and the increments each makes.
BENCH_CONTENDING: Final = (2, 4)
BENCH_CONTENDED_OPS: Final = 50_000
# Fresh interpreters per tool for the cold first map.
BENCH_COLD_RUNS: Final = 3
# A CPU-bound item running alone on a core gets ~97-100% of it (its wall time is its CPU time).
# Below 80%, the demo's processes waited for a CPU a fifth of the time or more: other programs
# were competing for the cores, and the speed-up measures them as much as it measures parallelize.
BUSY_CPU_SHARE: Final = 0.8


# -- workloads ---------------------------------------------------------------------------------
# Module-level, so that multiprocessing.Pool (which pickles functions by reference) can find them.


def count_primes(block: int, size: int = DEMO_SIZE) -> int:
    """The number of primes in ``[block * size, (block + 1) * size)``, by trial division.

    Later blocks hold bigger numbers and take longer, so the items are uneven, like real work.

    >>> count_primes(0, 100), count_primes(1, 100)
    (25, 21)
    """
    found = 0
    for n in range(max(2, block * size), (block + 1) * size):
        if n % 2 == 0:
            found += n == 2
            continue
        for divisor in range(3, math.isqrt(n) + 1, 2):
            if n % divisor == 0:
                break
        else:
            found += 1
    return found


def timed_count_primes(block: int, size: int = DEMO_SIZE) -> tuple[int, float, float]:
    """``count_primes(block, size)``, with the CPU seconds and the wall seconds it took.

    An item that got a core to itself took as much CPU time as wall time; one that waited for a
    CPU (a busy machine) took more wall time than CPU time.

    >>> count, cpu, wall = timed_count_primes(0, 100)
    >>> count, 0 <= cpu, 0 <= wall
    (25, True, True)
    """
    cpu, wall = time.thread_time(), time.perf_counter()
    count = count_primes(block, size)
    return count, time.thread_time() - cpu, time.perf_counter() - wall


def square(x: int) -> int:
    """The tiny workload: so little work that only the overhead of a map is measured."""
    return x * x


def contend(kind: str, target: Any, ops: int, ready: Any, spans: Any) -> None:
    """In one of several processes: ``ops`` increments of ``target`` (a ``shared_counter``, or a
    ``multiprocessing.Value`` under its lock) once all are ready; puts the nanoseconds taken."""
    if kind == "shared_counter":
        step = target.increment
    else:
        lock = target.get_lock()

        def step() -> None:
            with lock:
                target.value += 1

    step()  # the first use maps the counter
    ready.wait()
    began = time.perf_counter_ns()
    for _ in range(ops):
        step()
    spans.put(time.perf_counter_ns() - began)


def _workloads() -> ModuleType:
    """This module under its importable name, so its functions pickle by reference.

    Run as ``python -m parallelize`` it is ``__main__``, which a ``spawn`` or ``forkserver``
    worker of the stdlib pool cannot always import by that name.
    """
    if __name__ != "__main__":
        return sys.modules[__name__]
    return importlib.import_module("parallelize.__main__")


# -- demo --------------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """Map ``count_primes`` over ``args.items`` blocks in parallel, then in a loop; compare.

    The items measure the CPU time they got, so the demo can tell when the machine was too busy
    for its speed-up to say anything about parallelize (see ``busy_note``).
    """
    work = _workloads()
    blocks = list(range(args.items))
    print(
        f"parallelize {__version__} demo: counting primes in {args.items} blocks of "
        f"{args.size:,} numbers on {args.workers} worker(s) ({args.backend} backend)"
    )
    started = time.perf_counter()
    timed = pmap(
        _bind_size(work.timed_count_primes, args.size),
        blocks,
        workers=args.workers,
        backend=args.backend,
        progress=False if args.no_progress else "parallelize",
    )
    parallel_seconds = time.perf_counter() - started
    print(f"  parallelize: {parallel_seconds:7.2f} s")
    func = _bind_size(work.count_primes, args.size)
    started, started_cpu = time.perf_counter(), time.process_time()
    serial = [func(block) for block in blocks]
    serial_seconds = time.perf_counter() - started
    serial_cpu = time.process_time() - started_cpu
    print(f"  serial loop: {serial_seconds:7.2f} s")
    if [count for count, _, _ in timed] != serial:
        print("error: the parallel results differ from the serial ones", file=sys.stderr)
        return EXIT_FAILED
    speedup = serial_seconds / parallel_seconds
    cpus = usable_cpus()
    print(
        f"  speed-up:    {speedup:7.2f}x with {args.workers} worker(s) "
        f"on {cpus} usable CPU(s); {sum(serial):,} primes found"
    )
    # On threads, items of pure Python wait for the GIL, not for a CPU: their share says nothing
    # about the machine.
    item_share = (
        None
        if args.backend == "thread"
        else _share(sum(cpu for _, cpu, _ in timed), sum(wall for _, _, wall in timed))
    )
    note = busy_note(
        item_share=item_share,
        loop_share=_share(serial_cpu, serial_seconds),
        workers=args.workers if args.backend == "process" else 1,
        cpus=cpus,
        load=_load_average(),
    )
    if note:
        print(textwrap.fill(note, width=96, initial_indent="  ", subsequent_indent="  "))
    return EXIT_OK


def _share(cpu_seconds: float, wall_seconds: float) -> float | None:
    """The fraction of a CPU that work got while it ran, or None when it was too short to say."""
    # Below 10 ms of wall time the clocks' granularity and a single context switch dominate.
    if wall_seconds < 0.01:
        return None
    return min(1.0, cpu_seconds / wall_seconds)


def _load_average() -> float | None:
    """The 1-minute load average (runnable processes, ours included), where the OS has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_note(
    *,
    item_share: float | None,
    loop_share: float | None,
    workers: int,
    cpus: int,
    load: float | None,
) -> str | None:
    """What to say about a speed-up measured on a busy machine, or None when it was quiet.

    ``item_share`` is the fraction of a CPU the mapped items got while they ran, ``loop_share``
    the same for the serial loop. With more workers than CPUs the workers share the cores by
    design, so the items' share is judged against ``cpus / workers``.

    >>> busy_note(item_share=0.99, loop_share=0.98, workers=2, cpus=2, load=2.1) is None
    True
    >>> print(busy_note(item_share=0.55, loop_share=0.97, workers=2, cpus=2, load=3.9))
    note: this machine was busy: the mapped items got 55% of a CPU each while they ran (load average
    3.9 on 2 usable CPU(s)), so the speed-up measures the other programs running here as much as
    parallelize. Run the demo again when the machine is quieter.
    >>> busy_note(item_share=0.45, loop_share=0.97, workers=4, cpus=2, load=4.0) is None
    True
    """
    expected = min(1.0, cpus / max(1, workers))
    starved = []
    if item_share is not None and item_share < BUSY_CPU_SHARE * expected:
        each = " each" if workers > 1 else ""
        starved.append(f"the mapped items got {item_share:.0%} of a CPU{each} while they ran")
    if loop_share is not None and loop_share < BUSY_CPU_SHARE:
        starved.append(f"the serial loop got {loop_share:.0%} of a CPU")
    if not starved:
        return None
    where = f" (load average {load:.1f} on {cpus} usable CPU(s))" if load is not None else ""
    return (
        f"note: this machine was busy: {' and '.join(starved)}{where}, so the speed-up measures "
        "the other programs running here as much as parallelize. Run the demo again when the "
        "machine is quieter."
    )


def _bind_size(fn: Callable[..., R], size: int) -> Callable[[int], R]:
    return functools.partial(fn, size=size)


# -- bench -------------------------------------------------------------------------------------


def _best(
    repeat: int, run: Callable[..., object], *args: Any, **kwargs: Any
) -> tuple[float, object]:
    """The shortest of ``repeat`` timed calls of ``run(*args, **kwargs)``, and its result."""
    best = math.inf
    result: object = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run(*args, **kwargs)
        best = min(best, time.perf_counter() - started)
    return best, result


def _loop(fn: Callable[[int], int], items: list[int]) -> list[int]:
    return [fn(item) for item in items]


def _machine() -> dict[str, Any]:
    """Where and when a bench ran: its figures are only comparable on one machine."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "usable_cpus": usable_cpus(),
    }


def _median_ms(calls: int, call: Callable[[int], object]) -> float:
    """The median milliseconds of ``call(n)`` for n in ``range(calls)``."""
    times = []
    for n in range(calls):
        started = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def _latency(work: ModuleType, pool: Any, workers: int, method: StartMethod) -> dict[str, Any]:
    """A warm 2-item call, and maps that change their configuration or run inside an imap
    loop (each against the plain warm call)."""

    def call(count: int = workers) -> object:
        return pmap(work.square, [1, 2], workers=count, start_method=method)

    plain = _median_ms(BENCH_CALLS, lambda n: call())
    pool_ms = _median_ms(BENCH_CALLS, lambda n: pool.map(work.square, [1, 2]))
    sizes = (workers, max(1, workers - 1)) if workers > 1 else (1, 2)
    alternating = _median_ms(BENCH_CALLS, lambda n: call(sizes[n % 2]))
    outer = imap(work.square, range(BENCH_CALLS), workers=workers, start_method=method)
    with contextlib.closing(outer):  # type: ignore[type-var]
        nested = [_median_ms(1, lambda n: call()) for _ in outer]
    return {
        "warm_call_ms": plain,
        "pool_warm_call_ms": pool_ms,
        "alternating_workers_ms": alternating,
        "inside_imap_ms": statistics.median(nested),
    }


def _counter() -> dict[str, float]:
    """Nanoseconds per uncontended increment and per read, ours and multiprocessing.Value's."""
    ours = shared_counter(0)
    theirs = multiprocessing.Value("q", 0)

    def their_increment() -> None:
        with theirs.get_lock():
            theirs.value += 1

    def per_op(op: Callable[[], object]) -> float:
        return min(timeit.repeat(op, number=BENCH_COUNTER_OPS, repeat=3)) / BENCH_COUNTER_OPS * 1e9

    return {
        "increment_ns": per_op(ours.increment),
        "mp_value_increment_ns": per_op(their_increment),
        "read_ns": per_op(lambda: ours.value),
        "mp_value_read_ns": per_op(lambda: theirs.value),
    }


def _contention(work: ModuleType, context: Any, workers: int) -> dict[str, float]:
    """Nanoseconds of wall time per increment with ``workers`` processes incrementing one
    counter at once, ours and a locked ``multiprocessing.Value``'s; each count is checked."""
    result = {}
    for kind, target in (
        ("shared_counter", shared_counter(0)),
        ("mp_value", context.Value("q", 0)),
    ):
        ready, spans = context.Barrier(workers), context.Queue()
        job = (kind, target, BENCH_CONTENDED_OPS, ready, spans)
        processes = [context.Process(target=work.contend, args=job) for _ in range(workers)]
        for process in processes:
            process.start()
        taken = [spans.get(timeout=300) for _ in processes]
        for process in processes:
            process.join()
        if target.value != workers * (BENCH_CONTENDED_OPS + 1):
            raise RuntimeError(f"{kind} lost increments: {target.value}")
        result[kind] = max(taken) / (BENCH_CONTENDED_OPS * workers)
    return result


# A fresh interpreter's first map, its imports done: parallelize's or the stdlib pool's.
_COLD = """
import multiprocessing, sys, time
from parallelize import pmap
from parallelize.__main__ import square
tool, workers, method = sys.argv[1], int(sys.argv[2]), sys.argv[3]
began = time.perf_counter()
if tool == "parallelize":
    pmap(square, [1, 2], workers=workers, start_method=method)
else:
    with multiprocessing.get_context(method).Pool(workers) as pool:
        pool.map(square, [1, 2])
print((time.perf_counter() - began) * 1e3)
"""


def _cold(workers: int, method: str) -> dict[str, float]:
    """Median milliseconds of a fresh interpreter's first 2-item map, pool start included,
    ours and the stdlib pool's, run in turn."""
    times: dict[str, list[float]] = {"parallelize": [], "pool": []}
    for _ in range(BENCH_COLD_RUNS):
        for tool, samples in times.items():
            done = subprocess.run(
                [sys.executable, "-c", _COLD, tool, str(workers), method],
                capture_output=True, text=True, timeout=120, check=True,
            )  # fmt: skip
            samples.append(float(done.stdout.split()[-1]))
    return {
        "cold_first_map_ms": statistics.median(times["parallelize"]),
        "pool_cold_first_map_ms": statistics.median(times["pool"]),
    }


def bench(args: argparse.Namespace) -> int:
    """Time a loop, parallelize and the stdlib pool on two workloads; print the ratios."""
    work = _workloads()
    cpu_fn = _bind_size(work.count_primes, args.size)
    workloads: list[tuple[str, Callable[[int], int], list[int]]] = [
        ("tiny (x * x)", work.square, list(range(args.tiny_items))),
        ("cpu-bound (primes)", cpu_fn, list(range(args.cpu_items))),
    ]
    start_method = args.start_method or default_start_method()
    machine = _machine()
    if not args.json:
        print(
            f"parallelize {__version__} bench, {machine['date']}: Python {machine['python']} on "
            f"{machine['platform']} ({machine['processor']}), {machine['usable_cpus']} usable "
            f"CPU(s)"
        )
        print(
            f"{args.workers} worker(s), start method {start_method}; warm pools, best of "
            f"{args.repeat}"
        )
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context(start_method)
    with context.Pool(args.workers) as pool:
        pool.map(work.square, range(args.workers))  # start the workers before timing
        pmap(work.square, range(args.workers), workers=args.workers, start_method=start_method)
        for name, fn, items in workloads:
            serial_s, expected = _best(args.repeat, _loop, fn, items)
            ours_s, ours = _best(
                args.repeat, pmap, fn, items, workers=args.workers, start_method=start_method
            )
            pool_s, theirs = _best(args.repeat, pool.map, fn, items)
            if not expected == ours == theirs:
                print(f"error: results differ on the {name} workload", file=sys.stderr)
                return EXIT_FAILED
            rows.append(
                {
                    "workload": name,
                    "items": len(items),
                    "serial_s": serial_s,
                    "parallelize_s": ours_s,
                    "pool_s": pool_s,
                    "speedup_vs_serial": serial_s / ours_s,
                    "speedup_vs_pool": pool_s / ours_s,
                }
            )
        latency = _latency(work, pool, args.workers, cast(StartMethod, start_method))
    cold = _cold(args.workers, start_method)
    try:
        counter = _counter()
        contention = {str(count): _contention(work, context, count) for count in BENCH_CONTENDING}
    except OSError:  # no /dev/shm (macOS): no counter rows
        counter, contention = {}, {}
    if args.json:
        report = {
            "workers": args.workers, "start_method": start_method, "machine": machine,
            "rows": rows, "latency": latency, "cold": cold, "counter": counter,
            "contention": contention,
        }  # fmt: skip
        print(json.dumps(report))
        return EXIT_OK
    header = (
        f"{'workload':<20} {'items':>7} {'serial':>9} {'parallelize':>12} {'Pool.map':>9}"
        f" {'vs serial':>10} {'vs Pool':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['workload']:<20} {row['items']:>7} {row['serial_s']:>8.3f}s"
            f" {row['parallelize_s']:>11.3f}s {row['pool_s']:>8.3f}s"
            f" {row['speedup_vs_serial']:>9.2f}x {row['speedup_vs_pool']:>7.2f}x"
        )
    print("(ratios above 1 mean parallelize is faster)")
    print()
    print(f"medians of {BENCH_CALLS} calls:")
    warm = latency["warm_call_ms"]
    print(
        f"warm 2-item call        {warm:8.3f} ms   Pool.map {latency['pool_warm_call_ms']:.3f} ms"
    )
    for key, label in (
        ("alternating_workers_ms", "workers= alternating"),
        ("inside_imap_ms", "a pmap inside an imap"),
    ):
        print(f"{label:<23} {latency[key]:8.3f} ms   {latency[key] / warm:.2f}x the warm call")
    print(
        f"cold first 2-item map   {cold['cold_first_map_ms']:8.1f} ms   Pool "
        f"{cold['pool_cold_first_map_ms']:.1f} ms (a fresh interpreter each, median of "
        f"{BENCH_COLD_RUNS})"
    )
    if not counter:
        return EXIT_OK
    print()
    print(
        f"shared_counter increment {counter['increment_ns']:7.0f} ns   multiprocessing.Value "
        f"{counter['mp_value_increment_ns']:.0f} ns"
    )
    print(
        f"shared_counter .value    {counter['read_ns']:7.0f} ns   multiprocessing.Value "
        f"{counter['mp_value_read_ns']:.0f} ns"
    )
    for count, ns in contention.items():
        print(
            f"increment, {count} at once    {ns['shared_counter']:7.0f} ns   "
            f"multiprocessing.Value {ns['mp_value']:.0f} ns (processes contending)"
        )
    print()
    print("The peers' three workloads (NumPy): benchmarks/bench_peers.py in the repository.")
    return EXIT_OK


# -- the command line --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _default_workers() -> int:
    """``PARALLELIZE_WORKERS`` when it is a valid count, else the usable CPUs, as a map would."""
    raw = os.environ.get(ENV_WORKERS, "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else usable_cpus()


def build_parser() -> argparse.ArgumentParser:
    """The ``parallelize`` argument parser, with the ``demo`` and ``bench`` commands."""
    parser = argparse.ArgumentParser(
        prog="python -m parallelize",
        description="Run a one-item function over many items on every core.",
        epilog="Documentation: see the docs/ folder or the project site.",
    )
    parser.add_argument("--version", action="version", version=f"parallelize {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    workers = _default_workers()
    demo_parser = commands.add_parser(
        "demo",
        help="map a CPU-bound function with a progress bar and show the speed-up",
        description="Count primes in many blocks of numbers, first with parallelize (with a "
        "progress bar on stderr), then with a plain loop, and print the speed-up.",
    )
    demo_parser.add_argument(
        "--items", type=_positive_int, default=DEMO_ITEMS, help="number of items (%(default)s)"
    )
    demo_parser.add_argument(
        "--size", type=_positive_int, default=DEMO_SIZE, help="numbers per item (%(default)s)"
    )
    demo_parser.add_argument(
        "--workers", type=_positive_int, default=workers, help="workers (default: %(default)s)"
    )
    demo_parser.add_argument(
        "--backend",
        choices=("process", "thread", "interpreters", "serial"),
        default="process",
        help="backend (%(default)s)",
    )
    demo_parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo_parser.set_defaults(run=demo)

    bench_parser = commands.add_parser(
        "bench",
        help="time a loop, parallelize and multiprocessing.Pool on this machine",
        description="Time a plain loop, parallelize and multiprocessing.Pool.map on a tiny and a "
        "CPU-bound workload (warm pools, best of --repeat runs) and print the ratios.",
    )
    bench_parser.add_argument(
        "--tiny-items",
        type=_positive_int,
        default=BENCH_TINY_ITEMS,
        help="items of the tiny workload (%(default)s)",
    )
    bench_parser.add_argument(
        "--cpu-items",
        type=_positive_int,
        default=BENCH_CPU_ITEMS,
        help="items of the CPU-bound workload (%(default)s)",
    )
    bench_parser.add_argument(
        "--size", type=_positive_int, default=DEMO_SIZE, help="numbers per CPU-bound item"
    )
    bench_parser.add_argument(
        "--repeat", type=_positive_int, default=BENCH_REPEAT, help="runs per timing (%(default)s)"
    )
    bench_parser.add_argument(
        "--workers", type=_positive_int, default=workers, help="workers (default: %(default)s)"
    )
    bench_parser.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        default=None,
        help=f"start method for both pools (default: {default_start_method()})",
    )
    bench_parser.add_argument("--json", action="store_true", help="print the results as JSON")
    bench_parser.set_defaults(run=bench)

    checkpoint_parser = commands.add_parser(
        "checkpoint",
        help="show what a map's checkpoint file holds",
        description="Print the function a checkpoint file belongs to, its items done, failed "
        "and in all (when the map's input had a length), and when it was created and updated.",
    )
    checkpoint_parser.add_argument("path", help="the checkpoint file")
    checkpoint_parser.add_argument("--json", action="store_true", help="print it as JSON")
    checkpoint_parser.set_defaults(run=show_checkpoint)
    return parser


def show_checkpoint(args: argparse.Namespace) -> int:
    """``python -m parallelize checkpoint PATH [--json]``."""
    from ._checkpoint import summary
    from ._errors import CheckpointError

    try:
        info = summary(args.path)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(info))
        return 0
    total = "unknown" if info["total"] is None else info["total"]
    print(f"checkpoint  {info['path']}")
    print(f"function    {info['function']}")
    print(f"items       {info['done']} done, {info['failed']} failed, {total} in all")
    print(f"created     {info['created']}")
    print(f"updated     {info['updated']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as the docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
