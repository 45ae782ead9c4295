"""The one exception a user sees for data problems.

Missing or corrupt dataset files are user mistakes, not bugs, so they surface as a
single-line `DataError` (a `ValueError`, so callers that already catch bad input keep
working) that names the file and what to do, instead of a deep traceback. Messages for
missing data end with `EMBEDDED_DATA_HINT`: the embedded digits train without any file.
"""

from __future__ import annotations

__all__ = ["DataError", "EMBEDDED_DATA_HINT"]

EMBEDDED_DATA_HINT = "or train on the 5,000 MNIST digits that come with itop: --data mnist5k"


class DataError(ValueError):
    """A dataset file is missing, unreadable or not in the expected format."""
