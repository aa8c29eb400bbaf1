"""Fixtures shared by every test: the staged real datasets, a private home, and one-thread tensors.

The session runs with a home of its own, a temporary folder: HOME, the XDG folders, matplotlib's and
torch's folders point into it, and OODBENCH_CACHE / OODBENCH_DATA are unset, so oodbench's own defaults
(~/.cache/oodbench for data, ~/.cache/oodbench/tensors for decoded splits) land there as well. It is set
in `pytest_configure`, before any test module is imported (collecting them imports torch and matplotlib,
which look up their folders then), and every process a test starts inherits it. So the tests neither
read nor write the user's ~/.cache, and another process writing there (a running `oodbench demo`) cannot
fail them; tests/test_private_home.py checks that every default folder resolves inside this home, in
this process and in a child.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

# /work/shared/data beside the repository: real datasets staged read-only (see its README.md).
STAGED_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Environment variables that name a folder under the user's home -> where each points inside the private one.
HOME_FOLDERS = {
    "HOME": ".",
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
    "MPLCONFIGDIR": ".config/matplotlib",
    "TORCH_HOME": ".cache/torch",
}
# oodbench's own overrides: unset, so that what the tests exercise is its defaults under HOME.
PRODUCT_OVERRIDES = ("OODBENCH_CACHE", "OODBENCH_DATA")

_HOME = pytest.StashKey[Path]()
_ENVIRONMENT = pytest.StashKey[pytest.MonkeyPatch]()


def pytest_configure(config: pytest.Config) -> None:
    home = Path(tempfile.mkdtemp(prefix="oodbench-tests-home-")).resolve()
    environment = pytest.MonkeyPatch()
    for variable, below in HOME_FOLDERS.items():
        environment.setenv(variable, str((home / below).resolve()))
    for variable in PRODUCT_OVERRIDES:
        environment.delenv(variable, raising=False)
    config.stash[_HOME] = home
    config.stash[_ENVIRONMENT] = environment


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ENVIRONMENT in config.stash:
        config.stash[_ENVIRONMENT].undo()
        shutil.rmtree(config.stash[_HOME], ignore_errors=True)


@pytest.fixture(scope="session")
def private_home(pytestconfig: pytest.Config) -> Path:
    """The session's home (HOME): every default folder of oodbench and its libraries is inside it."""
    return pytestconfig.stash[_HOME]


@pytest.fixture(scope="session")
def staged_root() -> Path:
    """The staged real data. CI always has it, so a missing folder fails loudly instead of skipping."""
    return STAGED_ROOT


@pytest.fixture
def one_thread():
    """Tiny tensors on one thread: threads gain nothing at these shapes, and on a shared CPU every oneDNN
    call's thread barrier can wait out another process's time slice (a tiny forward: ~8 ms on one thread,
    ~0.7 s on two). Folders of such tests make it autouse in their conftest.py."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
