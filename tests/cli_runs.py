"""Running the CLI in-process in tests: exit code, stdout, stderr."""

from __future__ import annotations

import pytest

from oodbench.cli import main


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
