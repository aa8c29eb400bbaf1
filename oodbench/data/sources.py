"""Where real pixels live on disk, and how to read them in bulk.

A *layout* is a function `(root, split) -> Found | Missing`: it only checks that files exist (so
`dataset_availability` is instant) and, when they do, returns a `Found` whose `read` does the work
and whose `count` says how many images the split has without reading any pixel (`split_counts`):
from a file header, a listing or file names; None when that would mean reading everything.
The layouts here cover files read in bulk:

- `npz_layout`: `<root>/<name>/<split>.npz` with `x` uint8 (N, H, W, C) or (N, H, W), optional `y`
  and `index` (default 0..N-1). The staged CIFAR-10 / SVHN subsets and the embedded demo look so.
  Counted from the `.npy` header of member `x` inside the zip.
- `idx_layout`: torchvision's MNIST-family layout, `<root>/<Class>/raw/*-images-idx3-ubyte[.gz]`,
  read with torchvision's own idx reader. Counted from the 16-byte idx header.
- `cifar_layout`, `svhn_layout`: torchvision's CIFAR folders and SVHN `.mat` files, read with
  torchvision's dataset classes (their `.data` arrays, never item by item). CIFAR is counted per
  batch file (torchvision's md5 check admits only the canonical files), SVHN with `scipy.io.whosmat`.
- `imagenet32_layout`: the official downsampled-ImageNet pickles (Chrabaszcz et al. 2017). Counted
  only in the `.npz` variant (array headers); a pickle must be unpickled whole, so its count is None.

JPEG folders (CelebA, Tiny-ImageNet) are in `folders.py`.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from oodbench.data.cache import cache_dir


@dataclass(frozen=True)
class Pixels:
    """What a reader returns: uint8 (N, C, H, W) at the stored resolution, and canonical indices."""

    images: torch.Tensor
    index: torch.Tensor
    complete: bool = True  # False when the reader stopped early because of a `limit`


def unknown_count() -> int | None:
    return None


@dataclass(frozen=True)
class Found:
    where: str  # human-readable: the file or folder the pixels come from
    files: tuple[Path, ...]  # what the cache fingerprints (files or folders)
    read: Callable[[int | None], Pixels]  # read(limit): limit is a hint slow readers honour
    # count(): the number of images the split has here, read from headers / listings / file names,
    # never from pixels; None when it cannot be known without reading everything. It may raise on a
    # corrupt file (callers such as `split_counts` report that as unknown).
    count: Callable[[], int | None] = field(default=unknown_count, repr=False, compare=False)


@dataclass(frozen=True)
class Missing:
    searched: str  # the path (or pattern) that was looked for, for the "not found" message


Lookup = Found | Missing
Layout = Callable[[Path, str], Lookup]


def from_numpy(x: np.ndarray, index: np.ndarray | None = None) -> Pixels:
    """(N, H, W) or (N, H, W, C) uint8 -> Pixels in (N, C, H, W)."""
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images (N, H, W[, C]), got {x.dtype} {x.shape}")
    images = torch.from_numpy(x)
    images = images.unsqueeze(1) if x.ndim == 3 else images.permute(0, 3, 1, 2)
    if index is None:
        index_t = torch.arange(images.shape[0], dtype=torch.int64)
    else:
        index_t = torch.from_numpy(np.asarray(index, dtype=np.int64).copy())
        if index_t.shape != (images.shape[0],):
            raise ValueError(f"index has shape {tuple(index_t.shape)}, expected ({images.shape[0]},)")
    return Pixels(images.contiguous(), index_t)


def numbered(images: torch.Tensor) -> Pixels:
    """Pixels of a complete split stored in canonical order: index 0..N-1."""
    return Pixels(images.contiguous(), torch.arange(images.shape[0], dtype=torch.int64))


# --- <root>/<name>/<split>.npz ---------------------------------------------------------------------

def read_npz(path: Path) -> Pixels:
    with np.load(path, allow_pickle=False) as archive:
        if "x" not in archive.files:
            raise ValueError(f"no array 'x' (it has {', '.join(archive.files) or 'nothing'})")
        return from_numpy(archive["x"], archive["index"] if "index" in archive.files else None)


def npz_shape(path: Path, member: str = "x") -> tuple[int, ...]:
    """The shape of array `member` in an .npz, from its .npy header: no array data is read.

    np.savez / savez_compressed store each array as `<member>.npy` in a zip; opening the member
    decompresses only the bytes asked for, here the magic string and the header (a few hundred bytes).
    """
    with zipfile.ZipFile(path) as archive, archive.open(f"{member}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _fortran, _dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            # 3.0 differs from 2.0 only in allowing utf-8 in the header (for field names); a shape
            # is ASCII either way, so the 2.0 reader gets it right.
            shape, _fortran, _dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"{path}: unsupported .npy format version {version} for {member!r}")
    return tuple(int(n) for n in shape)


def npz_layout(name: str) -> Layout:
    def find(root: Path, split: str) -> Lookup:
        path = root / name / f"{split}.npz"
        if not path.is_file():
            return Missing(str(path))
        return Found(str(path), (path,), lambda limit: read_npz(path), count=lambda: npz_shape(path)[0])

    return find


# --- torchvision's MNIST family: <root>/<Class>/raw/<split>-images-idx3-ubyte[.gz] -----------------

IDX_IMAGES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}


def read_idx(path: Path, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Read an idx file with one of torchvision's readers; a .gz is decompressed to a temporary copy.

    torchvision's readers open the file uncompressed, and the data root may be read-only, so the
    copy goes into our cache folder and is deleted once read (the tensor cache keeps the result).
    """
    if path.suffix != ".gz":
        return reader(str(path))
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, out)
        return reader(tmp)
    finally:
        os.unlink(tmp)


def idx_layout(folder: str) -> Layout:
    """`folder` is the torchvision class name (MNIST, FashionMNIST, KMNIST): its download goes there."""

    def find(root: Path, split: str) -> Lookup:
        raw = root / folder / "raw"
        stem = IDX_IMAGES[split]
        for path in (raw / stem, raw / f"{stem}.gz"):
            if path.is_file():
                return Found(str(path), (path,), lambda limit, path=path: read_idx_images(path),
                             count=lambda path=path: idx_count(path))
        return Missing(str(raw / f"{stem}[.gz]"))

    return find


IDX_UBYTE_3D = 0x00000803  # idx magic: unsigned bytes, 3 dimensions (count, rows, columns)


def idx_count(path: Path) -> int:
    """The number of images in an idx3-ubyte file ([.gz]), from its 16-byte header (big-endian)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        header = handle.read(16)
    if len(header) < 16 or int.from_bytes(header[:4], "big") != IDX_UBYTE_3D:
        raise ValueError(f"{path}: not an idx3-ubyte image file")
    return int.from_bytes(header[4:8], "big")


def read_idx_images(path: Path) -> Pixels:
    from torchvision.datasets.mnist import read_image_file

    return numbered(read_idx(path, read_image_file).unsqueeze(1))


# --- torchvision's CIFAR folders and SVHN .mat files ------------------------------------------------

CIFAR_SIZES = {"train": 50_000, "test": 10_000}


def cifar_layout(cls) -> Layout:
    """`cls` is torchvision.datasets.CIFAR10 or CIFAR100; their `.data` is (N, 32, 32, 3) uint8."""

    def find(root: Path, split: str) -> Lookup:
        folder = root / cls.base_folder
        batches = cls.train_list if split == "train" else cls.test_list
        files = tuple(folder / name for name, _md5 in batches)
        if not all(path.is_file() for path in files):
            return Missing(str(folder))
        # torchvision checks every batch's md5 and raises on a corrupt one; the loader reports it.
        # So only the canonical files load, and their sizes are known: 50,000 train / 10,000 test
        # (CIFAR-10: 10,000 per batch file; CIFAR-100: one file per split).
        return Found(str(folder), files, lambda limit: from_numpy(cls(str(root), train=split == "train").data),
                     count=lambda: CIFAR_SIZES[split])

    return find


def svhn_layout(root: Path, split: str) -> Lookup:
    from torchvision.datasets import SVHN

    path = root / SVHN.split_list[split][1]
    if not path.is_file():
        return Missing(str(path))
    # torchvision verifies the file's md5 first; its .data is already (N, 3, 32, 32).
    return Found(str(path), (path,), lambda limit: numbered(torch.from_numpy(SVHN(str(root), split=split).data)),
                 count=lambda: svhn_mat_count(path))


def svhn_mat_count(path: Path) -> int:
    """The number of images in an SVHN .mat file: `X` is (32, 32, 3, N); whosmat reads headers only."""
    from scipy.io import whosmat

    shapes = {name: shape for name, shape, _cls in whosmat(str(path))}
    if "X" not in shapes or len(shapes["X"]) != 4:
        raise ValueError(f"{path}: no 4-d array 'X' (it has {', '.join(shapes) or 'nothing'})")
    return int(shapes["X"][-1])


# --- ImageNet32: the official pickles train_data_batch_1..10 and val_data ----------------------------

IMAGENET32_FILES = {"train": tuple(f"train_data_batch_{i}" for i in range(1, 11)), "test": ("val_data",)}
# The official archives unpack into these folders; `imagenet32/` holding all files is accepted too.
IMAGENET32_FOLDERS = {"train": ("imagenet32", "Imagenet32_train"), "test": ("imagenet32", "Imagenet32_val")}


def _read_imagenet32_file(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            data = archive["data"]
    else:
        with open(path, "rb") as handle:
            data = pickle.load(handle)["data"]  # the official format: a pickled dict (data, labels, mean)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected 'data' uint8 (N, 3072), got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)  # rows are channel-major (all R, then G, then B)


def read_imagenet32(files: tuple[Path, ...], limit: int | None) -> Pixels:
    parts, count = [], 0
    for path in files:
        if limit is not None and count >= limit:
            break
        parts.append(_read_imagenet32_file(path))
        count += parts[-1].shape[0]
    pixels = numbered(torch.from_numpy(np.concatenate(parts)))
    return Pixels(pixels.images, pixels.index, complete=len(parts) == len(files))


def imagenet32_count(files: tuple[Path, ...]) -> int | None:
    """The `.npz` variant: the sum of the `data` arrays' header shapes; pickles: None (unknown)."""
    if not all(path.suffix == ".npz" for path in files):
        return None
    return sum(npz_shape(path, "data")[0] for path in files)


def imagenet32_layout(root: Path, split: str) -> Lookup:
    names = IMAGENET32_FILES[split]
    for folder_name in IMAGENET32_FOLDERS[split]:
        folder = root / folder_name
        for suffix in ("", ".npz"):
            files = tuple(folder / f"{name}{suffix}" for name in names)
            if all(path.is_file() for path in files):
                return Found(str(folder), files, lambda limit, files=files: read_imagenet32(files, limit),
                             count=lambda files=files: imagenet32_count(files))
    return Missing(str(root / IMAGENET32_FOLDERS[split][0] / (names[0] + ("..." if len(names) > 1 else ""))))
