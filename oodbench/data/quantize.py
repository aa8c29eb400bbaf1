"""Quantisation and dequantisation of 8-bit images, in one place, as pure functions.

Continuous models of discrete pixels are fed y = (x + u) / 256 with u ~ U[0,1)^D; then
log p_discrete(x) >= E_u[log p_cont(y)] - D ln 256 (PAPER.md, "Units"). A model uniform on [0,1)^D
therefore scores exactly 8.0 bits/dim.

For evaluation the noise u must not depend on batch size, device or the number of processes, so
`index_noise` derives it from a counter-based hash of (seed, sample index, pixel position): the same
sample always gets the same noise, computed on whatever device the batch lives on; `standard_normal`
turns it into Gaussian draws (the VAE's latents, the diffusion model's noise).
"""

from __future__ import annotations

import math

import torch

from oodbench.units import N_LEVELS

LOG_N_LEVELS = math.log(N_LEVELS)  # nats per dimension lost by mapping [0,256) onto [0,1)

_MASK32 = 0xFFFFFFFF
# Multipliers below 2**31 so that a 32-bit value times one of them fits in int64 without overflow.
_M1, _M2, _M3 = 0x7FEB352D, 0x2C1B3C6D, 0x297A2D39


def _hash32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply rounds) on int64 tensors holding 32-bit values."""
    h = h & _MASK32
    h = ((h ^ (h >> 16)) * _M1) & _MASK32
    h = ((h ^ (h >> 15)) * _M2) & _MASK32
    h = ((h ^ (h >> 15)) * _M3) & _MASK32
    return h ^ (h >> 16)


def index_noise(index: torch.Tensor, shape: tuple[int, ...], seed: int, device=None) -> torch.Tensor:
    """Uniform noise in [0, 1) of shape (B, *shape) that depends only on (seed, index[b], position).

    `index` holds each sample's position in its dataset split (int64, shape [B]).
    """
    device = index.device if device is None else device
    n = math.prod(shape)
    pos = torch.arange(n, device=device, dtype=torch.int64)
    key = _hash32(index.to(device=device, dtype=torch.int64) * 0x9E3779B1 + _hash32(torch.tensor(seed, device=device)))
    h = _hash32(key[:, None] * 0x01000193 + pos[None, :] + 0x5BD1E995)
    h = _hash32(h ^ key[:, None])
    # Top 24 bits -> an exactly representable float32 in [0, 1).
    return ((h >> 8).to(torch.float32) * (1.0 / 2**24)).view(-1, *shape)


# index_noise is a multiple of 2**-24 in [0, 1); moving it half a step up puts it strictly inside (0, 1),
# where ndtri is finite. In float64: in float32, 1 - 2**-24 + 2**-25 rounds to 1.0 and ndtri(1.0) = inf,
# which made a sample's IWAE NaN about once in 2**24 draws (the quick sweep hit it).
_HALF_STEP = 2.0**-25


def standard_normal(uniform: torch.Tensor) -> torch.Tensor:
    """Standard-normal draws (float32) from `index_noise`'s uniform values, finite for every one of them
    (the inverse normal CDF of each value moved half a grid step up: k and 2**24 - 1 - k map to opposite draws)."""
    return torch.special.ndtri(uniform.double() + _HALF_STEP).float()


def dequantize(x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Map uint8 pixels x (B, C, H, W) to y = (x + u) / 256 in [0, 1).

    `noise` defaults to fresh uniform noise (training); pass `index_noise(...)` for evaluation.
    """
    x = x.to(torch.float32)
    if noise is None:
        noise = torch.rand_like(x)
    y = (x + noise) * (1.0 / N_LEVELS)
    # In float32, 255 + u rounds to 256 for u >= 1 - 2**-17 (the spacing of floats near 255 is 2**-16), so
    # y would be exactly 1.0, outside [0, 1): a flow with a logit step would give inf there. The largest
    # value below 1 in y's dtype replaces exactly that value, and nothing else: every y below 1 is left as
    # it was, and a y above 1 (a bug upstream, never rounding) stays visible instead of being clamped away.
    return torch.where(y == 1.0, 1.0 - torch.finfo(y.dtype).eps / 2, y)


def equal_bin_centres(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the centres of their 256 equal bins of [-1, 1]: 2 (x + 1/2) / 256 - 1, float32.
    A variational diffusion model's data (Kingma et al. 2021, VDM's `encode`), and its decoder's 256 levels.
    (PixelCNN++ and DDPM put the levels at k / 127.5 - 1 instead, ends at -1 and 1: pixelcnn.logistic_mixture.)"""
    return (x.to(torch.float32) + 0.5) * (2.0 / N_LEVELS) - 1.0


def discretization_nats(n_dims: int) -> float:
    """The -D ln 256 term that turns a density on [0,1)^D into a probability of 8-bit pixels."""
    return -n_dims * LOG_N_LEVELS
