"""The DDPM bound computed another way, as a reference for models/diffusion/ddpm.py and the diffusers import:
one image and one timestep at a time, through diffusers' own DDPMScheduler (`add_noise` for x_t, `step` for
the model's mean and the posterior's, `_get_variance` for their variances) and torch.distributions (the
Gaussian KLs and the decoder's CDF differences), in float64.

diffusers keeps its schedule in float32 (`torch.linspace(..., dtype=torch.float32)`, a float32 cumprod);
`float64_scheduler` gives a copy the same betas, or the caller's, in float64 so that a comparison can be
held to 1e-9. `step` adds its variance noise for t > 0; that noise is drawn from a seeded generator and
drawn again here to subtract it, which leaves the mean diffusers computed.
"""

from __future__ import annotations

import copy
import math

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch.distributions import Normal, kl_divergence


def float64_scheduler(scheduler: DDPMScheduler, betas: torch.Tensor | None = None) -> DDPMScheduler:
    """A copy of `scheduler` whose betas (its own unless given), alphas and alphas_cumprod are float64."""
    scheduler = copy.deepcopy(scheduler)
    scheduler.betas = (scheduler.betas if betas is None else betas).to(torch.float64)
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _mean(scheduler: DDPMScheduler, eps: torch.Tensor, t: int, x_t: torch.Tensor) -> torch.Tensor:
    """The mean of diffusers' step from x_t with predicted noise `eps` (its clipping as configured)."""
    seed = 1234 + t
    out = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(seed))
    if t == 0:  # no noise is added at the last step
        return out.prev_sample
    noise = randn_tensor(eps.shape, generator=torch.Generator().manual_seed(seed), dtype=eps.dtype)
    return out.prev_sample - scheduler._get_variance(t).sqrt() * noise


def reference_bound(unet, scheduler: DDPMScheduler, x: torch.Tensor, t: torch.Tensor,
                    gaussians: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image (float64, [B]): "log_px", "prior", "diffusion", "reconstruction" of Ho et al.'s bound, the
    reverse variance and clipping those of `scheduler.config`, the decoder's variance diffusers' fixed_small
    variance at index 1 (Ho et al.'s clipped log-variance). Time point t[b, k] in [0, 1) takes the term
    t = 2..T whose (T-1)-th of [0, 1) it lies in, weighted (T-1)/K. `unet` runs in float64."""
    steps = scheduler.config.num_train_timesteps
    k_draws = t.shape[1]
    abar_T = scheduler.alphas_cumprod[-1]
    out = {name: [] for name in ("prior", "diffusion", "reconstruction")}
    for b in range(x.shape[0]):
        x0 = x[b:b + 1].to(torch.float64) / 127.5 - 1.0
        prior = kl_divergence(Normal(abar_T.sqrt() * x0, (1 - abar_T).sqrt()), Normal(torch.zeros_like(x0), 1.0))
        out["prior"].append(-prior.sum())

        total = torch.zeros((), dtype=torch.float64)
        for k in range(k_draws):
            step = min(math.floor(float(t[b, k]) * (steps - 1)), steps - 2) + 1
            eps = gaussians[b:b + 1, k].to(torch.float64)
            x_t = scheduler.add_noise(x0, eps, torch.tensor([step]))
            with torch.no_grad():
                eps_hat = unet(x_t, step).sample
            model_mean = _mean(scheduler, eps_hat, step, x_t)
            true_mean = _mean(scheduler, eps, step, x_t)  # x_0 recovered from the true noise
            model_std = scheduler._get_variance(step).sqrt()
            true_std = scheduler._get_variance(step, variance_type="fixed_small").sqrt()
            kl = kl_divergence(Normal(true_mean, true_std), Normal(model_mean, model_std)).sum()
            total = total - kl * (steps - 1) / k_draws
        out["diffusion"].append(total)

        eps = gaussians[b:b + 1, k_draws].to(torch.float64)
        x_1 = scheduler.add_noise(x0, eps, torch.tensor([0]))
        with torch.no_grad():
            eps_hat = unet(x_1, 0).sample
        decoder = Normal(_mean(scheduler, eps_hat, 0, x_1), scheduler._get_variance(1, variance_type="fixed_small").sqrt())
        out["reconstruction"].append(binned_log_prob(decoder, x[b:b + 1]).sum())
    parts = {name: torch.stack(values) for name, values in out.items()}
    parts["log_px"] = parts["prior"] + parts["diffusion"] + parts["reconstruction"]
    return parts


def binned_log_prob(normal: Normal, x: torch.Tensor) -> torch.Tensor:
    """log of the normal's mass on each uint8 level's bin [c - 1/255, c + 1/255], c = x / 127.5 - 1, the end
    bins open; the CDF difference taken on the side of the mean the bin lies on."""
    centre = x.to(torch.float64) / 127.5 - 1.0
    lower = torch.where(x == 0, -math.inf, centre - 1 / 255)
    upper = torch.where(x == 255, math.inf, centre + 1 / 255)
    below = normal.cdf(upper) - normal.cdf(lower)
    mirrored = Normal(-normal.loc, normal.scale)
    above = mirrored.cdf(-lower) - mirrored.cdf(-upper)
    mass = torch.where(centre < normal.loc, below, above)
    assert bool((mass > 0).all()), "the reference's CDF difference underflowed: keep the test's bins near the means"
    return mass.log()
