"""The denoiser: `diffusers`' UNet2DModel predicting the noise eps in z_t = alpha_t x + sigma_t eps.

Why diffusers' U-Net rather than one written here: it is maintained and tested by its authors, it is the
network released diffusion checkpoints load into (`google/ddpm-cifar10-32` is a UNet2DModel), and so the
model trained here and a published one are the same code. Its settings come from `DiffusionConfig`
(`unet_settings`), which describes Ho et al.'s U-Net the way their paper does. diffusers is imported
when a U-Net is built, not when oodbench.models is: the other families do not pay for it.

The U-Net's time input is on the 0..T scale of Ho et al.'s step index: the discrete step i itself, and
1000 t for continuous time (VDM's ScoreUNet embeds 1000 t too, `get_timestep_embedding`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from oodbench.models.diffusion.config import DiffusionConfig

# Continuous time t in [0, 1] enters the U-Net's sinusoidal embedding as TIME_SCALE * t.
TIME_SCALE = 1000.0


def unet_settings(config: DiffusionConfig) -> dict[str, Any]:
    """The keyword arguments of diffusers' UNet2DModel for `config` (the names of its config.json)."""
    sides = config.resolutions
    attention = set(config.attention_resolutions)
    return {
        "sample_size": config.image_size,
        "in_channels": config.in_channels * (1 + 2 * len(config.fourier_features)),
        "out_channels": config.in_channels,
        "block_out_channels": config.block_out_channels,
        "layers_per_block": config.layers_per_block,
        # level by level from the input down, then back up from the smallest side
        "down_block_types": tuple("AttnDownBlock2D" if side in attention else "DownBlock2D" for side in sides),
        "up_block_types": tuple("AttnUpBlock2D" if side in attention else "UpBlock2D" for side in reversed(sides)),
        "attention_head_dim": None,  # one head as wide as the block, as Ho et al.'s
        "dropout": config.dropout,
        "norm_num_groups": config.norm_groups,
        "norm_eps": config.norm_eps,
        "act_fn": "silu",
        "time_embedding_type": "positional",
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "freq_shift": config.freq_shift,
        "downsample_padding": config.downsample_padding,
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
    }


def build_unet(config: DiffusionConfig) -> nn.Module:
    from diffusers import UNet2DModel  # here, not at import: see the module docstring

    return UNet2DModel(**unet_settings(config))


def fourier_features(z: torch.Tensor, exponents: tuple[int, ...]) -> torch.Tensor:
    """VDM's `Base2FourierFeatures`: z (B, C, H, W) with sin and cos of 2^n 2 pi z for each exponent n appended
    as channels, (B, C (1 + 2 len(exponents)), H, W)."""
    if not exponents:
        return z
    angles = torch.cat([z * (2.0**n * 2 * math.pi) for n in exponents], dim=1)
    return torch.cat([z, angles.sin(), angles.cos()], dim=1)


class Denoiser(nn.Module):
    """eps_hat = U-Net(z, timestep): z (B, C, H, W) float, timestep [B] on the 0..T scale (float or long)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.unet = build_unet(config)
        self.fourier_exponents = config.fourier_features

    def forward(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(fourier_features(z, self.fourier_exponents), timestep, return_dict=False)[0]
