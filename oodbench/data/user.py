"""Your own images as a dataset: `folder:PATH` and `npz:PATH`, usable wherever a dataset name is.

- `folder:PATH`: every file under PATH (recursively, so one subfolder per class works; hidden files and
  folders are skipped) whose extension Pillow reads, in sorted order of relative path; a sample's index
  is its position in that order. A folder with `train/` and/or `test/` subfolders has those splits;
  any other folder is one set that serves as both "train" and "test" (`UserSource.shared_splits`:
  training holds its validation images out as always, and evaluation scores the images the run did not
  train on as the in-distribution test set, never the training images).
- `npz:PATH`: arrays `x` uint8 (N, H, W, C) or (N, H, W), optional `y` (N,) and `index` (N,) int; one
  set, shared by both splits like a flat folder.

The transform is declared and reproducible (`recipe`): each image is opened with Pillow, converted to
RGB (a palette or alpha channel is dropped; alpha is not composited) or, when every image of the set is
single-channel, to grey ("L"); resized so that its shorter side is `size` (bilinear, antialiased when
shrinking; an image already size x size is left untouched, so its pixels are exact) and centre-cropped
to size x size. A model that takes another channel count gets the BT.601 luminance or the grey
replicated (`transforms.py`, the conversions of "gray:" and --match-channels), stated in the source.

The content, not the path, names a set: `content_digest` hashes every file's relative path and bytes,
the tensor cache keys decoded pixels on that digest and the recipe (a changed folder is re-read), and a
run records it (`RunRecord.data_digest`). Unreadable files are listed in one error, or skipped and
counted with `skip_unreadable`; an empty folder is an error.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from oodbench.data import cache
from oodbench.data.sources import npz_shape
from oodbench.data.transforms import luminance, replicate
from oodbench.data.user_source import KINDS, SPLITS, UserSource, is_user_name, parse_user  # noqa: F401 - this module's API
from oodbench.errors import OodbenchError
from oodbench.ticker import track

DEFAULT_SIZE = 32  # every registered set's size: the models' default input
RECIPE_VERSION = 1  # bump when the transform below changes
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_SHOWN = 5  # unreadable files named in an error


def image_files(folder: Path) -> list[Path]:
    """The files under `folder` Pillow can open by extension, sorted by relative path; hidden ones skipped."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    found = []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(directory) / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in extensions]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def content_digest(source: UserSource, split: str) -> str:
    """16 hex digits of SHA-256 over each file's relative path and bytes: the set's content."""
    digest = hashlib.sha256()
    root = source.where(split)
    files = image_files(root) if source.kind == "folder" else [root]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" if source.kind == "folder" else b"")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def count(source: UserSource, split: str) -> int:
    """How many images a split has, from the listing or the npz header, decoding nothing (unreadable
    files included)."""
    if source.kind == "folder":
        return len(image_files(source.where(split)))
    return int(npz_shape(source.path)[0])


def recipe(channels: int, size: int) -> str:
    colour = "grey (L)" if channels == 1 else "RGB"
    return (f"user v{RECIPE_VERSION}: Pillow -> {colour}; shorter side -> {size} (bilinear, antialiased), "
            f"centre crop {size}x{size}")


def fit(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size`, then centre-crop size x size (no resampling when already that size)."""
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def _to_array(image: Image.Image, mode: str, size: int) -> np.ndarray:
    pixels = np.asarray(fit(image.convert(mode), size), dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _decode_file(path: Path, mode: str, size: int) -> np.ndarray | str:
    """(C, size, size) uint8, or why the file could not be read."""
    try:
        with Image.open(path) as image:
            return _to_array(image, mode, size)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__


def _is_grey(path: Path) -> bool:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.mode in _GREY_MODES
    except (OSError, UnidentifiedImageError, ValueError):
        return True  # an unreadable file does not vote; it is reported when decoded


def _unreadable(where: Path, failures: list[tuple[Path, str]]) -> OodbenchError:
    shown = "; ".join(f"{path.relative_to(where)} ({why})" for path, why in failures[:_SHOWN])
    more = f"; and {len(failures) - _SHOWN} more" if len(failures) > _SHOWN else ""
    return OodbenchError(f"{len(failures)} file(s) in {where} could not be read as images: {shown}{more}; fix or "
                         "remove them, or pass --skip-unreadable to leave them out")


@dataclass(frozen=True)
class Decoded:
    images: torch.Tensor  # uint8 (N, C, size, size)
    index: torch.Tensor  # int64 (N,)
    skipped: int  # unreadable files left out


def _decode_folder(root: Path, size: int, skip_unreadable: bool) -> Decoded:
    files = image_files(root)
    if not files:
        raise OodbenchError(f"{root} holds no image files (looked for the extensions Pillow reads, e.g. .png .jpg); "
                            "point folder: at a folder of images")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        mode = "L" if all(pool.map(_is_grey, files)) else "RGB"
        decoded = list(track(pool.map(lambda path: _decode_file(path, mode, size), files), total=len(files),
                             what=f"decoding {root} into the cache"))
    failures = [(path, why) for path, why in zip(files, decoded, strict=True) if isinstance(why, str)]
    if failures and not skip_unreadable:
        raise _unreadable(root, failures)
    keep = [i for i, pixels in enumerate(decoded) if not isinstance(pixels, str)]
    if not keep:
        raise OodbenchError(f"none of the {len(files)} files in {root} could be read as an image; point folder: at "
                            "a folder of images")
    images = torch.from_numpy(np.stack([decoded[i] for i in keep]))
    return Decoded(images, torch.tensor(keep, dtype=torch.int64), len(failures))


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive:
                raise OodbenchError(f"{path} has no array 'x' (it has {', '.join(archive.files) or 'none'}); "
                                    "npz: needs x uint8 (N, H, W, C) or (N, H, W), optionally y and index")
            x = archive["x"]
            index = archive["index"] if "index" in archive else np.arange(len(x))
    except OodbenchError:
        raise
    except (OSError, ValueError) as exc:
        raise OodbenchError(f"could not read {path} as .npz ({' '.join(str(exc).split())}); write it with "
                            "numpy.savez(path, x=images)") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3, 4)):
        raise OodbenchError(f"{path}: x is {x.dtype} {x.shape}; npz: needs uint8 (N, H, W, C) with C in 1, 3, 4, "
                            "or (N, H, W)")
    if len(x) == 0:
        raise OodbenchError(f"{path}: x holds no images; npz: needs at least one")
    if index.shape != (len(x),) or not np.issubdtype(index.dtype, np.integer) or len(np.unique(index)) != len(x):
        raise OodbenchError(f"{path}: index must be {len(x)} distinct integers, one per image of x")
    return x, index.astype(np.int64)


def _decode_npz(path: Path, size: int) -> Decoded:
    x, index = _read_npz(path)
    native = 1 if x.ndim == 3 or x.shape[-1] == 1 else 3
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.shape[1:3] == (size, size) and x.shape[-1] != 4:
        images = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # already the size: the pixels as they are
    else:
        mode = "L" if native == 1 else "RGB"
        images = np.stack([_to_array(Image.fromarray(image), mode, size) for image in x])
    return Decoded(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(index), 0)


def _convert(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    return luminance(images) if channels == 1 else replicate(images, channels)


def _cache_path(source: UserSource, split: str, size: int) -> Path:
    where = hashlib.sha256(str(source.where(split)).encode()).hexdigest()[:12]
    return cache.cache_dir() / f"user-{source.kind}-{where}-{size}px.pt"


def load_user(source: UserSource, split: str, *, channels: int | None = None, size: int | None = None,
              skip_unreadable: bool = False) -> tuple[Decoded, str, str]:
    """(pixels, where they came from in words, content digest) of one split of a user's set.

    `channels` None keeps the set's own (1 when every image is single-channel, else 3); `size` None is 32.
    The decoded pixels (in the set's own channels) are cached under the content digest and the recipe.
    """
    if split not in source.splits:
        raise OodbenchError(f"{source.name} has no {split}/ subfolder (it has {', '.join(source.splits)}); add "
                            f"{source.path / split} or use a folder without train/ and test/ subfolders")
    if channels is not None and channels not in (1, 3):
        raise OodbenchError(f"{source.name}: {channels} channels asked for; user sets load as 1 (grey) or 3 (RGB)")
    size = size or DEFAULT_SIZE
    where = source.where(split)
    digest = content_digest(source, split)
    path = _cache_path(source, split, size)
    # The cache entry's fingerprint is the content (and whether unreadable files were left out), its
    # recipe the transform: a changed folder or transform is decoded again.
    key, cache_recipe = f"{digest} skip={skip_unreadable}", f"user v{RECIPE_VERSION} size {size}"
    entry = cache.read_entry(path)
    if entry is not None and entry.fingerprint == key and entry.recipe == cache_recipe:
        decoded = Decoded(entry.images, entry.index, int(entry.source.removeprefix("skipped ")))
    else:
        decoded = _decode_folder(where, size, skip_unreadable) if source.kind == "folder" else _decode_npz(where, size)
        try:
            cache.write_entry(path, cache.CacheEntry(decoded.images, decoded.index, True, f"skipped {decoded.skipped}",
                                                     key, cache_recipe))
        except (OSError, RuntimeError):  # read-only or full cache disk: slower next time
            pass
    native = decoded.images.shape[1]
    want = channels or native
    images = _convert(decoded.images, want)
    words = f"{where} ({recipe(native, size)}"
    words += f"; converted to {'grey (BT.601 luminance)' if want == 1 else 'RGB (grey replicated)'}" \
        if want != native else ""
    words += f"; {decoded.skipped} unreadable file(s) skipped" if decoded.skipped else ""
    words += f"; sha256 {digest})"
    return Decoded(images.contiguous(), decoded.index, decoded.skipped), words, digest


