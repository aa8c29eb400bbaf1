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


USER_CACHE = Path.home() / ".cache" / "oodbench"


def _listing(folder: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")} if folder.is_dir() else set()


@pytest.fixture(scope="session", autouse=True)
def _private_tensor_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point OODBENCH_CACHE (and the default data root) at per-session folders: tests share decodes and
    never write to the user's ~/.cache/oodbench, which is checked when the session ends."""
    before = _listing(USER_CACHE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OODBENCH_CACHE", str(tmp_path_factory.mktemp("oodbench-cache")))
        patch.setenv("OODBENCH_DATA", str(tmp_path_factory.mktemp("no-default-data")))
        yield
    written = sorted(_listing(USER_CACHE) - before)
    assert not written, f"tests wrote into {USER_CACHE}: {written[:5]}"


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
