"""The file-free OOD sets: constant colours and uniform noise."""

from __future__ import annotations

import torch

from oodbench.data import load_images


def test_constant_has_one_colour_per_channel_and_is_deterministic():
    first = load_images("constant", "test", limit=500)
    images = first.images
    assert images.shape == (500, 3, 32, 32) and images.dtype == torch.uint8
    assert (images == images[:, :, :1, :1]).all()  # every pixel equals the image's top-left one
    assert images[:, :, 0, 0].unique().numel() > 200  # colours vary across images
    again = load_images("constant", "test")
    assert len(again) == 10_000 and torch.equal(again.images[:500], images)  # limit = prefix of the whole
    assert torch.equal(again.index, torch.arange(10_000))
    assert not torch.equal(load_images("constant", "train", limit=500).images, images)


def test_noise_is_uniform_and_deterministic():
    noise = load_images("noise", "test", limit=1000).images
    assert noise.shape == (1000, 3, 32, 32)
    assert torch.equal(noise, load_images("noise", "test", limit=1000).images)
    counts = torch.bincount(noise.flatten().long(), minlength=256).float()
    assert 0.9 * counts.mean() < counts.min() and counts.max() < 1.1 * counts.mean()


def test_synthetic_sizes_and_gray():
    assert len(load_images("noise", "train")) == 50_000
    grey = load_images("gray:noise", "test", limit=10)
    assert torch.equal(grey.images[:, 0], grey.images[:, 2]) and grey.name == "gray:noise"
