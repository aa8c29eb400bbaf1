"""Loading real data: the staged files through each layout, the cache, limits and clear failures."""

from __future__ import annotations

import dataclasses
import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file

from oodbench.data import cache_dir, dataset_availability, get_dataset, load_images, loading, sources
from oodbench.data.transforms import luminance
from oodbench.errors import OodbenchError


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_family_from_staged_gz(staged_root, tmp_path, name, folder):
    images = load_images(name, "test", data_root=staged_root)
    assert images.images.shape == (10_000, 1, 32, 32) and images.images.dtype == torch.uint8
    assert images.images.is_contiguous() and images.shape == (1, 32, 32) and len(images) == 10_000
    assert torch.equal(images.index, torch.arange(10_000))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (images.images[:, :, border] == 0).all()
    raw = tmp_path / "t10k"
    raw.write_bytes(gzip.decompress((staged_root / folder / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes()))
    assert torch.equal(images.images[:, 0, 2:30, 2:30], read_image_file(str(raw)))
    assert images.source.endswith("t10k-images-idx3-ubyte.gz")


def test_second_load_comes_from_the_cache(staged_root, fresh_cache, monkeypatch):
    started = time.perf_counter()
    first = load_images("mnist", "test", data_root=staged_root)
    first_s = time.perf_counter() - started
    written = sorted(path.name for path in fresh_cache.iterdir())
    assert len(written) == 1 and written[0].startswith("mnist-test-") and written[0].endswith(".pt")
    assert cache_dir() == fresh_cache

    def no_reading(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(sources, "read_idx", no_reading)
    started = time.perf_counter()
    second = load_images("mnist", "test", data_root=staged_root)
    assert time.perf_counter() - started < max(first_s, 0.05)
    assert torch.equal(first.images, second.images) and torch.equal(first.index, second.index)
    assert sorted(path.name for path in fresh_cache.iterdir()) == written  # no .tmp-* leftovers


def write_npz(path: Path, x: np.ndarray, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, **arrays)
    return path


def test_cache_is_rebuilt_when_the_source_changes(tmp_path, fresh_cache):
    path = write_npz(tmp_path / "root" / "svhn" / "test.npz", np.zeros((3, 32, 32, 3), np.uint8))
    assert load_images("svhn", "test", data_root=tmp_path / "root").images.sum() == 0
    write_npz(path, np.ones((4, 32, 32, 3), np.uint8))
    assert len(load_images("svhn", "test", data_root=tmp_path / "root")) == 4
    (cache_file,) = fresh_cache.iterdir()
    cache_file.write_bytes(b"not a tensor file")  # a corrupt cache entry is just a miss
    assert len(load_images("svhn", "test", data_root=tmp_path / "root")) == 4


def test_staged_cifar10_keeps_its_canonical_index(staged_root):
    for split, count in (("test", 1017), ("train", 8068)):
        images = load_images("cifar10", split, data_root=staged_root)
        with np.load(staged_root / "cifar10" / f"{split}.npz") as archive:
            assert images.images.shape == (count, 3, 32, 32)
            assert torch.equal(images.index, torch.from_numpy(archive["index"]).long())
            assert torch.equal(images.images[5].permute(1, 2, 0), torch.from_numpy(archive["x"][5]))
    limited = load_images("cifar10", "train", data_root=staged_root, limit=4010)
    assert len(limited) == 4010 and limited.index[-1] == 10_009  # items 0-3999 of batch 1, then batch 2


def test_gray_cifar10_is_its_luminance(staged_root):
    colour = load_images("cifar10", "test", data_root=staged_root, limit=50)
    grey = load_images("gray:cifar10", "test", data_root=staged_root, limit=50)
    assert grey.name == "gray:cifar10" and grey.shape == (3, 32, 32)
    assert torch.equal(grey.images, luminance(colour.images).expand(-1, 3, -1, -1))


def test_staged_svhn_and_celeba(staged_root):
    assert load_images("svhn", "train", data_root=staged_root).images.shape == (1083, 3, 32, 32)
    faces = load_images("celeba", "test", data_root=staged_root)
    assert faces.images.shape == (660, 3, 32, 32) and faces.images.dtype == torch.uint8
    ids = sorted(line.split(",")[0] for line in (staged_root / "celeba" / "subset.csv").read_text().splitlines()[1:]
                 if line.split(",")[1] == "2")
    assert faces.index.tolist() == [int(name[:6]) - 1 - 182_637 for name in ids]
    assert faces.images.float().std() > 20  # real faces, not a blank


def test_staged_tinyimagenet(staged_root, fresh_cache):
    few = load_images("tinyimagenet", "train", data_root=staged_root, limit=5)
    assert few.images.shape == (5, 3, 32, 32) and few.index.tolist() == [0, 1, 2, 3, 4]
    val = load_images("tinyimagenet", "test", data_root=staged_root)
    assert val.images.shape == (10_000, 3, 32, 32) and torch.equal(val.index, torch.arange(10_000))
    assert val.images.float().std() > 20


def test_demo_root(staged_root):
    for name, split, count in (("fashionmnist", "train", 10_000), ("fashionmnist", "test", 2_000),
                               ("mnist", "test", 2_000)):
        demo = load_images(name, split, data_root="demo")
        assert demo.images.shape == (count, 1, 32, 32) and "demo" in demo.source
        full = load_images(name, split, data_root=staged_root, limit=count)
        assert torch.equal(demo.images, full.images) and torch.equal(demo.index, full.index)
    with pytest.raises(OodbenchError, match="dataset 'mnist' split 'train' not found"):
        load_images("mnist", "train", data_root="demo")


def test_missing_data_names_dataset_and_paths(tmp_path):
    with pytest.raises(OodbenchError) as info:
        load_images("cifar10", "test", data_root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "dataset 'cifar10' split 'test' not found" in message
    assert str(tmp_path / "cifar10" / "test.npz") in message and str(tmp_path / "cifar-10-batches-py") in message
    assert "--download" in message


def test_kmnist_train_is_missing_from_the_staged_copy(staged_root):
    assert len(load_images("kmnist", "test", data_root=staged_root)) == 10_000
    with pytest.raises(OodbenchError, match=r"dataset 'kmnist' split 'train' not found; .*KMNIST/raw"):
        load_images("kmnist", "train", data_root=staged_root)


def test_bad_split_and_conflicting_override(staged_root):
    with pytest.raises(OodbenchError, match=r"cifar10 has no split 'valid'; valid splits: train, test"):
        load_images("cifar10", "valid", data_root=staged_root)
    with pytest.raises(OodbenchError, match="names split 'train'"):
        load_images("svhn@train", "test", data_root=staged_root)
    assert len(load_images("svhn@train", "train", data_root=staged_root, limit=3)) == 3


def test_corrupt_or_misshapen_files_are_named(tmp_path):
    bad = tmp_path / "cifar10" / "test.npz"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(OodbenchError) as info:
        load_images("cifar10", "test", data_root=tmp_path)
    assert str(bad) in str(info.value) and "corrupt" in str(info.value) and "\n" not in str(info.value)
    write_npz(tmp_path / "svhn" / "test.npz", np.zeros((2, 28, 28, 3), np.uint8))
    with pytest.raises(OodbenchError, match=r"shape \(3, 28, 28\)"):
        load_images("svhn", "test", data_root=tmp_path)


def test_download_is_used_only_when_asked(tmp_path, fresh_cache):
    calls = []

    def fake_download(root: Path, split: str) -> None:
        calls.append(split)
        write_npz(root / "mnist" / f"{split}.npz", np.full((3, 28, 28), 9, np.uint8))

    spec = dataclasses.replace(get_dataset("mnist"), download=fake_download)
    with pytest.raises(OodbenchError, match="not found"):
        loading._load_real(spec, "test", tmp_path, download=False, limit=None)
    pixels, source = loading._load_real(spec, "test", tmp_path, download=True, limit=None)
    assert calls == ["test"] and pixels.images.shape == (3, 1, 32, 32) and source.endswith("test.npz")

    def offline(root: Path, split: str) -> None:
        raise RuntimeError("Error downloading\nno route to host")

    with pytest.raises(OodbenchError, match=r"downloading mnist train into .* failed \(RuntimeError: Error downloading no"):
        loading._load_real(dataclasses.replace(spec, download=offline), "train", tmp_path, download=True, limit=None)


def test_dataset_availability_checks_files_only(staged_root):
    assert dataset_availability("mnist", staged_root)["test"].endswith("t10k-images-idx3-ubyte.gz")
    assert dataset_availability("cifar100", staged_root) == {"train": None, "test": None}
    kmnist = dataset_availability("kmnist", staged_root)
    assert kmnist["train"] is None and kmnist["test"] is not None
    assert dataset_availability("celeba", staged_root)["valid"] is not None
    assert all(dataset_availability("noise", staged_root).values())
    assert dataset_availability("fashionmnist", "demo")["train"] is not None
