"""The one exception type that users see.

Every error caused by the caller's input is a :class:`JaxvisError`. Its message is one
line that says what was wrong and what is valid. The CLI prints it without a traceback.
"""

from __future__ import annotations


class JaxvisError(ValueError):
    """A user-facing error: bad layer, filter, weights file, config or path."""


def choices(values, limit: int = 40) -> str:
    """Formats a list of valid choices for an error message."""
    values = [str(v) for v in values]
    if len(values) > limit:
        values = values[:limit] + [f"... ({len(values) - limit} more)"]
    return ", ".join(values)
