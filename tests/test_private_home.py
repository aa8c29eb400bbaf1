"""The suite's private home (tests/conftest.py): every folder oodbench and its libraries default to
resolves inside the session's temporary home, in the test process and in a process a test starts. So
nothing the tests write can land in the user's ~/.cache, and nothing another process writes there (a
running `oodbench demo`) can fail the suite.

Run as a script, this file prints `default_folders()` as JSON: what the child process sees.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path


def default_folders() -> dict[str, str]:
    """The home, oodbench's data root and tensor cache (no --data-root, no override), matplotlib's config
    and cache (its font list), torch hub's folder."""
    import matplotlib
    import torch.hub

    from oodbench.data import cache_dir
    from oodbench.data.loading import resolve_root

    return {
        "home": str(Path.home()),
        "oodbench data root": str(resolve_root(None)),
        "oodbench tensor cache": str(cache_dir()),
        "matplotlib config": matplotlib.get_configdir(),
        "matplotlib cache": matplotlib.get_cachedir(),
        "torch hub": torch.hub.get_dir(),
    }


def outside(folders: dict[str, str], home: Path) -> dict[str, str]:
    return {what: path for what, path in folders.items() if not Path(path).resolve().is_relative_to(home)}


def test_the_private_home_is_not_the_users(private_home):
    users = Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()  # the account's home, whatever HOME says
    assert not private_home.is_relative_to(users) and not users.is_relative_to(private_home)


def test_default_folders_resolve_inside_the_private_home(private_home):
    folders = default_folders()
    assert folders["home"] == str(private_home)
    assert not outside(folders, private_home)


def test_a_process_a_test_starts_has_the_same_private_home(private_home, tmp_path):
    done = subprocess.run([sys.executable, __file__], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    folders = json.loads(done.stdout.strip().splitlines()[-1])
    assert folders["home"] == str(private_home)
    assert not outside(folders, private_home)


if __name__ == "__main__":
    print(json.dumps(default_folders()))
