"""Atomic file writes: a result or checkpoint either appears whole or not at all.

Everything is written to a temporary file in the destination folder, flushed, then moved into place
with `os.replace` (atomic on POSIX and Windows within one filesystem). An interrupted run leaves at
most a stray `.tmp-*` file, never a truncated result. Files get the mode the user's umask gives a
new file (`mkstemp` alone would leave them readable by their owner only).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from oodbench.errors import OodbenchError


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it onto `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` and move the result onto `path` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_arrays(path: str | Path, arrays: dict[str, Any]) -> Path:
    """numpy arrays by name into one .npz file (read back with `np.load(path, allow_pickle=False)`)."""
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(handle, **{name: np.asarray(value) for name, value in arrays.items()})

    return write_with(path, save)


def check_writable(folder: str | Path, option: str) -> Path:
    """Make sure `folder` can be created and written before any work starts; a one-line error naming
    the path and the option that chose it otherwise (nothing is left behind either way)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        where = exc.filename or folder
        raise OodbenchError(f"cannot write to {where} ({reason}); pass a writable folder as {option}") from None
    return folder
