"""Every Python example in README.md runs, in order, against the staged data (the README's promise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(tmp_path, staged_root, monkeypatch, capsys):
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python examples"
    monkeypatch.chdir(tmp_path)  # the examples write runs/ where they run
    monkeypatch.setenv("OODBENCH_DATA", str(staged_root))
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert re.search(r"AUROC 0\.\d{3}: test \d+\.\d\d vs MNIST \d+\.\d\d bits/dim", out), out
    assert "'auroc': 0.888" in out and "flags" in out
    assert namespace["run"].model == "glow" and namespace["gate"].n_in == 10_000
