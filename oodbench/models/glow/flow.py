"""Glow (Kingma & Dhariwal 2018): the flow step and the multi-scale model, the flow Nalisnick et al.
(2019) found rating SVHN above its own CIFAR-10 training data.

A step is the paper's three layers, each invertible with a cheap log-determinant:
    1. actnorm  2. permute (invertible 1x1 conv)  3. coupling
and its reverse undoes them backwards (3, 2, 1). The model (Figure 2 of the paper) runs L levels of
squeeze -> K steps -> split, the split factoring out half of the channels under a learned
conditional prior; the last level's z goes to the top prior. Then, by the change of variables,
    log p(y) = log_pz (all levels' priors) + logdet (every actnorm, 1x1 conv and coupling).

For Kamkari et al.'s dual threshold (`scores/dual_threshold.py`) Glow also gives, on request, each image's
local intrinsic dimension (`extra_statistic("lid")`, analysis/lid.py): the singular values of the Jacobian of
its generative map eps -> y, eps the standard-normal noise behind every latent (`to_noise`, `from_noise`).

Speed without changing the function: after actnorm's data-dependent initialisation, steps 1 and 2
are one affine 1x1 conv, W ((x + b) * s) = (W diag(s)) x + W (b * s), and the LU-composed W is built
once per call. `FlowStep.forward_unfused` is the literal reference the tests compare against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from oodbench.analysis.lid import flow_lid
from oodbench.data.quantize import dequantize
from oodbench.errors import OodbenchError
from oodbench.models.base import DequantizedFlow
from oodbench.models.glow.actnorm import ActNorm
from oodbench.models.glow.config import GlowConfig
from oodbench.models.glow.coupling import Coupling
from oodbench.models.glow.invconv import InvConv1x1
from oodbench.models.glow.squeeze_split import Split, TopPrior, squeeze, unsqueeze


class FlowStep(nn.Module):
    """One step of flow on (B, C, H, W): actnorm -> invertible 1x1 conv -> coupling."""

    def __init__(self, channels: int, hidden_channels: int, *, affine: bool = True, actnorm_scale: float = 1.0) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels, scale=actnorm_scale)
        self.invconv = InvConv1x1(channels)
        self.coupling = Coupling(channels, hidden_channels, affine=affine, actnorm_scale=actnorm_scale)

    def forward_unfused(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's step, layer by layer (also how actnorm sees its first batch)."""
        # 1. actnorm
        x, logdet_actnorm = self.actnorm(x)
        # 2. permute: the invertible 1x1 conv
        x, logdet_invconv = self.invconv(x)
        # 3. coupling
        x, logdet_coupling = self.coupling(x)
        return x, logdet_actnorm + logdet_invconv + logdet_coupling

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.actnorm.is_initialized():
            return self.forward_unfused(x)
        # 1. actnorm and 2. permute, folded into one affine 1x1 conv (same function, one pass over x).
        multiplier, offset = self.actnorm.affine()
        weight = self.invconv.weight()
        channels = weight.shape[0]
        x_mixed = F.conv2d(x, (weight * multiplier).view(channels, channels, 1, 1), weight @ offset)
        pixels = x.shape[2] * x.shape[3]
        logdet_linear = pixels * (self.actnorm.log_scale.sum() + self.invconv.log_s.sum())
        # 3. coupling
        y, logdet_coupling = self.coupling(x_mixed)
        return y, logdet_coupling + logdet_linear

    def reverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # 3. coupling
        y, logdet_coupling = self.coupling.reverse(y)
        # 2. permute
        y, logdet_invconv = self.invconv.reverse(y)
        # 1. actnorm
        x, logdet_actnorm = self.actnorm.reverse(y)
        return x, logdet_coupling + logdet_invconv + logdet_actnorm


class FlowLevel(nn.Module):
    """K steps of flow on the squeezed input, then (except at the top) a split."""

    def __init__(self, channels: int, config: GlowConfig, *, split: bool) -> None:
        super().__init__()
        self.steps = nn.ModuleList(
            FlowStep(channels, config.hidden_channels, affine=config.affine, actnorm_scale=config.actnorm_scale)
            for _ in range(config.steps)
        )
        self.split = Split(channels) if split else None


class Glow(DequantizedFlow):
    """Multi-scale Glow on y in [0,1)^D; see `GlowConfig` for its settings."""

    # "lid": each image's local intrinsic dimension, for the dual threshold (analysis/lid.py)
    extra_statistics = DequantizedFlow.extra_statistics + ("lid",)

    def __init__(self, config: GlowConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GlowConfig()
        channels = config.in_channels
        levels = []
        for level in range(config.levels):
            channels *= 4  # squeeze
            is_top = level == config.levels - 1
            levels.append(FlowLevel(channels, config, split=not is_top))
            if not is_top:
                channels //= 2  # split: half the channels leave for the prior
        self.levels = nn.ModuleList(levels)
        self.top_prior = TopPrior(channels, learn=config.learn_top)

    def _check_shape(self, y: torch.Tensor) -> None:
        factor = 2 ** self.config.levels
        if y.dim() != 4 or y.shape[1] != self.config.in_channels or y.shape[2] % factor or y.shape[3] % factor:
            raise OodbenchError(
                f"Glow with in_channels={self.config.in_channels} and levels={self.config.levels} needs images "
                f"(B, {self.config.in_channels}, H, W) with H and W divisible by {factor}; got {tuple(y.shape)}"
            )

    @property
    def part_names(self) -> tuple[str, ...]:
        levels = range(1, self.config.levels + 1)
        return ("log_pz", "logdet", *(f"log_pz_level{i}" for i in levels), *(f"logdet_level{i}" for i in levels))

    def _encode(self, y: torch.Tensor, keep_latents: bool, standard: bool = False,
                ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(latents if kept, the prior term of each level, the log-determinant of each level), finest first.
        A level's prior term is its split's conditional prior; the top level's is the top prior.
        `standard`: each latent kept as the N(0, I) noise its prior maps to it, (z - mean) / scale."""
        self._check_shape(y)
        x = y - 0.5  # centre the data; a shift has log-determinant 0
        latents, log_pz, logdet = [], [], []
        for level in self.levels:
            x = squeeze(x)
            level_logdet = y.new_zeros(y.shape[0])
            for step in level.steps:
                x, step_logdet = step(x)
                level_logdet = level_logdet + step_logdet
            logdet.append(level_logdet)
            if level.split is not None:
                x, z2, split_log_pz = level.split(x)
                log_pz.append(split_log_pz)
                if keep_latents and standard:  # the N(0, I) noise this prior maps to z2
                    mean, log_scale = level.split._mean_and_log_scale(x)
                    z2 = (z2 - mean) * (-log_scale).exp()
                if keep_latents:
                    latents.append(z2)
        log_pz.append(self.top_prior(x))
        if keep_latents and standard:
            x = (x - self.top_prior.mean.view(1, -1, 1, 1)) * (-self.top_prior.log_scale).exp().view(1, -1, 1, 1)
        if keep_latents:
            latents.append(x)
        return latents, log_pz, logdet

    def flow_parts(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample [B] in nats, for y in [0,1)^D of shape (B, C, H, W): `log_pz` and `logdet`, and each
        level's share of them, `log_pz_level<i>` and `logdet_level<i>` (i = 1 the finest)."""
        _, log_pz, logdet = self._encode(y, keep_latents=False)
        parts = {"log_pz": torch.stack(log_pz).sum(0), "logdet": torch.stack(logdet).sum(0)}
        parts.update({f"log_pz_level{i}": term for i, term in enumerate(log_pz, start=1)})
        parts.update({f"logdet_level{i}": term for i, term in enumerate(logdet, start=1)})
        return parts

    def encode(self, y: torch.Tensor) -> list[torch.Tensor]:
        """y -> [z of each split, ..., top z]: the latents, finest level first."""
        return self._encode(y, keep_latents=True)[0]

    def decode(self, latents: list[torch.Tensor | None], temperature: float = 1.0, *, standard: bool = False) -> torch.Tensor:
        """The inverse of `encode`; a None split latent is drawn from its prior at `temperature`. `standard`:
        the latents are N(0, I) noise, each mapped through its prior (mean + scale * noise) first."""
        if len(latents) != len(self.levels):
            raise OodbenchError(f"decode needs {len(self.levels)} latents (one per level), got {len(latents)}")
        x = latents[-1]
        if standard:
            x = self.top_prior.mean.view(1, -1, 1, 1) + self.top_prior.log_scale.exp().view(1, -1, 1, 1) * x
        split_latents = [*latents[:-1], None]  # the top level has no split
        for level, z2 in zip(reversed(self.levels), reversed(split_latents), strict=True):
            if level.split is not None:
                if standard and z2 is not None:
                    mean, log_scale = level.split._mean_and_log_scale(x)
                    z2 = mean + log_scale.exp() * z2
                x = level.split.reverse(x, z2, temperature)
            for step in reversed(level.steps):
                x = step.reverse(x)[0]
            x = unsqueeze(x)
        return x + 0.5

    def to_noise(self, y: torch.Tensor) -> torch.Tensor:
        """y (B, C, H, W) -> eps [B, D]: the standard-normal noise the generative map sends to y, every level's
        latent standardised by its prior and flattened, finest level first. `from_noise` inverts it."""
        return torch.cat([z.flatten(1) for z in self._encode(y, keep_latents=True, standard=True)[0]], dim=1)

    def from_noise(self, eps: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
        """eps [B, D] -> y (B, *image_shape): the generative map g, the inverse of `to_noise`."""
        channels, height, width = image_shape
        shapes = []
        for level in self.levels:  # each latent's (C, H, W), as `_encode` leaves them
            channels, height, width = 4 * channels, height // 2, width // 2
            if level.split is not None:
                shapes.append((channels - level.split.kept, height, width))
                channels = level.split.kept
        shapes.append((channels, height, width))
        parts = eps.split([math.prod(shape) for shape in shapes], dim=1)
        return self.decode([part.reshape(-1, *shape) for part, shape in zip(parts, shapes, strict=True)], standard=True)

    def extra_statistic(self, name: str, x: torch.Tensor, noise: torch.Tensor | None,
                        settings: dict[str, float]) -> dict[str, torch.Tensor]:
        """"lid": per image, `lid` (singular values of the generative map's Jacobian above e^lid_delta) and
        `lid_lidl` (the linearised LIDL rate at lid_delta), analysis/lid.py, at the dequantized image the
        likelihood was scored at; NaN for images outside the subsample (`lid_subsample`)."""
        if name != "lid":
            return super().extra_statistic(name, x, noise, settings)
        lids = {key: x.new_full((x.shape[0],), float("nan"), dtype=torch.float32) for key in ("lid", "lid_lidl")}
        chosen = lid_subsample(noise, x.shape[0], settings["lid_fraction"]).to(x.device)
        if chosen.any():
            y = dequantize(x, noise)[chosen]
            found = flow_lid(lambda eps: self.from_noise(eps, tuple(y.shape[1:])), self.to_noise(y),
                             settings["lid_delta"])
            for key, value in found.items():
                lids[key][chosen] = value.float()
        return lids

    def statistic_passes(self, name: str, settings: dict[str, float]) -> str:
        if name == "lid":
            share = f"on a {settings['lid_fraction']:g} share of images" if settings["lid_fraction"] else "off"
            return f"D Jacobian-vector products through the inverse and a D x D eigendecomposition per image, {share}"
        return super().statistic_passes(name, settings)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, *, image_size: tuple[int, int]) -> torch.Tensor:
        """n images y in (roughly) [0, 1) of the given (height, width), at the given temperature."""
        factor = 2 ** self.config.levels
        height, width = image_size
        if height % factor or width % factor:
            raise OodbenchError(f"image_size {image_size} must be divisible by {factor} for {self.config.levels} levels")
        top = self.top_prior.sample(n, height // factor, width // factor, temperature)
        return self.decode([None] * (len(self.levels) - 1) + [top], temperature)


def lid_subsample(noise: torch.Tensor | None, n: int, fraction: float | None) -> torch.Tensor:
    """Which images of a batch get an LID (bool [n]): a seeded Bernoulli(`fraction`) draw per image, read off
    the first value of its dequantization noise, uniform and a function of (noise seed, image index) only
    (data/quantize.py), so the subsample depends neither on batching nor on the process count. The exact
    Jacobian costs D products per image, so the LID is taken on a subsample, as the authors do (128 images per
    set); None or 0: no image. Without noise (a direct call): every image when `fraction` is set."""
    if not fraction:
        return torch.zeros(n, dtype=torch.bool)
    if noise is None:
        return torch.ones(n, dtype=torch.bool)
    return noise.reshape(n, -1)[:, 0] < fraction
