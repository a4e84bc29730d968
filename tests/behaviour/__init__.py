"""The behaviour suite: the contract every backend keeps, written once and run on each of them.

The backends and start methods it runs on are one list, ``BACKENDS`` in ``conftest.py``. The cells
use the public API only (``import parallelize``), never its private modules.
"""
