"""Lossless compressed lengths of images: the L(x) of input complexity (Serra et al., ICLR 2020).

Byte-counting rule, one for both codecs: the whole file the codec writes for the one image, headers
included, as Serra et al.'s code measured it (the length of the encoded buffer), times 8 bits.
- `png`: PNG at zlib level 9 (Pillow);
- `jpeg2000`: lossless JPEG 2000 (the reversible 5/3 wavelet, OpenJPEG through Pillow), written as a
  raw codestream (`.j2k`, no JP2 container box around it).
The image is the one the model scores, at the model's input size and channels (a 28x28 grey image
padded to 32x32 is compressed padded; `gray:` sets as their 3 equal channels).

Encoding is a few hundred microseconds to a few milliseconds per 32x32 image, so results are cached
in the oodbench cache (`<cache>/compressed/`), keyed by the codec and a hash of the pixels: a set
compressed once is not compressed again by any run.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from oodbench.atomic import write_arrays
from oodbench.data.cache import cache_dir
from oodbench.errors import OodbenchError

_OPTIONS = {"png": ("PNG", {"compress_level": 9}), "jpeg2000": ("JPEG2000", {"irreversible": False, "no_jp2": True})}
CODECS = tuple(_OPTIONS)
_RULE = "whole-file-v1"  # part of the cache key: change it with the byte-counting rule


def _encoded_bytes(image: np.ndarray, codec: str) -> int:
    """Length of one (H, W, C) uint8 image's encoded file."""
    fmt, options = _OPTIONS[codec]
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getbuffer().nbytes


def compressed_bits(images: torch.Tensor, codec: str) -> np.ndarray:
    """Bits of each image's lossless encoding (int64, one per image) of uint8 images (N, C, H, W)."""
    return compressed_bits_timed(images, codec)[0]


def compressed_bits_timed(images: torch.Tensor, codec: str) -> tuple[np.ndarray, float]:
    """`compressed_bits`, and the seconds per image the encoding took where it was computed (cached with
    the lengths, so a cache hit still reports what the encoding costs; NaN for an entry cached without it)."""
    if codec not in _OPTIONS:
        raise OodbenchError(f"unknown codec {codec!r}; valid: {', '.join(CODECS)}")
    pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
    key = hashlib.sha256(f"{codec}-{_RULE}-{pixels.shape}".encode() + pixels.tobytes()).hexdigest()[:24]
    path = cache_dir() / "compressed" / f"{codec}-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            cached = archive["bits"]
            seconds = float(archive["seconds"][0]) if "seconds" in archive.files else float("nan")
        if cached.shape == (len(pixels),):
            return cached, seconds
    except (OSError, ValueError, KeyError):
        pass
    started = time.perf_counter()
    # zlib and OpenJPEG release the GIL while they encode: threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        bits = 8 * np.fromiter(pool.map(lambda image: _encoded_bytes(image, codec), pixels), dtype=np.int64,
                               count=len(pixels))
    seconds = (time.perf_counter() - started) / max(1, len(pixels))
    try:
        write_arrays(path, {"bits": bits, "seconds": np.array([seconds])})
    except OSError:  # a read-only or full cache: slower next time, nothing else
        pass
    return bits, seconds
