"""The project's own tensor cache: each decoded split stored once as a uint8 tensor file.

Decoding JPEG folders, decompressing idx files or unpickling CIFAR batches happens once; afterwards a
split is one `torch.load(mmap=True)` away (milliseconds, whatever its size). A cache file is
`<cache_dir>/<name>-<split>-<root hash>.pt`, where the hash is of the resolved data root, so two
roots never share an entry. Each entry records a fingerprint (path, size, mtime) of the files it
was built from: if those files change, the entry is rebuilt rather than silently served stale.
It also records the dataset's `recipe` (`DatasetSpec.recipe`: the decode / crop / resize pipeline,
e.g. CelebA's crop box): an entry whose recipe differs from the current one is never served, not
even when the source files are gone, so changing a pipeline rebuilds (overwrites) old entries.
Entries written before recipes existed read as recipe "" (valid only for sets without a recipe).

Entries are written atomically (temporary file in the same folder, then `os.replace`), so an
interrupted run leaves no half-written entry and concurrent runs never read one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from oodbench.atomic import write_with


def cache_dir() -> Path:
    """$OODBENCH_CACHE, else ~/.cache/oodbench/tensors."""
    env = os.environ.get("OODBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "oodbench" / "tensors"


def root_hash(root: Path) -> str:
    return hashlib.sha256(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:12]


def cache_path(name: str, split: str, root: Path) -> Path:
    return cache_dir() / f"{name}-{split}-{root_hash(root)}.pt"


def fingerprint(paths: Iterable[Path]) -> str:
    """A hash of each path's size and modification time: changes when the source files change."""
    digest = hashlib.sha256()
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    images: torch.Tensor  # uint8 (N, C, H, W)
    index: torch.Tensor  # int64 (N,)
    complete: bool  # False when only the first N samples were decoded (a `limit` on a slow source)
    source: str  # where the pixels came from
    fingerprint: str  # of the source files, see `fingerprint`
    recipe: str = ""  # the dataset's recipe when built, see `DatasetSpec.recipe`


def read_entry(path: Path) -> CacheEntry | None:
    """The entry at `path`, or None when it is missing or unreadable (it is then simply rebuilt)."""
    if not path.is_file():
        return None
    try:
        # mmap: a 150 MB split "loads" in milliseconds; pages are read as the batches touch them.
        payload = torch.load(path, mmap=True, weights_only=True)
        entry = CacheEntry(images=payload["images"], index=payload["index"], complete=bool(payload["complete"]),
                           source=str(payload["source"]), fingerprint=str(payload["fingerprint"]),
                           recipe=str(payload.get("recipe", "")))
    except Exception:  # noqa: BLE001 - a truncated or foreign file is a cache miss, not the user's problem
        return None
    if entry.images.dtype != torch.uint8 or entry.index.shape != (entry.images.shape[0],):
        return None
    return entry


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    # torch.save writes a view's whole underlying storage; copy so the file holds just these pixels.
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    return tensor


def write_entry(path: Path, entry: CacheEntry) -> Path:
    payload = {"images": _own_storage(entry.images), "index": _own_storage(entry.index),
               "complete": entry.complete, "source": entry.source, "fingerprint": entry.fingerprint,
               "recipe": entry.recipe}
    return write_with(path, lambda tmp: torch.save(payload, tmp))
