"""The exception types every layer raises and the CLI turns into one line and an exit code.

- `OodbenchError`: an expected failure (bad input, missing data, corrupt or unsafe files); exit code
  2 unless a subclass says otherwise. Messages say what was wrong and what to do about it.
- `Interrupted`: SIGINT or SIGTERM arrived (Ctrl-C, `kill`, `timeout`, a scheduler, `docker stop`). It
  is a BaseException, so no `except Exception` on the way swallows it, and Lightning re-raises it after
  its teardown instead of turning it into an exit code of its own. The runner that was interrupted
  fills in `detail` (what was kept, how to resume); the CLI exits 128 + the signal number.
"""

from __future__ import annotations

import signal


class OodbenchError(Exception):
    """A user-facing error: bad input, missing data or files. Exit code 2, no traceback."""

    exit_code = 2


class Interrupted(BaseException):
    """A signal asked the process to stop; raised from the signal handler (see `cli.main`)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}" + (f": {self.detail}" if self.detail else "")
