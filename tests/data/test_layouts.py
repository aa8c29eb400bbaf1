"""Layouts the staged copy lacks, exercised with small hand-made files in a temporary root."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from oodbench.data import dataset_availability, load_images
from oodbench.errors import OodbenchError


def test_uncompressed_idx_as_torchvision_leaves_it(staged_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    packed = (staged_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(packed))
    plain = load_images("mnist", "test", data_root=tmp_path, limit=100)
    assert torch.equal(plain.images, load_images("mnist", "test", data_root=staged_root, limit=100).images)
    assert plain.source == str(raw / "t10k-images-idx3-ubyte")


def write_imagenet32(folder: Path, name: str, n: int, start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = (np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) + start) % 256
    with open(folder / name, "wb") as handle:
        pickle.dump({"data": data.astype(np.uint8), "labels": list(range(n))}, handle)


def test_imagenet32_official_pickles(tmp_path):
    folder = tmp_path / "Imagenet32_train"
    for batch in range(1, 11):
        write_imagenet32(folder, f"train_data_batch_{batch}", 4, start=batch)
    write_imagenet32(tmp_path / "Imagenet32_val", "val_data", 3, start=0)
    assert dataset_availability("imagenet32", tmp_path) == {"train": str(folder), "test": str(tmp_path / "Imagenet32_val")}
    few = load_images("imagenet32", "train", data_root=tmp_path, limit=6)  # reads 2 of the 10 files
    assert few.images.shape == (6, 3, 32, 32) and few.index.tolist() == list(range(6))
    # Rows are channel-major: the first 1024 values are the red plane, row by row.
    assert few.images[0, 0, 0, :3].tolist() == [1, 2, 3] and few.images[0, 1, 0, 0] == (1024 + 1) % 256
    assert len(load_images("imagenet32", "train", data_root=tmp_path)) == 40
    assert len(load_images("imagenet32", "test", data_root=tmp_path)) == 3


def test_torchvision_md5_failure_is_a_named_corrupt_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(b"not the real batch")
    with pytest.raises(OodbenchError) as info:
        load_images("cifar10", "test", data_root=tmp_path)
    message = str(info.value)
    assert str(folder) in message and "corrupt" in message and "\n" not in message


def test_corrupt_jpeg_is_named(staged_root, tmp_path):
    images = tmp_path / "celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    good = min((staged_root / "celeba" / "img_align_celeba").iterdir())
    (images / "182640.jpg").write_bytes(good.read_bytes())
    (images / "182641.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "celeba" / "subset.csv").write_text("image_id,partition,identity\n182640.jpg,2,1\n182641.jpg,2,1\n")
    first = load_images("celeba", "test", data_root=tmp_path, limit=1)  # decodes only the good one
    assert first.index.tolist() == [2] and first.images.shape == (1, 3, 32, 32)
    with pytest.raises(OodbenchError, match=r"could not decode image .*182641\.jpg"):
        load_images("celeba", "test", data_root=tmp_path)
