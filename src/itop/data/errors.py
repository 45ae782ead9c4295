"""The one exception a user sees for data problems.

Missing or corrupt dataset files are user mistakes, not bugs, so they surface as a
single-line `DataError` (a `ValueError`, so callers that already catch bad input keep
working) that names the file and what to do, instead of a deep traceback.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A dataset file is missing, unreadable or not in the expected format."""
