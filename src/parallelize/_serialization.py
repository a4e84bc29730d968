"""Names that exceptions pickled by parallelize 0.1.0 refer to, so that such pickles still load.

0.1.0 rebuilt a worker exception that did not survive pickling as a stand-in made by
``parallelize._serialization.standin_by_name``; it lives in :mod:`parallelize._errors` now.
"""

from __future__ import annotations

from ._errors import standin_by_name

__all__ = ["standin_by_name"]
