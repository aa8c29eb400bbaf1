"""Fixtures shared by every test: the staged real datasets, and a private tensor cache."""

from __future__ import annotations

from pathlib import Path

import pytest

# /work/shared/data beside the repository: real datasets staged read-only (see its README.md).
STAGED_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def staged_root() -> Path:
    """The staged real data. CI always has it, so a missing folder fails loudly instead of skipping."""
    return STAGED_ROOT


@pytest.fixture(scope="session", autouse=True)
def _private_tensor_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point OODBENCH_CACHE at a per-session folder: tests never write to ~/.cache, and share decodes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OODBENCH_CACHE", str(tmp_path_factory.mktemp("oodbench-cache")))
        yield
