"""Actnorm: a per-channel affine map y = (x + bias) * exp(log_scale) (Kingma & Dhariwal 2018, 3.1).

Its parameters are initialised from the first batch it sees, so that the output has zero mean and
unit variance per channel (times `scale`). The "initialized" flag is a registered buffer: it travels
with `state_dict()`, so a model reloaded from a checkpoint is never re-initialised on new data.
The same layer also normalises the hidden activations inside the coupling networks (`nets.py`).
"""

from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine layer with data-dependent initialisation, on (B, C, H, W) tensors."""

    def __init__(self, channels: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.scale = scale
        self.register_buffer("initialized", torch.tensor(False))
        # A Python mirror of the buffer, so the hot path does not read a tensor (a device sync on
        # GPU) on every call; any `load_state_dict` resets it to "ask the buffer again".
        self._known_initialized = False
        self.register_load_state_dict_post_hook(ActNorm._forget_initialized)

    @staticmethod
    def _forget_initialized(module: nn.Module, incompatible_keys) -> None:
        module._known_initialized = False

    def is_initialized(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def ensure_initialized(self, x: torch.Tensor) -> None:
        """Set bias and scale from the statistics of `x` (the first batch), once."""
        if self.is_initialized():
            return
        with torch.no_grad():
            mean = x.mean(dim=(0, 2, 3))
            std = (x - mean.view(1, -1, 1, 1)).pow(2).mean(dim=(0, 2, 3)).sqrt()
            self.bias.copy_(-mean)
            # Glow's epsilon: a channel that is constant on the first batch must not blow up.
            self.log_scale.copy_(torch.log(self.scale / (std + 1e-6)))
            self.initialized.fill_(True)
        self._known_initialized = True

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(multiplier, offset) with y = multiplier * x + offset, per channel; for folding into a conv."""
        multiplier = self.log_scale.exp()
        return multiplier, self.bias * multiplier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.ensure_initialized(x)
        y = (x + self.bias.view(1, -1, 1, 1)) * self.log_scale.exp().view(1, -1, 1, 1)
        return y, self.logdet(x)

    def reverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = y * (-self.log_scale).exp().view(1, -1, 1, 1) - self.bias.view(1, -1, 1, 1)
        return x, -self.logdet(y)

    def logdet(self, x: torch.Tensor) -> torch.Tensor:
        """H * W * sum(log_scale), the same for every sample, as a [B] tensor."""
        pixels = x.shape[2] * x.shape[3]
        return (pixels * self.log_scale.sum()).expand(x.shape[0])
