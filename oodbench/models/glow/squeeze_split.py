"""The multi-scale architecture's glue (Dinh et al. 2017, 4.1; Kingma & Dhariwal 2018, Figure 2):
squeeze, split with a learned conditional prior, and the top prior.

- squeeze trades space for channels, (C, H, W) -> (4C, H/2, W/2): every 2x2 patch becomes 4 channels,
  so the 1x1 convs and couplings of the next level see a larger spatial context.
- split factors out half of the channels z2 at the end of a level; they are modelled by a Gaussian
  whose mean and log-scale are a zero-initialised conv of the kept half z1 (Glow's "split with
  learned prior"), and z1 goes on to the next level.
- the top prior models the last level's z with a learned per-channel mean and log-scale.

Squeeze and split are volume-preserving rearrangements: their log-determinant is 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from oodbench.models.glow.nets import ZeroConv2d

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """sum over (C, H, W) of log N(z; mean, exp(log_scale)^2), per sample [B], in nats."""
    log_density = -HALF_LOG_2PI - log_scale - 0.5 * ((z - mean) * (-log_scale).exp()) ** 2
    return log_density.sum(dim=(1, 2, 3))


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2); output channel 4c + 2i + j holds pixel (2h + i, 2w + j) of c.

    The result is stored channels-last (pixels outer, channels inner), the layout in which the
    convolutions below run fastest on CPU (oneDNN); every later layer keeps that layout. The values
    are the same whatever the layout: only the speed depends on it.
    """
    b, c, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c)  # (B, H/2, i, W/2, j, C)
    x = x.permute(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)  # (B, H/2, W/2, [C, i, j])
    return x.permute(0, 3, 1, 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `squeeze`: (B, 4C, H, W) -> (B, C, 2H, 2W), also stored channels-last."""
    b, c4, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, h, w, c4 // 4, 2, 2)  # (B, H, W, C, i, j)
    x = x.permute(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c4 // 4)  # (B, 2H, 2W, C)
    return x.permute(0, 3, 1, 2)


class Squeeze(nn.Module):
    """`squeeze` as a flow layer: forward/reverse return (output, logdet = 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squeeze(x), x.new_zeros(x.shape[0])

    def reverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return unsqueeze(y), y.new_zeros(y.shape[0])


class Split(nn.Module):
    """Factor out z2 (the last C/2 channels) with the prior p(z2 | z1) = N(mean(z1), exp(log_scale(z1)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.kept = channels // 2
        self.prior = ZeroConv2d(self.kept, 2 * (channels - self.kept))

    def _mean_and_log_scale(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.prior(z1).chunk(2, dim=1)
        return mean, log_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (z1, z2, log p(z2 | z1) per sample)."""
        # `split`, not slicing, so that the gradient stays channels-last (see coupling.py).
        z1, z2 = x.split([self.kept, x.shape[1] - self.kept], dim=1)
        mean, log_scale = self._mean_and_log_scale(z1)
        return z1, z2, gaussian_log_density(z2, mean, log_scale)

    def reverse(self, z1: torch.Tensor, z2: torch.Tensor | None = None, temperature: float = 1.0) -> torch.Tensor:
        """(z1, z2) -> x; without z2, draw it from the prior at the given temperature."""
        if z2 is None:
            mean, log_scale = self._mean_and_log_scale(z1)
            z2 = mean + temperature * log_scale.exp() * torch.randn_like(mean)
        return torch.cat([z1, z2], dim=1)


class TopPrior(nn.Module):
    """The last level's prior: N(mean_c, exp(log_scale_c)) per channel, learned when `learn`.

    Per channel (not per pixel), so the model has no parameter tied to the image size.
    """

    def __init__(self, channels: int, *, learn: bool = True) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(channels), requires_grad=learn)
        self.log_scale = nn.Parameter(torch.zeros(channels), requires_grad=learn)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) per sample [B]."""
        return gaussian_log_density(z, self.mean.view(1, -1, 1, 1), self.log_scale.view(1, -1, 1, 1))

    def sample(self, n: int, height: int, width: int, temperature: float = 1.0) -> torch.Tensor:
        shape = (n, self.mean.shape[0], height, width)
        noise = torch.randn(shape, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean.view(1, -1, 1, 1) + temperature * self.log_scale.exp().view(1, -1, 1, 1) * noise
