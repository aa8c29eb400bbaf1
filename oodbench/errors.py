"""The one exception type for expected failures (bad input, missing data, corrupt checkpoints).

The CLI turns an `OodbenchError` into one red line and its `exit_code` (2, bad input, unless a
subclass says otherwise) with no traceback; anything else is an unexpected failure (exit code 1).
Messages say what was wrong and what to do about it.
"""


class OodbenchError(Exception):
    """A user-facing error: bad input, missing data or files. Exit code 2, no traceback."""

    exit_code = 2
