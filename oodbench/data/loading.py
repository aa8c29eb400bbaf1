"""`load_images`: from a dataset reference to an `ImageSet`, via the cache, the data root or a download.

Where pixels come from, in order:
1. the tensor cache (`cache.py`), when its entry was built from the same files (or they are gone)
   with the dataset's current `recipe` (an entry from another crop / resize is rebuilt);
2. the data root: the `data_root` argument, else $OODBENCH_DATA, else ~/.cache/oodbench; the
   string "demo" means the subset embedded in the package (`DEMO_ROOT`). Each dataset's layouts
   (`datasets.py`) are tried in order;
3. torchvision's own download into the data root, only when `download=True`;
4. otherwise an OodbenchError that names every path searched.
Synthetic sets (`constant`, `noise`) are generated and never cached. A user's `folder:` / `npz:` set is
decoded by `user.py` (cached under its content digest) at the channels and size asked for.

`dataset_availability` and `split_counts` answer "is it here, and how much of it" without reading
pixels: from file existence, headers and listings, and the cache's tensor shapes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from oodbench.data import cache, user
from oodbench.data.datasets import DatasetSpec, get_dataset
from oodbench.data.imageset import ImageSet
from oodbench.data.refs import parse_dataset_ref
from oodbench.data.sources import Found, Missing, Pixels
from oodbench.data.transforms import gray3, pad, resize, unpad
from oodbench.errors import OodbenchError

SMALL_IMAGES = ("pad", "resize")  # how 28x28 sets reach 32x32 models (RunRecord.small_images)

DEMO_ROOT = Path(__file__).resolve().parent / "demo"
DEMO = "demo"


def resolve_root(data_root: str | Path | None) -> Path:
    """The data root to search: the argument ("demo" = DEMO_ROOT), else $OODBENCH_DATA, else ~/.cache/oodbench."""
    if data_root is None:
        data_root = os.environ.get("OODBENCH_DATA") or Path.home() / ".cache" / "oodbench"
    if str(data_root) == DEMO:
        return DEMO_ROOT
    return Path(data_root).expanduser()


def canonical_root(data_root: str | Path | None) -> str:
    """The data root as a run records and compares it: "demo", or the absolute folder it names (the default
    resolved too), so that one folder spelt two ways ("../data", "/work/data", "~/data") is one setting."""
    if data_root is not None and str(data_root) == DEMO:
        return DEMO
    return str(resolve_root(data_root).resolve())


def _check_split(spec: DatasetSpec, split: str) -> None:
    if split not in spec.splits:
        raise OodbenchError(f"{spec.name} has no split {split!r}; valid splits: {', '.join(spec.splits)}")


def locate(spec: DatasetSpec, split: str, root: Path) -> tuple[Found | None, list[str]]:
    """The first layout that has the files (without reading them), and every path looked at."""
    searched = []
    for layout in spec.layouts:
        lookup = layout(root, split)
        if isinstance(lookup, Found):
            return lookup, searched
        assert isinstance(lookup, Missing)
        searched.append(lookup.searched)
    return None, searched


def _missing(spec: DatasetSpec, split: str, root: Path, searched: list[str]) -> OodbenchError:
    fetch = " or pass --download when online" if spec.download is not None else ""
    return OodbenchError(
        f"dataset {spec.name!r} split {split!r} not found; searched: {'; '.join(searched)}; put it under "
        f"--data-root / OODBENCH_DATA (torchvision layout or <root>/{spec.name}/{split}.npz){fetch}")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _read(spec: DatasetSpec, split: str, found: Found, limit: int | None) -> Pixels:
    """Run the reader; any failure is reported as the file being corrupt, naming it."""
    try:
        pixels = found.read(limit)
    except OodbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy, pickle, zipfile, torchvision's md5 check... raise many types
        raise OodbenchError(f"could not read {spec.name} {split} from {found.where} ({_one_line(exc)}); "
                            "the file is corrupt or not in the expected format: replace or delete it") from None
    images = pad(pixels.images, spec.pad) if tuple(pixels.images.shape[1:]) != spec.shape else pixels.images
    if tuple(images.shape[1:]) != spec.shape:
        raise OodbenchError(f"{found.where} holds images of shape {tuple(pixels.images.shape[1:])} (C, H, W); "
                            f"{spec.name} needs {spec.shape} (or 28x28 before padding for grey sets)")
    return Pixels(images.contiguous(), pixels.index, pixels.complete)


def _download(spec: DatasetSpec, split: str, root: Path) -> None:
    try:
        spec.download(root, split)  # type: ignore[misc]
    except Exception as exc:  # noqa: BLE001 - no network, a mirror down, a checksum mismatch
        raise OodbenchError(f"downloading {spec.name} {split} into {root} failed ({_one_line(exc)}); "
                            "check the connection or put the files under --data-root yourself") from None


def _cached(spec: DatasetSpec, split: str, root: Path) -> tuple[Path, cache.CacheEntry | None]:
    """The cache entry of (spec, split, root) if it exists, is readable and has the current recipe."""
    path = cache.cache_path(spec.name, split, root)
    entry = cache.read_entry(path)
    return path, entry if entry is not None and entry.recipe == spec.recipe else None


def _load_real(spec: DatasetSpec, split: str, root: Path, download: bool, limit: int | None) -> tuple[Pixels, str]:
    found, searched = locate(spec, split, root)
    path, entry = _cached(spec, split, root)
    if entry is not None and (entry.complete or (limit is not None and len(entry.index) >= limit)):
        if found is None:  # the source files are gone; the cache still holds the pixels
            return Pixels(entry.images, entry.index, entry.complete), f"{entry.source} (cached in {path})"
        if entry.fingerprint == cache.fingerprint(found.files):
            return Pixels(entry.images, entry.index, entry.complete), found.where
    if found is None and download and spec.download is not None:
        _download(spec, split, root)
        found, searched = locate(spec, split, root)
    if found is None:
        raise _missing(spec, split, root, searched)
    fingerprint = cache.fingerprint(found.files)  # before reading: a file changing meanwhile means a rebuild
    pixels = _read(spec, split, found, limit)
    try:
        cache.write_entry(path, cache.CacheEntry(pixels.images, pixels.index, pixels.complete, found.where,
                                                 fingerprint, spec.recipe))
    except (OSError, RuntimeError):  # read-only or full cache disk (torch raises RuntimeError): slower next time
        pass
    return pixels, found.where


def load_images(name: str, split: str, *, data_root: str | Path | None = None, download: bool = False,
                limit: int | None = None, channels: int | None = None, size: int | None = None,
                skip_unreadable: bool = False, small_images: str = "pad") -> ImageSet:
    """The images of one split of a dataset, as uint8 (N, C, 32, 32) with canonical indices.

    `name` is a dataset reference such as "cifar10" or "gray:cifar10" (an "@split" in it must agree
    with `split`). `limit` keeps the first `limit` samples; `index` keeps their canonical positions.
    `channels`, `size` and `skip_unreadable` apply to a user's own images (`folder:` / `npz:`, user.py):
    the model's channels (None: the images' own) and size (None: 32), and whether unreadable files are
    left out (counted in `source`) instead of being an error. Registered sets have a fixed shape.
    `small_images`: how 28x28 sets become 32x32: "pad" (a zero border, the paper's) or "resize" (bilinear,
    pixel for pixel what torchvision's Resize does to a PIL image: Xiao et al. 2020's VAEs were trained so).
    """
    if small_images not in SMALL_IMAGES:
        raise OodbenchError(f"bad small_images {small_images!r}; valid: {', '.join(SMALL_IMAGES)}")
    ref = parse_dataset_ref(name)
    if ref.split_override is not None and ref.split_override != split:
        raise OodbenchError(f"{name!r} names split {ref.split_override!r} but {split!r} was asked for; "
                            f"pass {ref.name!r} with split {ref.split_override!r}")
    spec = get_dataset(ref.base)
    _check_split(spec, split)
    if limit is not None and limit < 0:
        raise OodbenchError(f"bad limit {limit}: must be 0 or more (or unset for the whole split)")
    digest = None
    if spec.user is not None:
        decoded, source, digest = user.load_user(spec.user, split, channels=3 if ref.gray else channels, size=size,
                                                 skip_unreadable=skip_unreadable)
        pixels = Pixels(decoded.images, decoded.index)
    elif spec.generate is not None:
        pixels, source = spec.generate(split, limit), f"synthetic ({spec.source})"
    else:
        pixels, source = _load_real(spec, split, resolve_root(data_root), download, limit)
    images, index = pixels.images, pixels.index
    if limit is not None:
        images, index = images[:limit], index[:limit]
    if small_images == "resize" and spec.pad:
        images = resize(unpad(images, spec.pad), spec.shape[-1])
        source = f"{source} (resized bilinearly to {spec.shape[-1]}x{spec.shape[-1]})"
    if ref.gray:
        images = gray3(images)
    transform, enlarged = size_transform(spec, small_images, images.shape[-1])
    return ImageSet(name=ref.name, split=split, images=images.contiguous(), index=index.to(torch.int64).contiguous(),
                    source=source, digest=digest, transform=transform, enlarged=enlarged)


def size_transform(spec: DatasetSpec, small_images: str, size: int) -> tuple[str, str]:
    """(how a set's stored images reach `size` x `size`, how pixels they never had were added: "" if none).

    Downsizing is part of how a set is defined at 32x32 (ImageNet32, CelebA, Tiny-ImageNet in the
    literature); enlarging adds pixels the files never had, zero borders or interpolated ones, a
    signature a likelihood model picks up, so a pair whose sets are enlarged differently is refused
    (`check_same_enlargement`)."""
    if spec.user is not None:
        return f"each image's shorter side resized to {size} (up or down), centre crop", UNKNOWN_ENLARGEMENT
    if spec.generate is not None:
        return f"generated at {size}x{size}", GENERATED
    native = "x".join(map(str, spec.native_shape[1:]))
    if spec.pad:
        if small_images == "resize":
            return f"resized bilinearly {native} -> {size}x{size}", f"resized up from {native}"
        return f"zero-padded {native} -> {size}x{size}", f"zero-padded from {native}"
    if spec.recipe:
        return spec.recipe, ""
    return f"as stored, {native}", ""


UNKNOWN_ENLARGEMENT = "unknown"  # a user's images: each is resized up or down to the model's size
GENERATED = "generated"  # a synthetic set (constant, noise) is made at the model's size: it fits any pair


def check_same_enlargement(pair: str, in_set: ImageSet, out_set: ImageSet) -> None:
    """Refuse a pair whose two sets were enlarged differently (one padded or upsampled, the other not, or
    each another way): its AUROC would measure the resampling, not the content (DiffPath, Heng et al. 2024,
    Table 7). A generated set (constant, noise) has no stored size and fits either; a user's folder of mixed
    sizes is stated, not checked."""
    a, b = in_set.enlarged, out_set.enlarged
    if a == b or {a, b} & {UNKNOWN_ENLARGEMENT, GENERATED}:
        return

    def said(images: ImageSet) -> str:
        return f"{images.name} is {images.enlarged or 'not enlarged'} ({images.transform})"
    raise OodbenchError(f"--pair {pair}: {said(in_set)} but {said(out_set)}; a pair whose sets are enlarged "
                        "differently has an AUROC that measures the resampling (DiffPath, Heng et al. 2024, Table 7): "
                        "pair sets stored at the same size")


def dataset_availability(name: str, data_root: str | Path | None = None) -> dict[str, str | None]:
    """For each split of `name`: where it would be loaded from (data root, else cache), or None if missing.

    Only checks that files exist (and, when only the cache has a split, that its entry has the
    current recipe); nothing is read or decoded.
    """
    spec = get_dataset(parse_dataset_ref(name).base)
    if spec.generate is not None:
        return {split: f"synthetic ({spec.source})" for split in spec.splits}
    if spec.user is not None:
        return {split: str(spec.user.where(split)) for split in spec.splits}
    root = resolve_root(data_root)
    found: dict[str, str | None] = {}
    for split in spec.splits:
        hit, _ = locate(spec, split, root)
        if hit is not None:
            found[split] = hit.where
        else:
            path, entry = _cached(spec, split, root)
            found[split] = f"cache {path}" if entry is not None else None
    return found


def _count(spec: DatasetSpec, split: str, root: Path, hit: Found | None) -> int | None:
    if hit is not None:
        try:
            count = hit.count()
        except Exception:  # noqa: BLE001 - a corrupt header is "unknown" here; loading it names the file
            count = None
        if count is not None:
            return count
    _path, entry = _cached(spec, split, root)
    if entry is None or not entry.complete:
        return None
    if hit is not None and entry.fingerprint != cache.fingerprint(hit.files):
        return None  # the files changed since the entry was built: its size says nothing about them
    return int(entry.images.shape[0])  # mmap'd: the shape is in the file's header


def split_counts(name: str, data_root: str | Path | None = None) -> dict[str, int | None]:
    """How many images each available split of `name` has here, without decoding or reading pixels.

    Keys are the splits `dataset_availability` finds (in the spec's order); a missing split is
    absent, never None. A value is the number of images `load_images` would return without a
    `limit`, from file headers (npz, idx, .mat), listings (CelebA, Tiny-ImageNet) or a complete
    cache entry's tensor shape; None means available but not countable without reading it all
    (ImageNet32 pickles not yet cached, a file whose header is corrupt, only a partial cache entry).
    Compare with `get_dataset(name).sizes` to tell a partial copy from a complete one.
    """
    spec = get_dataset(parse_dataset_ref(name).base)
    if spec.generate is not None:
        return {split: spec.sizes[split] for split in spec.splits}
    if spec.user is not None:
        return {split: user.count(spec.user, split) for split in spec.splits}
    root = resolve_root(data_root)
    counts: dict[str, int | None] = {}
    for split in spec.splits:
        hit, _ = locate(spec, split, root)
        if hit is None and _cached(spec, split, root)[1] is None:
            continue
        counts[split] = _count(spec, split, root, hit)
    return counts
