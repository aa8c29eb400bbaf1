"""Noise schedules: how much signal is left at time t, as pure functions of the config.

Both parameterisations are variance preserving, z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1,
and are written through gamma = log(sigma^2 / alpha^2), the negative log signal-to-noise ratio of Kingma et
al. 2021 ("Variational Diffusion Models", eq. 3-5): alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma).

- continuous (VDM): gamma(t) = gamma_min + (gamma_max - gamma_min) t for t in [0, 1], VDM's fixed linear
  schedule (`NoiseSchedule_FixedLinear` in google-research/vdm), so gamma'(t) is a constant.
- discrete (Ho et al. 2020, DDPM): betas linear from beta_start to beta_end over T steps, in float32 as
  diffusers' DDPMScheduler makes them (then float64), alpha_bar_i = prod_{s <= i} (1 - beta_s); step i in
  0..T-1 is time t = (i + 1) / T (VDM's t(i) = i / T with diffusers' index from 0).
"""

from __future__ import annotations

import torch

from oodbench.models.diffusion.config import DiffusionConfig


def gamma(config: DiffusionConfig, t: torch.Tensor) -> torch.Tensor:
    """Continuous time's gamma(t) = log(sigma_t^2 / alpha_t^2), same shape and dtype as t."""
    return config.gamma_min + (config.gamma_max - config.gamma_min) * t


def gamma_rate(config: DiffusionConfig) -> float:
    """d gamma / dt, the weight of the continuous-time diffusion loss (a constant for the linear schedule)."""
    return config.gamma_max - config.gamma_min


def alpha_sigma_of_gamma(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)."""
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


def ddpm_betas(config: DiffusionConfig) -> torch.Tensor:
    """Ho et al.'s linear betas [T], float64 holding diffusers' float32 values (so a bound computed with them
    matches one computed with the DDPMScheduler of a released checkpoint)."""
    return torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float32).double()


def ddpm_alpha_bar(config: DiffusionConfig) -> torch.Tensor:
    """alpha_bar_i = prod_{s <= i} (1 - beta_s), [T] float64."""
    return torch.cumprod(1.0 - ddpm_betas(config), dim=0)


def nearest_step(config: DiffusionConfig, t: torch.Tensor) -> torch.Tensor:
    """The discrete step index (long) nearest to continuous time t in [0, 1]: step i is t = (i + 1) / T."""
    return (t.double() * config.timesteps - 1).round().clamp(0, config.timesteps - 1).long()
