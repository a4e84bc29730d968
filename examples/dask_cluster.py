"""Run a map on a Dask cluster: the same call, with ``backend="dask"``.

    python examples/dask_cluster.py                        # starts a LocalCluster of 2 workers
    python examples/dask_cluster.py --address tcp://scheduler:8786   # an existing cluster
    python examples/dask_cluster.py --small

Needs the dask extra: ``pip install "parallelize[dask]"``. Without it, the example says so and
exits with status 0. On a real cluster, the function is shipped to the workers by value, so it
need not be installed there; the packages it imports must be.
"""

from __future__ import annotations

import argparse
import sys

from parallelize import pmap


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="scheduler address of an existing cluster")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--small", action="store_true", help="a quick run on a local cluster")
    args = parser.parse_args(argv)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        print('skipped: this example needs dask: pip install "parallelize[dask]"')
        return 0
    if args.small:
        args.items = 5_000
    numbers = range(1, args.items + 1)
    if args.address:
        steps = pmap(collatz_steps, numbers, backend="dask", address=args.address)
    else:
        # processes=True: real worker processes, as on a cluster; dashboard on a free port.
        # The backend uses the current Client, so maps run on this cluster until it closes.
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
        ):
            steps = pmap(collatz_steps, numbers, backend="dask", progress="on dask")
    longest = max(numbers, key=lambda n: steps[n - 1])
    print(f"{longest} takes the most steps below {args.items + 1}: {steps[longest - 1]}")
    if args.small:
        assert steps == [collatz_steps(n) for n in numbers]
    return 0


if __name__ == "__main__":
    sys.exit(main())
