"""The invertible 1x1 convolution, LU-decomposed (Kingma & Dhariwal 2018, 3.2 and 3.3).

A learned C x C channel mixing, the generalisation of a fixed permutation, written as
W = P L (U + diag(sign * exp(log_s))) with P a fixed permutation, L unit lower-triangular and U strictly
upper-triangular. Then log|det W| = sum(log_s), so a layer costs H * W * sum(log_s) nats of volume
without ever computing a determinant. Initialised from a random rotation (log|det| = 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InvConv1x1(nn.Module):
    """z = W x at every pixel, with W parameterised by its LU decomposition."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(diagonal)))

    def weight(self) -> torch.Tensor:
        """The C x C matrix W, composed once per forward pass (it is shared by every pixel)."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.permutation @ (lower @ upper)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.weight()
        return F.conv2d(x, weight.view(*weight.shape, 1, 1)), self.logdet(x)

    def reverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inverse = torch.linalg.inv(self.weight())
        return F.conv2d(z, inverse.view(*inverse.shape, 1, 1)), -self.logdet(z)

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        """H * W * sum(log_s), the same for every sample, as a [B] tensor."""
        pixels = x.shape[2] * x.shape[3]
        return (pixels * self.log_s.sum()).expand(x.shape[0])
