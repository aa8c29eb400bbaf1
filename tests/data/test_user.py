"""Your own images as a dataset (data/user.py): folder: and npz: sets built from real staged images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from oodbench.data import load_images, parse_dataset_ref, parse_pair, split_counts
from oodbench.data.user import parse_user
from oodbench.errors import OodbenchError


@pytest.fixture(scope="module")
def cifar(staged_root):
    return load_images("cifar10", "test", data_root=staged_root, limit=24)


def _save(images: torch.Tensor, folder, fmt: str = "png") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        array = image.permute(1, 2, 0).numpy()
        path = folder / f"img{i:03d}.{fmt}"
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
        paths.append(path)
    return paths


def test_folder_round_trip_is_the_source_pixels(cifar, tmp_path):
    _save(cifar.images[:12], tmp_path / "a" / "cats")  # one subfolder per class
    _save(cifar.images[12:], tmp_path / "a" / "dogs")
    images = load_images(f"folder:{tmp_path / 'a'}", "test")
    assert torch.equal(images.images, cifar.images)  # lossless PNG, already 32x32: no resampling
    assert images.index.tolist() == list(range(24)) and images.shape == (3, 32, 32)
    assert images.digest and images.digest in images.source
    # Served from the cache the second time, identically.
    again = load_images(f"folder:{tmp_path / 'a'}", "test")
    assert torch.equal(again.images, images.images) and again.digest == images.digest


def test_resize_matches_pillow_directly(cifar, tmp_path):
    """A 40x48 (W x H) image: shorter side to 32 (bilinear), then the centre 32x32."""
    big = Image.fromarray(cifar.images[0].permute(1, 2, 0).numpy()).resize((40, 48), Image.Resampling.NEAREST)
    folder = tmp_path / "big"
    folder.mkdir()
    big.save(folder / "x.png")
    got = load_images(f"folder:{folder}", "test").images[0].permute(1, 2, 0).numpy()
    scaled = big.resize((32, round(48 * 32 / 40)), Image.Resampling.BILINEAR)  # 32 x 38
    top = (scaled.size[1] - 32) // 2
    np.testing.assert_array_equal(got, np.asarray(scaled.crop((0, top, 32, top + 32))))


def test_grey_folder_has_one_channel_and_converts_on_request(staged_root, tmp_path):
    mnist = load_images("mnist", "test", data_root=staged_root, limit=6)
    _save(mnist.images, tmp_path / "grey")
    grey = load_images(f"folder:{tmp_path / 'grey'}", "test")
    assert grey.shape == (1, 32, 32) and torch.equal(grey.images, mnist.images)
    rgb = load_images(f"folder:{tmp_path / 'grey'}", "test", channels=3)
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb.images[:, 2], mnist.images[:, 0])
    assert "converted to RGB" in rgb.source


def test_npz_round_trip_keeps_index_and_checks_arrays(cifar, tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, x=cifar.images.permute(0, 2, 3, 1).numpy(), index=np.arange(100, 124))
    images = load_images(f"npz:{path}", "train")
    assert torch.equal(images.images, cifar.images) and images.index.tolist() == list(range(100, 124))
    assert split_counts(f"npz:{path}") == {"train": 24, "test": 24}
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(OodbenchError, match="uint8"):
        load_images(f"npz:{tmp_path / 'bad.npz'}", "test")


def test_a_changed_folder_is_read_again(cifar, tmp_path):
    paths = _save(cifar.images[:4], tmp_path / "c")
    first = load_images(f"folder:{tmp_path / 'c'}", "test")
    Image.fromarray(cifar.images[10].permute(1, 2, 0).numpy()).save(paths[1])
    second = load_images(f"folder:{tmp_path / 'c'}", "test")
    assert second.digest != first.digest and torch.equal(second.images[1], cifar.images[10])


def test_unreadable_files_are_listed_or_skipped_and_empty_folders_refused(cifar, tmp_path):
    _save(cifar.images[:3], tmp_path / "u")
    (tmp_path / "u" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OodbenchError, match=r"1 file\(s\) in .* broken.jpg .*--skip-unreadable"):
        load_images(f"folder:{tmp_path / 'u'}", "test")
    kept = load_images(f"folder:{tmp_path / 'u'}", "test", skip_unreadable=True)
    assert len(kept) == 3 and "1 unreadable file(s) skipped" in kept.source
    (tmp_path / "empty").mkdir()
    with pytest.raises(OodbenchError, match="holds no image files"):
        load_images(f"folder:{tmp_path / 'empty'}", "test")
    with pytest.raises(OodbenchError, match="is not a folder"):
        parse_dataset_ref(f"folder:{tmp_path / 'nowhere'}")


def test_train_and_test_subfolders_are_splits_and_pairs_parse(cifar, tmp_path):
    _save(cifar.images[:5], tmp_path / "s" / "train")
    _save(cifar.images[5:8], tmp_path / "s" / "test")
    source = parse_user(f"folder:{tmp_path / 's'}")
    assert source.splits == ("train", "test") and not source.shared_splits
    assert len(load_images(f"folder:{tmp_path / 's'}", "test")) == 3
    pair = parse_pair(f"cifar10:folder:{tmp_path / 's'}")
    assert pair.out_ref.name == f"folder:{tmp_path / 's'}" and pair.in_ref.name == "cifar10"
    assert parse_pair(f"gray:folder:{tmp_path / 's'}:svhn").in_ref.name == f"gray:folder:{tmp_path / 's'}"
