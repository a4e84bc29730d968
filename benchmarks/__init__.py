"""The parallelize benchmark suite: every workload of issue 5 on parallelize and its anchors.

Run ``python -m benchmarks`` from the repository root (see ``docs/benchmarks.md``).
"""
