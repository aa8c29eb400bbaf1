"""The diffusion family's decoder at t = 0 (models/diffusion/bound.py): its log-likelihood from the few levels
around z_0, `decoder_window`, equals the full 256-way log-softmax, for VDM's narrow decoder and for wider ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oodbench.models.diffusion import DiffusionConfig
from oodbench.models.diffusion.bound import decoder_log_prob, decoder_logits, decoder_window
from oodbench.units import N_LEVELS


def _full(config: DiffusionConfig, z0_rescaled: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    logits = decoder_logits(config, z0_rescaled.double()).reshape(-1, N_LEVELS)
    return -F.cross_entropy(logits, x.reshape(-1).long(), reduction="none").view(x.shape)


@pytest.mark.parametrize("gamma_min, window", [(-13.3, 2), (-8.0, 30), (-2.0, None)])
def test_the_windowed_decoder_equals_the_full_log_softmax(gamma_min, window):
    """Every level, both ends (z_0 beyond -1 and 1) and noise out to 8 standard deviations; float64 to 1e-12
    and float32 to its rounding. The window is the least W with s D^2 W (W + 1) / 2 >= 80, by hand: at
    gamma_0 = -13.3, s D^2 = e^13.3 (2/256)^2 = 36.4, so W = 2 (W = 1 gives 36.4 < 80)."""
    config = DiffusionConfig(gamma_min=gamma_min)
    assert decoder_window(config) == window
    generator = torch.Generator().manual_seed(0)
    x = torch.arange(N_LEVELS, dtype=torch.uint8).repeat(8)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    eps[:6] = torch.tensor([8.0, -8.0, 5.0, -5.0, 0.0, 0.5])
    eps[-6:] = torch.tensor([8.0, -8.0, 5.0, -5.0, 0.0, 0.5])  # level 255, pushed past 1 and back
    z0_rescaled = (x.double() + 0.5) * (2.0 / N_LEVELS) - 1.0 + math.exp(0.5 * gamma_min) * eps
    reference = _full(config, z0_rescaled, x)
    torch.testing.assert_close(decoder_log_prob(config, z0_rescaled, x), reference, rtol=0, atol=1e-12)
    z32 = z0_rescaled.float()  # float32 inputs: compared with the full log-softmax of the same rounded values
    ours32 = decoder_log_prob(config, z32, x)
    assert ours32.dtype == torch.float32
    torch.testing.assert_close(ours32.double(), _full(config, z32.double(), x), rtol=1e-5, atol=1e-5)
    assert reference.max() <= 0 and reference.min() < -1e-6  # not all certain: the neighbours do count
