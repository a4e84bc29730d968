"""CPython's Pool tests (processes flavour), installed here by CPython's own installer.

A module of its own, importable by name, so that a spawned worker unpickles the test classes'
own methods (``_TestPool._test_traceback``) by reference, as CPython's
``test_multiprocessing_spawn.test_processes`` does; the start method comes from the runner
(``run_cpython.py``), through the environment the workers inherit.
"""

import os

from test._test_multiprocessing import install_tests_in_module_dict

install_tests_in_module_dict(
    globals(), os.environ["PARALLELIZE_CONFORMANCE_START_METHOD"], only_type="processes"
)
