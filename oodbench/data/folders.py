"""JPEG-folder datasets: CelebA (aligned faces) and Tiny-ImageNet, decoded once and resized to 32x32.

- CelebA: `img_align_celeba/*.jpg` (178x218, width x height) with the split given by torchvision's
  `list_eval_partition.txt` or the staged `subset.csv` (image_id, partition, identity). The crop is
  RealNVP's (Dinh, Sohl-Dickstein & Bengio 2017, ICLR, Sec. 4.1; their TensorFlow code,
  tensorflow/models research/real_nvp/real_nvp_multiscale_dataset.py, takes `image[40:188, 15:163]`),
  also used by the Glow re-implementations that train on 178x218 CelebA: the 148x148 box `CELEBA_BOX`
  of rows 40-187 and columns 15-162 (0-based, inclusive) of the aligned image, i.e. numpy
  `x[40:188, 15:163]`; then an antialiased bilinear resize to 32x32. (Not a centre crop: that would
  start at row 35.) Any other image size is an error, since the box only means something on the
  aligned 178x218 frame. A sample's index is its position in the official split (partition
  boundaries 162770 / 182637 over the 1-based file numbers).
- Tiny-ImageNet: 64x64 JPEGs resized to 32x32 with antialiasing. "test" is the official
  validation set (`val/images/val_<k>.JPEG`, index k); "train" is `train/<wnid>/images/<wnid>_<k>.JPEG`
  with index (rank of wnid among the sorted wnids) * 500 + k, the order of torchvision's ImageFolder.

Decoding uses torchvision.io (libjpeg-turbo) on a thread pool; readers honour `limit` so a quick run
on a big folder decodes only the images it asks for. Each `Found` also has a `count` that counts a
split's images from its listing or file names, decoding nothing. `CELEBA_RECIPE` / `TINY_RECIPE`
describe the decode-and-resize pipeline; the tensor cache keys entries on them (`DatasetSpec.recipe`),
so changing the box or the resize rebuilds old entries instead of serving them.
"""

from __future__ import annotations

import csv
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from oodbench.data.sources import Found, Lookup, Missing, Pixels
from oodbench.data.transforms import Box, crop_resize
from oodbench.errors import OodbenchError
from oodbench.ticker import track

SIZE = 32

CELEBA_PARTITION = {"train": 0, "valid": 1, "test": 2}
CELEBA_FIRST = {"train": 0, "valid": 162770, "test": 182637}  # 0-based start of each official split
CELEBA_ALIGNED = (218, 178)  # (height, width) of every img_align_celeba JPEG
# RealNVP's box: numpy x[40:188, 15:163] of the aligned image (see the module docstring).
CELEBA_BOX = Box(top=40, left=15, height=148, width=148)
CELEBA_RECIPE = (f"aligned {CELEBA_ALIGNED[1]}x{CELEBA_ALIGNED[0]} JPEG, RGB; crop {CELEBA_BOX}; "
                 f"antialiased bilinear resize to {SIZE}x{SIZE}")
TINY_RECIPE = f"64x64 JPEG, RGB; antialiased bilinear resize to {SIZE}x{SIZE}"
TINY_PER_CLASS = 500


def _decode_resized(path: Path, box: Box | None, expect: tuple[int, int] | None) -> np.ndarray:
    try:
        # RGB mode: some Tiny-ImageNet JPEGs are greyscale; every image must come out with 3 channels.
        image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    except Exception as exc:  # noqa: BLE001 - libjpeg and file errors come as many types
        raise OodbenchError(f"could not decode image {path} ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}); the file is missing or corrupt") from None
    if expect is not None and tuple(image.shape[-2:]) != expect:
        raise OodbenchError(f"image {path} is {image.shape[-1]}x{image.shape[-2]} (WxH), expected "
                            f"{expect[1]}x{expect[0]}; the crop box is defined on that frame only")
    return crop_resize(image[None], SIZE, box)[0].numpy()


def decode_resized(paths: list[Path], box: Box | None = None, expect: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode JPEGs to uint8 (N, 3, 32, 32), optionally cropping to `box` first.

    `expect` is the (height, width) every image must have (checked before cropping). Each image is
    cropped and resized as soon as it is decoded, on a thread pool: memory stays at 32x32 per image,
    and no large tensors of full-size images are stacked (torch's parallel copy of many small tensors
    is slow on a busy machine).
    """
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        resized = list(track(pool.map(lambda path: _decode_resized(path, box, expect), paths), total=len(paths),
                             what=f"decoding {paths[0].parent if paths else ''} into the cache"))
    if not resized:
        return torch.empty((0, 3, SIZE, SIZE), dtype=torch.uint8)
    return torch.from_numpy(np.stack(resized))


# --- CelebA -------------------------------------------------------------------------------------------

def _celeba_rows_txt(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            rows.append((parts[0], int(parts[1])))
    return rows


def _celeba_rows_csv(path: Path) -> list[tuple[str, int]]:
    with open(path, newline="") as handle:
        return [(row["image_id"], int(row["partition"])) for row in csv.DictReader(handle)]


def _read_celeba(images: Path, rows: list[tuple[str, int]], split: str, source: Path, limit: int | None) -> Pixels:
    names = sorted(name for name, partition in rows if partition == CELEBA_PARTITION[split])
    if not names:
        raise OodbenchError(f"{source} lists no celeba '{split}' images; use another split or a complete listing")
    complete = limit is None or limit >= len(names)
    names = names if complete else names[:limit]
    index = torch.tensor([int(Path(name).stem) - 1 - CELEBA_FIRST[split] for name in names], dtype=torch.int64)
    paths = [images / name for name in names]
    return Pixels(decode_resized(paths, box=CELEBA_BOX, expect=CELEBA_ALIGNED), index, complete)


def _count_celeba(rows: list[tuple[str, int]], split: str) -> int:
    return sum(1 for _name, partition in rows if partition == CELEBA_PARTITION[split])


def celeba_layout(listing_name: str):
    """torchvision's `list_eval_partition.txt` or the staged `subset.csv`, beside `img_align_celeba/`."""
    parse = _celeba_rows_csv if listing_name.endswith(".csv") else _celeba_rows_txt

    def find(root: Path, split: str) -> Lookup:
        folder = root / "celeba"
        listing, images = folder / listing_name, folder / "img_align_celeba"
        if not (listing.is_file() and images.is_dir()):
            return Missing(f"{listing} + {images}/")
        return Found(f"{images} ({listing_name})", (listing, images),
                     lambda limit: _read_celeba(images, parse(listing), split, listing, limit),
                     count=lambda: _count_celeba(parse(listing), split))

    return find


# --- Tiny-ImageNet -----------------------------------------------------------------------------------

_NUMBER = re.compile(r"_(\d+)\.JPEG$", re.IGNORECASE)


def _number(path: Path) -> int:
    match = _NUMBER.search(path.name)
    if match is None:
        raise OodbenchError(f"unexpected file name {path}: Tiny-ImageNet images are named <prefix>_<number>.JPEG")
    return int(match.group(1))


def _tiny_val_names(folder: Path) -> list[str]:
    listing = folder / "val_annotations.txt"
    return [line.split("\t", 1)[0] for line in listing.read_text().splitlines() if line.strip()]


def _read_tiny_val(folder: Path, limit: int | None) -> Pixels:
    names = _tiny_val_names(folder)
    paths = sorted((folder / "images" / name for name in names), key=_number)
    complete = limit is None or limit >= len(paths)
    paths = paths if complete else paths[:limit]
    index = torch.tensor([_number(path) for path in paths], dtype=torch.int64)
    return Pixels(decode_resized(paths), index, complete)


def _tiny_train_images(folder: Path) -> list[Path]:
    return list(folder.glob("*.JPEG")) if folder.is_dir() else []


def _count_tiny_train(class_dirs: dict[str, Path]) -> int:
    return sum(len(_tiny_train_images(folder)) for folder in class_dirs.values())


def _read_tiny_train(class_dirs: dict[str, Path], limit: int | None) -> Pixels:
    """`class_dirs` maps every wnid (sorted; folders may be missing) to its images folder."""
    keyed = []
    for rank, wnid in enumerate(sorted(class_dirs)):
        keyed += [(rank * TINY_PER_CLASS + _number(path), path) for path in _tiny_train_images(class_dirs[wnid])]
    keyed.sort()
    complete = limit is None or limit >= len(keyed)
    keyed = keyed if complete else keyed[:limit]
    index = torch.tensor([key for key, _ in keyed], dtype=torch.int64)
    return Pixels(decode_resized([path for _, path in keyed]), index, complete)


def tinyimagenet_layout(root: Path, split: str) -> Lookup:
    base = root / "tiny-imagenet-200"
    if split == "test":
        folder = base / "val"
        listing, images = folder / "val_annotations.txt", folder / "images"
        if not (listing.is_file() and images.is_dir()):
            return Missing(f"{listing} + {images}/")
        return Found(str(folder), (listing, images), lambda limit: _read_tiny_val(folder, limit),
                     count=lambda: len(_tiny_val_names(folder)))
    train = base / "train"
    if not train.is_dir():
        return Missing(str(train / "<wnid>/images/"))
    wnids_file = base / "wnids.txt"
    wnids = wnids_file.read_text().split() if wnids_file.is_file() else [p.name for p in train.iterdir()]
    # Ranks count every wnid, present or not, so a partial copy keeps the full set's indices.
    class_dirs = {wnid: train / wnid / "images" for wnid in wnids}
    present = tuple(folder for folder in class_dirs.values() if folder.is_dir())
    if not present:
        return Missing(str(train / "<wnid>/images/"))
    return Found(str(train), (train, *present), lambda limit: _read_tiny_train(class_dirs, limit),
                 count=lambda: _count_tiny_train(class_dirs))
