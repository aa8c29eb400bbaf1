"""The one exception type for expected failures (bad input, missing data, corrupt checkpoints).

The CLI turns an `OodbenchError` into one red line and exit code 2; anything else is an unexpected
failure (exit code 1). Messages say what was wrong and what to do about it.
"""


class OodbenchError(Exception):
    """A user-facing error: bad input, missing data or files. Exit code 2, no traceback."""
