"""README.md says, beside "Two commands", how to put `oodbench` on PATH outside `make`, and its snippet
works: run in a shell whose PATH has no `oodbench`, it finds the command and prints what the README says."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _path_snippet() -> str:
    """The ```bash block between "## Two commands" and the next section that activates .venv."""
    text = README.read_text()
    section = text[text.index("## Two commands"):text.index("\n## ", text.index("## Two commands") + 1)]
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S) if "source .venv/bin/activate" in b]
    assert blocks, "the 'Two commands' section says how to put oodbench on PATH outside make"
    return blocks[0]


def test_the_readme_says_how_to_put_oodbench_on_path_and_it_works():
    snippet = _path_snippet()
    section = README.read_text().split("## Commands")[0]
    assert "pip install -e ." in section and "pipx install ." in section, "and how to install it elsewhere"
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv here (`make install` makes it)")
    expected = [line.split("#", 1)[1].strip() for line in snippet.splitlines() if line.startswith("oodbench ")]
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != Path(venv_bin))
    env = {**os.environ, "PATH": path}
    env.pop("VIRTUAL_ENV", None)
    if subprocess.run(["bash", "-c", "command -v oodbench"], env=env, cwd=ROOT, capture_output=True).returncode == 0:
        pytest.skip("an oodbench outside .venv is on PATH already: the snippet could not show it works")
    result = subprocess.run(["bash", "-euc", snippet], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected, "the README's comments show what the commands print"
