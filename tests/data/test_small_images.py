"""How 28x28 sets reach a 32x32 model: zero-padded (the paper) or resized bilinearly as torchvision's
`Resize(32)` does to a PIL image (Xiao et al. 2020's VAEs, imported by `oodbench import`). The reference is
torchvision's transform on PIL images of the staged raw idx file, read here byte by byte."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from oodbench.data import load_images
from oodbench.errors import OodbenchError


def raw_test_images(root, n: int) -> np.ndarray:
    """The first n Fashion-MNIST test images (n, 28, 28) from the idx file: 16 header bytes, then pixels."""
    with gzip.open(root / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz") as handle:
        return np.frombuffer(handle.read(16 + n * 784)[16:], dtype=np.uint8).reshape(n, 28, 28)


def test_resize_is_torchvisions_resize_of_the_pil_image(staged_root):
    ours = load_images("fashionmnist", "test", data_root=staged_root, limit=40, small_images="resize")
    to_model = transforms.Compose([transforms.Resize(32), transforms.PILToTensor()])  # train_pixel.py's Resize
    expected = torch.stack([to_model(Image.fromarray(image, mode="L")) for image in raw_test_images(staged_root, 40)])
    assert ours.images.shape == (40, 1, 32, 32) and ours.images.dtype == torch.uint8
    assert torch.equal(ours.images, expected)
    assert "resized bilinearly" in ours.source


def test_pad_is_the_default_and_keeps_the_28x28_image_inside(staged_root):
    padded = load_images("fashionmnist", "test", data_root=staged_root, limit=5)
    assert torch.equal(padded.images[:, 0, 2:30, 2:30], torch.from_numpy(raw_test_images(staged_root, 5).copy()))
    assert padded.images[:, :, :2].sum() == 0 and padded.images[:, :, :, :2].sum() == 0


def test_native_32x32_sets_are_not_resized(staged_root):
    plain = load_images("cifar10", "test", data_root=staged_root, limit=3)
    resized = load_images("cifar10", "test", data_root=staged_root, limit=3, small_images="resize")
    assert torch.equal(plain.images, resized.images)


def test_an_unknown_choice_is_refused(staged_root):
    with pytest.raises(OodbenchError, match="bad small_images 'stretch'; valid: pad, resize"):
        load_images("mnist", "test", data_root=staged_root, limit=1, small_images="stretch")
