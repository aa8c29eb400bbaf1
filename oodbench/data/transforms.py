"""Pixel-level conversions on uint8 image batches: padding, luminance, channel matching, crop, resize.

All of them take and return uint8 (N, C, H, W) tensors, so a converted set is still exact 8-bit data
that the models' dequantisation (`quantize.py`) treats like any other. Luminance uses the ITU-R BT.601
weights (0.299 R + 0.587 G + 0.114 B), the same as PIL's "L" mode, rounded to the nearest level.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from oodbench.data.imageset import ImageSet
from oodbench.errors import OodbenchError

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# Converting in chunks keeps the float32 intermediate small (CIFAR-10 train in one go is 600 MB).
_CHUNK = 4096


def pad(images: torch.Tensor, border: int) -> torch.Tensor:
    """Zero-pad `border` pixels on every side (28x28 MNIST-like sets -> 32x32, as in the paper)."""
    if border == 0:
        return images
    return F.pad(images, (border, border, border, border), mode="constant", value=0)


def unpad(images: torch.Tensor, border: int) -> torch.Tensor:
    """The inverse of `pad`: drop `border` pixels on every side."""
    if border == 0:
        return images
    return images[..., border:-border, border:-border]


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 1, H, W) uint8 luminance, rounded."""
    if images.shape[1] != 3:
        raise ValueError(f"luminance needs 3 channels, got {images.shape[1]}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((images.shape[0], 1, *images.shape[2:]), dtype=torch.uint8)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start:start + _CHUNK].to(torch.float32)
        out[start:start + _CHUNK] = (chunk * weights).sum(dim=1, keepdim=True).round_().clamp_(0, 255)
    return out


def replicate(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """(N, 1, H, W) -> (N, channels, H, W), copied (not a stride-0 view) so it is contiguous."""
    return images.expand(-1, channels, -1, -1).contiguous()


def gray3(images: torch.Tensor) -> torch.Tensor:
    """RGB -> luminance replicated to 3 channels: the "gray:" prefix, same shape as the input."""
    return replicate(luminance(images), 3)


def match_channels(images: ImageSet, channels: int) -> ImageSet:
    """Convert an ImageSet to `channels` channels: 1 -> 3 replicates, 3 -> 1 takes the luminance.

    Used only when asked (evaluate's --match-channels): a silent conversion would change what the
    OOD set is, so the caller decides and the source says it happened.
    """
    have = images.shape[0]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        converted = replicate(images.images, 3)
    elif have == 3 and channels == 1:
        converted = luminance(images.images)
    else:
        raise OodbenchError(f"cannot convert {images.name} from {have} to {channels} channels; "
                            "only 1 <-> 3 is supported")
    return dataclasses.replace(images, images=converted,
                               source=f"{images.source} (converted from {have} to {channels} channels)")


class Box(NamedTuple):
    """A crop box in pixels, 0-based: rows top .. top+height-1, columns left .. left+width-1.

    As numpy indexing on an (H, W, C) image: `x[top:top + height, left:left + width]`.
    """

    top: int
    left: int
    height: int
    width: int

    def __str__(self) -> str:
        return (f"rows {self.top}-{self.top + self.height - 1}, "
                f"columns {self.left}-{self.left + self.width - 1}")


def crop_box(images: torch.Tensor, box: Box) -> torch.Tensor:
    """(..., H, W) -> (..., box.height, box.width): exactly the pixels inside `box` (a view).

    Unlike torchvision's crop, a box reaching outside the image is an error, never zero padding.
    """
    height, width = images.shape[-2:]
    if box.top < 0 or box.left < 0 or box.top + box.height > height or box.left + box.width > width:
        raise ValueError(f"crop box ({box}) does not fit in a {width}x{height} (WxH) image")
    return images[..., box.top:box.top + box.height, box.left:box.left + box.width]


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to size x size, bilinear with antialiasing (a no-op, copied contiguous, at that size already).

    Antialiasing matters when shrinking 148 -> 32 or 64 -> 32: plain bilinear would alias and give the
    images a high-frequency texture a likelihood model would happily spend bits on.
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images.contiguous()
    return TF.resize(images.contiguous(), [size, size], interpolation=TF.InterpolationMode.BILINEAR,
                     antialias=True)


def crop_resize(images: torch.Tensor, size: int, box: Box | None = None) -> torch.Tensor:
    """Optionally crop to `box` (`crop_box`), then resize to size x size with antialiasing (`resize`)."""
    return resize(images if box is None else crop_box(images, box), size)

