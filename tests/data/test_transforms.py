"""Pixel conversions: the gray: prefix's luminance, channel matching, padding, crop-resize."""

from __future__ import annotations

import pytest
import torch

from oodbench.data import ImageSet, match_channels
from oodbench.data.transforms import center_crop_resize, gray3, luminance, pad
from oodbench.errors import OodbenchError


def rgb(*pixel: int) -> torch.Tensor:
    return torch.tensor(pixel, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()


@pytest.mark.parametrize("pixel, expected", [
    ((255, 0, 0), 76),        # 0.299 * 255 = 76.245
    ((0, 255, 0), 150),       # 149.685
    ((0, 0, 255), 29),        # 29.07
    ((10, 200, 30), 124),     # 2.99 + 117.4 + 3.42 = 123.81
    ((255, 255, 255), 255),
])
def test_luminance_of_a_hand_made_pixel(pixel, expected):
    assert luminance(rgb(*pixel)).unique().tolist() == [expected]


def test_gray3_has_three_equal_channels():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    grey = gray3(images)
    assert grey.shape == images.shape and grey.dtype == torch.uint8 and grey.is_contiguous()
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
    assert torch.equal(grey[:, :1], luminance(images))


def make_set(channels: int) -> ImageSet:
    images = torch.randint(0, 256, (4, channels, 8, 8), dtype=torch.uint8)
    return ImageSet("x", "test", images, torch.arange(4), "hand-made")


def test_match_channels_both_ways():
    grey = make_set(1)
    three = match_channels(grey, 3)
    assert three.shape == (3, 8, 8) and all(torch.equal(three.images[:, c], grey.images[:, 0]) for c in range(3))
    assert torch.equal(three.index, grey.index) and "converted" in three.source
    back = match_channels(three, 1)
    assert torch.equal(back.images, grey.images)  # luminance of equal channels is that channel
    colour = make_set(3)
    assert torch.equal(match_channels(colour, 1).images, luminance(colour.images))
    assert match_channels(colour, 3) is colour
    with pytest.raises(OodbenchError, match="cannot convert"):
        match_channels(colour, 2)


def test_pad_adds_a_zero_border():
    images = torch.full((2, 1, 28, 28), 7, dtype=torch.uint8)
    padded = pad(images, 2)
    assert padded.shape == (2, 1, 32, 32) and padded.sum() == images.sum()
    assert torch.equal(padded[:, :, 2:30, 2:30], images)


def test_center_crop_resize_keeps_a_flat_colour():
    images = torch.full((3, 3, 218, 178), 200, dtype=torch.uint8)
    out = center_crop_resize(images, 32, crop=148)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8 and (out == 200).all()
