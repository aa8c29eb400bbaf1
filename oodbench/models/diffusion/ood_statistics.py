"""What a diffusion model says about one image beyond its likelihood: the statistics two published OOD scores
read (`scores/diffpath.py`, `scores/msma.py`). Both are deterministic functions of the image (no noise is
drawn), computed only when one of the scores asks for them (the model's `extra_statistic`), per image, so
they do not depend on batch size or device.

The model is any diffusion model offering, on images scaled to [-1, 1] (`scaled`), the noise prediction
`eps(z_t, t)` at time t in [0, 1] (0: data, 1: noise) and its variance-preserving schedule
`alpha_sigma(t)`, z_t = alpha_t x + sigma_t eps.

DiffPath (Heng, Thiery & Soh, NeurIPS 2024, "Out-of-distribution detection with a single unconditional
diffusion model"; the authors' code clear-nus/diffpath @6f92000, save_train_statistics.py and
improved_diffusion/gaussian_diffusion.py `ddim_reverse_sample_loop`): the deterministic DDIM path from the
image to noise in N steps (`diffpath_steps`, their `--n_ddim_steps 10`). Their respaced "ddimN" grid
evaluates the network at the N times t_i = i / N, i = 0..N-1 (timesteps 0, T/N, ..., (N-1)T/N of T), starting
from the image itself (z_0 = x), and steps each by DDIM's equation 12 reversed:

    1. eps_i = eps(z_i, t_i)
    2. x0_i = (z_i - sigma_i eps_i) / alpha_i, clipped to [-1, 1]; where clipping changed it, eps_i is
       re-derived from the clipped x0, eps_i = (z_i - alpha_i x0_i) / sigma_i (their clip_denoised=True)
    3. z_{i+1} = alpha_{i+1} x0_i + sigma_{i+1} eps_i

(their last step goes to alpha = 0; it changes no statistic, so it is not taken: N network passes). The
statistics are theirs, summed over the path and every pixel of the image:

    "diffpath:eps_sum", "diffpath:eps_sum_sq", "diffpath:eps_sum_cb"     sum of eps_i, eps_i^2, eps_i^3
    "diffpath:deps_dt", "diffpath:deps_dt_sq", "diffpath:deps_dt_cb"     the same of N (eps_{i+1} - eps_i)

N (eps_{i+1} - eps_i) is their finite-difference rate of change d eps / dt (`np.diff(eps, axis=1) *
n_ddim_steps`, N - 1 differences). DiffPath-6D reads all six; DiffPath-1D reads sqrt(deps_dt_sq), their
`deps_dt_sq_sqrt`.

MSMA (Mahmood, Oliva & Styner, ICLR 2021, "Multiscale score matching for out-of-distribution detection";
the authors' code ahsanMah/msma @8012441, ood_detection_helper.py `compute_weighted_scores`, utils.py
`get_sigma_levels`): the L2 norm of the noise-conditional score network's output at the clean image, scaled
by its noise level, ||sigma_l s(x, sigma_l)||, at L levels (`msma_levels`, their `--num_L 10`) spaced
geometrically from sigma_high = 1 to sigma_low = 0.01 (their defaults) on pixels in [0, 1]. Their network is
variance exploding (x + sigma eps); here the model is variance preserving, and the two meet through
z_t / alpha_t = x + (sigma_t / alpha_t) eps: level sigma on [0, 1] pixels is sigma_t / alpha_t = 2 sigma on
[-1, 1] pixels (found by bisection on the model's schedule), the clean image sits at z_t = alpha_t x, and
sigma s(x, sigma) = -eps(z_t, t), whose norm is the same on either pixel scale. So per level l:

    "msma:norm_ll" = || eps(alpha_t x, t) ||   with sigma_t / alpha_t = 2 sigma_l, l = 0 (sigma = 1) .. L - 1

one network pass per level.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from oodbench.schema import diffpath_column, msma_column

# MSMA's noise levels on pixels in [0, 1] (ahsanMah/msma configs: --sigma_high 1.0, --sigma_low 0.01, geometric).
MSMA_SIGMA_HIGH = 1.0
MSMA_SIGMA_LOW = 0.01
# MSMA's pixels span [0, 1], the model's [-1, 1]: a noise level on theirs is twice as large on ours.
PIXEL_SCALE = 2.0
BISECTION_STEPS = 60  # halvings of [0, 1] when solving sigma_t / alpha_t = level: below float32's resolution


class DiffusionModel(Protocol):
    """What these statistics need of a diffusion model (see the module docstring)."""

    def scaled(self, x: torch.Tensor) -> torch.Tensor: ...

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _coefficients(model: DiffusionModel, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha, sigma = model.alpha_sigma(t)
    return alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)


@torch.no_grad()
def ddim_path_eps(model: DiffusionModel, x: torch.Tensor, steps: int, *, clip: bool = True) -> torch.Tensor:
    """The noise predictions eps_0 .. eps_{N-1} (N, B, C, H, W) along DiffPath's DDIM path from images `x`
    (B, C, H, W, scaled to [-1, 1]) towards noise, N = `steps` (module docstring, steps 1-3)."""
    if steps < 2:
        raise ValueError(f"DiffPath's path needs at least 2 steps (a rate of change); got {steps}")
    batch = x.shape[0]
    z, path = x, []
    for i in range(steps):
        t = torch.full((batch,), i / steps, device=x.device, dtype=x.dtype)
        alpha, sigma = _coefficients(model, t)
        # 1. the network's noise prediction at z_i
        eps = model.eps(z, t)
        # 2. the predicted image, clipped as their clip_denoised=True does, and eps re-derived from it
        x0 = (z - sigma * eps) / alpha
        if clip:
            clipped = x0.clamp(-1.0, 1.0)
            eps = torch.where(clipped != x0, (z - alpha * clipped) / sigma.clamp_min(torch.finfo(x.dtype).tiny), eps)
            x0 = clipped
        path.append(eps)
        # 3. the deterministic step to the next time (none after the last evaluation: no statistic reads it)
        if i + 1 < steps:
            alpha_next, sigma_next = _coefficients(model, torch.full_like(t, (i + 1) / steps))
            z = alpha_next * x0 + sigma_next * eps
    return torch.stack(path)


def path_statistics(path: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiffPath's six sums per image of a path of noise predictions (N, B, ...) (module docstring)."""
    steps = path.shape[0]
    eps = path.transpose(0, 1).flatten(1)  # (B, N * D)
    rate = (torch.diff(path, dim=0) * steps).transpose(0, 1).flatten(1)  # d eps / dt, (B, (N - 1) * D)
    sums = {"eps_sum": eps.sum(1), "eps_sum_sq": eps.pow(2).sum(1), "eps_sum_cb": eps.pow(3).sum(1),
            "deps_dt": rate.sum(1), "deps_dt_sq": rate.pow(2).sum(1), "deps_dt_cb": rate.pow(3).sum(1)}
    return {diffpath_column(name): value for name, value in sums.items()}


def diffpath_statistics(model: DiffusionModel, x_uint8: torch.Tensor, settings: dict[str, float]) -> dict[str, torch.Tensor]:
    """DiffPath's statistics [B] of 8-bit images (B, C, H, W), over `settings["diffpath_steps"]` DDIM steps."""
    return path_statistics(ddim_path_eps(model, model.scaled(x_uint8), int(settings["diffpath_steps"])))


def msma_noise_levels(levels: int) -> np.ndarray:
    """MSMA's L noise levels on [0, 1] pixels, geometric from sigma_high down to sigma_low (their get_sigma_levels)."""
    if levels < 1:
        raise ValueError(f"MSMA needs at least 1 noise level; got {levels}")
    return np.exp(np.linspace(np.log(MSMA_SIGMA_HIGH), np.log(MSMA_SIGMA_LOW), levels))


@torch.no_grad()
def times_at_noise(model: DiffusionModel, ratio: torch.Tensor) -> torch.Tensor:
    """For each noise-to-signal ratio (a 1-D tensor), the time t in [0, 1] at which the model's schedule has
    sigma_t / alpha_t equal to it (bisection; the ratio rises with t). A ratio outside the schedule's range
    is an error, not a silent clamp to the nearest end."""
    lo, hi = torch.zeros_like(ratio), torch.ones_like(ratio)

    def noise_to_signal(t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = model.alpha_sigma(t)
        # alpha_1 = cos(pi / 2) rounds to -4e-8 in float32: all noise, an infinite ratio, not a negative one
        return sigma.reshape(-1) / alpha.reshape(-1).clamp_min(torch.finfo(alpha.dtype).tiny)

    reach = noise_to_signal(lo), noise_to_signal(hi)
    outside = (ratio < reach[0]) | (ratio > reach[1])
    if outside.any():
        raise ValueError(f"the model's noise schedule spans sigma/alpha {float(reach[0][0]):.3g} to "
                         f"{float(reach[1][0]):.3g}; MSMA's levels need {', '.join(f'{r:.3g}' for r in ratio[outside].tolist())}")
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        below = noise_to_signal(mid) < ratio
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


@torch.no_grad()
def msma_statistics(model: DiffusionModel, x_uint8: torch.Tensor, settings: dict[str, float]) -> dict[str, torch.Tensor]:
    """MSMA's score norms [B] of 8-bit images (B, C, H, W) at `settings["msma_levels"]` noise levels."""
    x = model.scaled(x_uint8)
    sigmas = msma_noise_levels(int(settings["msma_levels"]))
    ratio = torch.as_tensor(PIXEL_SCALE * sigmas, device=x.device, dtype=x.dtype)
    times = times_at_noise(model, ratio)
    norms = {}
    for level, time in enumerate(times):
        t = time.expand(x.shape[0])
        alpha, _ = _coefficients(model, t)
        norms[msma_column(level)] = model.eps(alpha * x, t).flatten(1).norm(dim=1)
    return norms

