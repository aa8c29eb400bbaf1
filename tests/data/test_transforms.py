"""Pixel conversions: the gray: prefix's luminance, channel matching, padding, crop, resize."""

from __future__ import annotations

import pytest
import torch

from oodbench.data import ImageSet, match_channels
from oodbench.data.transforms import Box, crop_box, crop_resize, gray3, luminance, pad
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


def test_crop_resize_keeps_a_flat_colour():
    images = torch.full((3, 3, 218, 178), 200, dtype=torch.uint8)
    out = crop_resize(images, 32, Box(top=40, left=15, height=148, width=148))
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8 and (out == 200).all()
    assert crop_resize(out, 32).data_ptr() == out.data_ptr()  # already 32x32: nothing to do


def position_image(height: int, width: int) -> torch.Tensor:
    """(1, 2, H, W) int32: channel 0 holds each pixel's row, channel 1 its column."""
    rows = torch.arange(height, dtype=torch.int32).view(height, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.int32).view(1, width).expand(height, width)
    return torch.stack([rows, cols])[None]


def test_crop_box_keeps_exactly_the_box():
    out = crop_box(position_image(10, 8), Box(top=2, left=3, height=4, width=5))
    assert out.shape == (1, 2, 4, 5)
    assert out[0, 0, :, 0].tolist() == [2, 3, 4, 5] and out[0, 1, 0].tolist() == [3, 4, 5, 6, 7]
    assert str(Box(2, 3, 4, 5)) == "rows 2-5, columns 3-7"


@pytest.mark.parametrize("box", [Box(-1, 0, 4, 4), Box(0, -1, 4, 4), Box(7, 0, 4, 4), Box(0, 5, 4, 4)])
def test_crop_box_outside_the_image_is_an_error_not_padding(box):
    with pytest.raises(ValueError, match="does not fit in a 8x10"):
        crop_box(position_image(10, 8), box)
