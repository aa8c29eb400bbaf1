"""Counting a split's images without reading pixels (`split_counts`, `Found.count`), and the specs'
canonical sizes, titles and native shapes."""

from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from scipy.io import savemat

from oodbench.data import folders, get_dataset, list_datasets, load_images, sources, split_counts
from oodbench.data.sources import idx_count, npz_shape

STAGED = {
    "mnist": {"train": 60_000, "test": 10_000},
    "fashionmnist": {"train": 60_000, "test": 10_000},
    "kmnist": {"test": 10_000},  # no train images staged: absent, not None
    "cifar10": {"train": 8_068, "test": 1_017},
    "cifar100": {},
    "svhn": {"train": 1_083, "test": 10_000},
    "celeba": {"train": 4_560, "valid": 780, "test": 660},
    "tinyimagenet": {"train": 10_000, "test": 10_000},
    "imagenet32": {},
    "constant": {"train": 50_000, "test": 10_000},
    "noise": {"train": 50_000, "test": 10_000},
}


def test_split_counts_of_the_staged_copy(staged_root, fresh_cache):
    assert {spec.name: split_counts(spec.name, staged_root) for spec in list_datasets()} == STAGED
    assert list(split_counts("celeba", staged_root)) == ["train", "valid", "test"]  # the spec's order
    assert split_counts("gray:cifar10@test", staged_root) == STAGED["cifar10"]  # the base dataset's
    assert split_counts("fashionmnist", "demo") == {"train": 10_000, "test": 2_000}
    assert split_counts("mnist", "demo") == {"test": 2_000}


def test_counting_reads_no_pixels(staged_root, fresh_cache, monkeypatch):
    def no_pixels(*args, **kwargs):
        raise AssertionError("pixels were read")

    for module, name in ((sources, "read_npz"), (sources, "read_idx"), (sources, "read_imagenet32"),
                         (sources, "from_numpy"), (folders, "decode_resized"), (folders, "read_file"),
                         (np, "load"), (tvd.CIFAR10, "__init__"), (tvd.CIFAR100, "__init__"),
                         (tvd.SVHN, "__init__")):
        monkeypatch.setattr(module, name, no_pixels)
    started = time.perf_counter()
    counts = {spec.name: split_counts(spec.name, staged_root) for spec in list_datasets()}
    assert time.perf_counter() - started < 5  # milliseconds in practice; decoding them all takes minutes
    assert counts == STAGED


@pytest.mark.parametrize("split, count", [("test", 1_017), ("train", 8_068)])
def test_count_equals_what_loading_returns(staged_root, split, count):
    assert split_counts("cifar10", staged_root)[split] == count == len(load_images("cifar10", split, data_root=staged_root))


def test_npz_count_from_the_header_plain_and_compressed(tmp_path):
    x = np.zeros((7, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "plain.npz", x=x, index=np.arange(7))
    np.savez_compressed(tmp_path / "packed.npz", x=x)
    assert npz_shape(tmp_path / "plain.npz") == (7, 32, 32, 3) and npz_shape(tmp_path / "packed.npz")[0] == 7
    (tmp_path / "svhn").mkdir()
    (tmp_path / "plain.npz").rename(tmp_path / "svhn" / "test.npz")
    assert split_counts("svhn", tmp_path) == {"test": 7}
    (tmp_path / "svhn" / "test.npz").write_bytes(b"not a zip")  # corrupt: available, count unknown
    assert split_counts("svhn", tmp_path) == {"test": None}


def test_idx_count_from_the_header_plain_and_gz(staged_root, tmp_path):
    packed = staged_root / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(packed.read_bytes()))
    assert idx_count(packed) == idx_count(plain) == 10_000
    labels = staged_root / "KMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(ValueError, match="not an idx3-ubyte image file"):
        idx_count(labels)


def test_cifar_and_svhn_torchvision_layouts_are_counted_without_reading(tmp_path):
    for cls in (tvd.CIFAR10, tvd.CIFAR100):
        folder = tmp_path / cls.base_folder
        folder.mkdir()
        for name, _md5 in cls.train_list + cls.test_list:
            (folder / name).write_bytes(b"placeholder: torchvision's md5 check runs only on load")
    assert split_counts("cifar10", tmp_path) == split_counts("cifar100", tmp_path) == {"train": 50_000, "test": 10_000}
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 5), np.uint8), "y": np.ones((5, 1), np.uint8)})
    assert split_counts("svhn", tmp_path) == {"train": 5}


def write_imagenet32(folder: Path, name: str, n: int, npz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = np.zeros((n, 3072), np.uint8)
    if npz:
        np.savez(folder / f"{name}.npz", data=data, labels=np.arange(n))
    else:
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": list(range(n))}, handle)


def test_imagenet32_pickles_are_unknown_until_cached(tmp_path, fresh_cache):
    for batch in range(1, 11):
        write_imagenet32(tmp_path / "Imagenet32_train", f"train_data_batch_{batch}", 3)
    write_imagenet32(tmp_path / "Imagenet32_val", "val_data", 4, npz=True)
    assert split_counts("imagenet32", tmp_path) == {"train": None, "test": 4}
    assert len(load_images("imagenet32", "train", data_root=tmp_path, limit=3)) == 3  # a partial entry
    assert split_counts("imagenet32", tmp_path)["train"] is None
    assert len(load_images("imagenet32", "train", data_root=tmp_path)) == 30  # complete entry
    assert split_counts("imagenet32", tmp_path)["train"] == 30  # from the cached tensor's shape
    write_imagenet32(tmp_path / "Imagenet32_train", "train_data_batch_1", 5)  # the files changed
    assert split_counts("imagenet32", tmp_path)["train"] is None


def test_cache_only_split_is_counted_from_the_entry(tmp_path, fresh_cache):
    path = tmp_path / "cifar10" / "test.npz"
    path.parent.mkdir()
    np.savez(path, x=np.zeros((6, 32, 32, 3), np.uint8))
    assert len(load_images("cifar10", "test", data_root=tmp_path)) == 6
    path.unlink()  # only the cache has it now
    assert split_counts("cifar10", tmp_path) == {"test": 6}


def test_specs_have_sizes_titles_and_native_shapes():
    titles = {spec.name: spec.title for spec in list_datasets()}
    assert titles == {"mnist": "MNIST", "fashionmnist": "Fashion-MNIST", "kmnist": "KMNIST", "cifar10": "CIFAR-10",
                      "cifar100": "CIFAR-100", "svhn": "SVHN", "celeba": "CelebA", "tinyimagenet": "Tiny-ImageNet",
                      "imagenet32": "ImageNet 32x32", "constant": "constant", "noise": "noise"}
    for spec in list_datasets():
        assert set(spec.sizes) == set(spec.splits) and all(n > 0 for n in spec.sizes.values())
        assert spec.native_shape == ((1, 28, 28) if spec.pad == 2 else spec.shape)
        hash(spec)  # the dict of sizes does not make specs unhashable
    assert get_dataset("svhn").sizes == {"train": 73_257, "test": 26_032, "extra": 531_131}
    assert get_dataset("celeba").sizes == {"train": 162_770, "valid": 19_867, "test": 19_962}
    assert sum(get_dataset("celeba").sizes.values()) == 202_599
    assert get_dataset("imagenet32").sizes == {"train": 1_281_167, "test": 50_000}
    assert get_dataset("tinyimagenet").sizes == {"train": 100_000, "test": 10_000}
    assert get_dataset("kmnist").native_shape == (1, 28, 28) and get_dataset("cifar10").native_shape == (3, 32, 32)
    assert get_dataset("noise").sizes == {"train": 50_000, "test": 10_000}
    assert len(load_images("noise", "test")) == split_counts("noise")["test"]


def test_celeba_counts_rows_of_the_listing(tmp_path):
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)  # counting needs the folder, not the images
    (folder / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 0\n182638.jpg 2\n\n")
    assert split_counts("celeba", tmp_path) == {"train": 2, "valid": 0, "test": 1}  # the official listing first
    (folder / "list_eval_partition.txt").unlink()
    (folder / "subset.csv").write_text("image_id,partition,identity\n162771.jpg,1,7\n")
    assert split_counts("celeba", tmp_path) == {"train": 0, "valid": 1, "test": 0}
