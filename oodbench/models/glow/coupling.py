"""The coupling layer (Kingma & Dhariwal 2018, 3.3; Dinh et al. 2017).

Split the channels into x_a and x_b; x_a passes unchanged and conditions an invertible map of x_b:
- affine (Glow): (t, raw) = NN(x_a), s = sigmoid(raw + 2), x_b' = (x_b + t) * s, log|det| = sum log s.
  The sigmoid (instead of exp) is Glow's released code's stable choice: s stays in (0, 1) and starts
  near 0.88, so no step can blow the scale up early in training.
- additive (CV-Glow, Nalisnick et al. 2019 Section 5): x_b' = x_b + t(x_a), log|det| = 0, so the
  flow's volume term no longer depends on the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oodbench.models.glow.nets import CouplingNetwork


class Coupling(nn.Module):
    """Affine or additive coupling on (B, C, H, W), C even; the first C/2 channels condition the rest."""

    def __init__(self, channels: int, hidden_channels: int, *, affine: bool = True, actnorm_scale: float = 1.0) -> None:
        super().__init__()
        self.affine = affine
        self.half = channels // 2
        out_channels = 2 * (channels - self.half) if affine else channels - self.half
        self.net = CouplingNetwork(self.half, out_channels, hidden_channels, actnorm_scale=actnorm_scale)

    def _halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # `split` rather than slicing: its backward is a `cat`, which keeps the gradient channels-last
        # (a slice's backward builds a zero tensor in the default layout, and every conv after it
        # would then convert layouts).
        return x.split([self.half, x.shape[1] - self.half], dim=1)

    def _shift_and_log_scale(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a)
        if not self.affine:
            return h, None
        # The first half of NN's output channels is the shift, the second the scale logits.
        shift, raw_scale = h.chunk(2, dim=1)
        return shift, F.logsigmoid(raw_scale + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = self._halves(x)
        shift, log_scale = self._shift_and_log_scale(x_a)
        if log_scale is None:
            return torch.cat([x_a, x_b + shift], dim=1), x.new_zeros(x.shape[0])
        y_b = (x_b + shift) * log_scale.exp()
        return torch.cat([x_a, y_b], dim=1), log_scale.sum(dim=(1, 2, 3))

    def reverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_a, y_b = self._halves(y)
        shift, log_scale = self._shift_and_log_scale(y_a)
        if log_scale is None:
            return torch.cat([y_a, y_b - shift], dim=1), y.new_zeros(y.shape[0])
        x_b = y_b * (-log_scale).exp() - shift
        return torch.cat([y_a, x_b], dim=1), -log_scale.sum(dim=(1, 2, 3))
