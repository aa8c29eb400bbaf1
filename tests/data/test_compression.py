"""Lossless compressed lengths (input complexity's L(x)): the whole encoded file, lossless, cached."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from oodbench.data import compression
from oodbench.data.compression import compressed_bits
from oodbench.errors import OodbenchError


def images(seed: int = 0, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (3, channels, 32, 32), generator=g, dtype=torch.uint8)
    noise[1] = 77  # a constant image
    return noise


@pytest.mark.parametrize("codec, fmt, options", [("png", "PNG", {"compress_level": 9}),
                                                 ("jpeg2000", "JPEG2000", {"irreversible": False, "no_jp2": True})])
@pytest.mark.parametrize("channels", [1, 3])
def test_bits_are_eight_times_the_whole_lossless_file(codec, fmt, options, channels, fresh_cache):
    x = images(channels=channels)
    bits = compressed_bits(x, codec)
    for i, image in enumerate(x.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, 0] if channels == 1 else image).save(buffer, format=fmt, **options)
        assert bits[i] == 8 * len(buffer.getvalue())
        decoded = np.array(Image.open(io.BytesIO(buffer.getvalue())))
        assert np.array_equal(decoded.reshape(image.shape), image)  # lossless: the very same pixels
    assert bits[1] < bits[0] / 4  # a constant image is far simpler than noise


def test_lengths_are_cached_by_pixels_and_codec(fresh_cache, monkeypatch):
    x = images()
    first = compressed_bits(x, "png")
    monkeypatch.setattr(compression, "_encoded_bytes", lambda image, codec: pytest.fail("encoded again"))
    assert np.array_equal(compressed_bits(x, "png"), first)
    with pytest.raises(pytest.fail.Exception):
        compressed_bits(images(seed=1), "png")  # other pixels: encoded, not served from the cache


def test_unknown_codec():
    with pytest.raises(OodbenchError, match="unknown codec 'gif'; valid: png, jpeg2000"):
        compressed_bits(images(), "gif")
