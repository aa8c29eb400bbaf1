"""The non-invertible networks inside Glow: the coupling network NN() and the zero-initialised
convolution it ends with, which the split prior uses too (Kingma & Dhariwal 2018, 3.3 and Table 1).

NN(x_a) = conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU -> zero conv3x3. The last conv
starts at zero, so every coupling starts as the identity and the flow trains from a stable point.

Speed: a conv followed by actnorm is one conv with rescaled weights and a bias
(s * (W x) + o = (s W) x + o), so after actnorm's data-dependent initialisation `ConvActNorm` runs a
single fused conv. The result is the same function; tests compare both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oodbench.models.glow.actnorm import ActNorm


class ConvActNorm(nn.Module):
    """A bias-free conv whose output goes through actnorm (Glow's hidden-layer convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, actnorm_scale: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.conv.weight.data.normal_(0.0, 0.05)  # Glow's initialisation of hidden convs
        self.actnorm = ActNorm(out_channels, scale=actnorm_scale)

    def forward_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """The reference: conv, then actnorm (which initialises itself on the first batch)."""
        return self.actnorm(self.conv(x))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.actnorm.is_initialized():
            return self.forward_unfused(x)
        multiplier, offset = self.actnorm.affine()
        weight = self.conv.weight * multiplier.view(-1, 1, 1, 1)
        return F.conv2d(x, weight, offset, padding=self.conv.padding)


class ZeroConv2d(nn.Module):
    """A 3x3 conv that starts at exactly zero, with Glow's learned output scale exp(3 * log_scale).

    The factor 3 lets the scale move faster than plain parameters would; a conv times a per-channel
    factor is still one conv, so it is applied to the weights, not to the (larger) output.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.log_scale = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = (3.0 * self.log_scale).exp()
        return F.conv2d(x, self.weight * factor.view(-1, 1, 1, 1), self.bias * factor, padding=1)


class CouplingNetwork(nn.Module):
    """NN(x_a) -> out_channels maps (Glow's shift and scale logits), zero at initialisation."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, *, actnorm_scale: float = 1.0) -> None:
        super().__init__()
        self.conv_in = ConvActNorm(in_channels, hidden_channels, 3, actnorm_scale=actnorm_scale)
        self.conv_hidden = ConvActNorm(hidden_channels, hidden_channels, 1, actnorm_scale=actnorm_scale)
        self.conv_out = ZeroConv2d(hidden_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: a conv's backward needs its input, not its output, so the conv output can be
        # overwritten; this saves two large allocations per step.
        h = F.relu(self.conv_in(x), inplace=True)
        h = F.relu(self.conv_hidden(h), inplace=True)
        return self.conv_out(h)
