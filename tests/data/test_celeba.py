"""CelebA's crop: RealNVP's box x[40:188, 15:163] of the aligned 178x218 image, then 32x32; and the
cache entries' recipe, so that a changed crop is never served from an old entry."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from oodbench.data import cache, dataset_availability, folders, get_dataset, load_images, loading
from oodbench.data.transforms import Box, crop_box
from oodbench.errors import OodbenchError

HEIGHT, WIDTH = 218, 178  # the aligned images, (H, W)


def position_image() -> torch.Tensor:
    """(3, 218, 178) uint8: channel 0 is each pixel's row, channel 1 its column, channel 2 zero."""
    rows = torch.arange(HEIGHT, dtype=torch.uint8).view(HEIGHT, 1).expand(HEIGHT, WIDTH)
    cols = torch.arange(WIDTH, dtype=torch.uint8).view(1, WIDTH).expand(HEIGHT, WIDTH)
    return torch.stack([rows, cols, torch.zeros_like(rows)])


def resized(image: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """The reference: numpy-style slice [top:top+148, left:left+148], antialiased bilinear to 32x32."""
    return TF.resize(image[None, :, top:top + 148, left:left + 148].contiguous(), [32, 32],
                     interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0]


def test_celeba_box_is_realnvp_rows_40_to_187_columns_15_to_162():
    assert folders.CELEBA_BOX == Box(top=40, left=15, height=148, width=148)
    assert folders.CELEBA_ALIGNED == (HEIGHT, WIDTH)
    cropped = crop_box(position_image(), folders.CELEBA_BOX)  # before any resizing
    assert cropped.shape == (3, 148, 148)
    # Every surviving row is 40..187 and every surviving column 15..162, in order, nothing else.
    assert torch.equal(cropped[0], torch.arange(40, 188, dtype=torch.uint8).view(148, 1).expand(148, 148))
    assert torch.equal(cropped[1], torch.arange(15, 163, dtype=torch.uint8).view(1, 148).expand(148, 148))
    # Not torchvision's centre crop of 148x148, which starts at row 35.
    centre = TF.center_crop(position_image(), [148, 148])
    assert centre[0, 0, 0] == 35 and cropped[0, 0, 0] == 40


def test_celeba_reader_crops_the_box_then_resizes(tmp_path, fresh_cache, monkeypatch):
    """The whole reader (listing, decode, crop, resize) on position-coded pixels instead of JPEGs."""
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    for name in ("182638.jpg", "182639.jpg"):
        (folder / "img_align_celeba" / name).write_bytes(b"not decoded")
    (folder / "subset.csv").write_text("image_id,partition,identity\n182638.jpg,2,1\n182639.jpg,2,1\n")
    image = position_image()
    monkeypatch.setattr(folders, "read_file", lambda path: path)
    monkeypatch.setattr(folders, "decode_jpeg", lambda data, mode: image.clone())
    faces = load_images("celeba", "test", data_root=tmp_path)
    assert faces.images.shape == (2, 3, 32, 32) and faces.index.tolist() == [0, 1]
    assert torch.equal(faces.images[0], resized(image, 40, 15))
    for top, left in ((39, 15), (41, 15), (40, 14), (40, 16), (35, 15)):  # one pixel off, or centred
        assert not torch.equal(faces.images[0], resized(image, top, left)), (top, left)


def test_staged_celeba_image_through_the_decode_path(staged_root, tmp_path, fresh_cache):
    source = staged_root / "celeba" / "img_align_celeba"
    name = min(path.name for path in source.iterdir())
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    shutil.copy(source / name, folder / "img_align_celeba" / name)
    (folder / "subset.csv").write_text(f"image_id,partition,identity\n{name},0,1\n")
    faces = load_images("celeba", "train", data_root=tmp_path)
    assert faces.images.shape == (1, 3, 32, 32) and faces.images.dtype == torch.uint8
    assert faces.index.tolist() == [int(name[:6]) - 1]
    decoded = decode_jpeg(read_file(str(source / name)), mode=ImageReadMode.RGB)
    assert tuple(decoded.shape) == (3, HEIGHT, WIDTH)
    assert torch.equal(faces.images[0], resized(decoded, 40, 15))
    assert faces.images.float().std() > 20


def test_celeba_image_of_another_size_is_an_error(tmp_path, fresh_cache):
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    square = encode_jpeg(torch.full((3, 200, 200), 128, dtype=torch.uint8)).numpy().tobytes()
    (folder / "img_align_celeba" / "000001.jpg").write_bytes(square)
    (folder / "subset.csv").write_text("image_id,partition,identity\n000001.jpg,0,1\n")
    with pytest.raises(OodbenchError, match=r"000001\.jpg is 200x200 \(WxH\), expected 178x218"):
        load_images("celeba", "train", data_root=tmp_path)


def small_celeba_root(staged_root: Path, root: Path) -> Path:
    source = staged_root / "celeba" / "img_align_celeba"
    names = sorted(path.name for path in source.iterdir())[:2]
    (root / "celeba" / "img_align_celeba").mkdir(parents=True)
    for name in names:
        shutil.copy(source / name, root / "celeba" / "img_align_celeba" / name)
    rows = "".join(f"{name},0,1\n" for name in names)
    (root / "celeba" / "subset.csv").write_text("image_id,partition,identity\n" + rows)
    return root


def test_cache_entries_carry_the_recipe_and_a_changed_one_rebuilds(staged_root, tmp_path, fresh_cache, monkeypatch):
    root = small_celeba_root(staged_root, tmp_path / "root")
    spec = get_dataset("celeba")
    assert spec.recipe == folders.CELEBA_RECIPE and str(folders.CELEBA_BOX) in spec.recipe
    assert "rows 40-187, columns 15-162" in spec.recipe
    decodes = []
    real_decode = folders.decode_resized
    monkeypatch.setattr(folders, "decode_resized", lambda *args, **kwargs: decodes.append(1) or real_decode(*args, **kwargs))

    first, _ = loading._load_real(spec, "train", root, download=False, limit=None)
    (entry_path,) = fresh_cache.iterdir()
    assert cache.read_entry(entry_path).recipe == spec.recipe and len(decodes) == 1
    loading._load_real(spec, "train", root, download=False, limit=None)
    assert len(decodes) == 1  # same recipe, same files: served from the cache

    changed = dataclasses.replace(spec, recipe=spec.recipe + "; some other crop")
    again, _ = loading._load_real(changed, "train", root, download=False, limit=None)
    assert len(decodes) == 2 and torch.equal(again.images, first.images)
    assert cache.read_entry(entry_path).recipe == changed.recipe  # the entry was overwritten, not added
    assert [path.name for path in fresh_cache.iterdir()] == [entry_path.name]

    # An entry written before recipes existed (no "recipe" key: the old centre crop) is never served,
    # not even once the source files are gone.
    payload = torch.load(entry_path, weights_only=True)
    del payload["recipe"]
    torch.save(payload, entry_path)
    assert cache.read_entry(entry_path).recipe == ""
    shutil.rmtree(root / "celeba")
    assert dataset_availability("celeba", root)["train"] is None
    with pytest.raises(OodbenchError, match="dataset 'celeba' split 'train' not found"):
        load_images("celeba", "train", data_root=root)
    # ... while an entry with the current recipe still is, source files gone or not.
    cache.write_entry(entry_path, dataclasses.replace(cache.read_entry(entry_path), recipe=spec.recipe))
    assert dataset_availability("celeba", root)["train"].startswith("cache ")
    assert torch.equal(load_images("celeba", "train", data_root=root).images, first.images)
