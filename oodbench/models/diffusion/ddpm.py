"""The discrete-time variational bound of DDPM (Ho, Jain and Abbeel 2020, Section 3 and Eq. 5) on 8-bit
images, as a pure function of a noise-predicting network: what a released `diffusers` DDPM
(`google/ddpm-cifar10-32`) is scored by, and the family's "discrete" time (models/diffusion).

With T steps of betas beta_1..beta_T, alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s, and x_0 the image
scaled to [-1, 1] as k / 127.5 - 1 (Ho et al.'s `tpu_utils.normalize_data`; diffusers' training examples), the
negative bound on log P(x) of the 8-bit image is
    L = L_T + sum_{t=2..T} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I))                        closed form ("prior"),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))     two Gaussians, x_t ~ q(x_t | x_0) ("diffusion"),
    L_0     = -log p(x_0 | x_1)                                 discretised Gaussian decoder, x_1 ~ q(x_1 | x_0)
                                                                ("reconstruction").
Each image's sum over t is estimated by Monte Carlo from K time points in [0, 1) (the model's stratified
points, one in each K-th of [0, 1)): a point picks the term whose slice of [0, 1) it falls in, the T - 1
terms taking equal slices, and each is scaled by (T - 1) / K; with K = T - 1 stratified points every
timestep is drawn once and the sum is exact. `bands` splits t = 2..T into that many ranges of (nearly)
equal length, and band_b sums the terms whose timestep falls in range b, so the bands add up to
"diffusion" (by timestep, so that each band's expectation is exactly its timesteps' sum). Everything is
returned as log-probability contributions in nats (the negated terms), and log_px = prior + diffusion +
reconstruction <= log P(x): no dequantisation term, since the decoder already gives probabilities of the
256 levels (PAPER.md, "Units").

The conventions, each that of Ho et al.'s own code (hojonathanho/diffusion, `diffusion_utils_2.py`,
`GaussianDiffusion2`, commit 1e0dceb), so that a released model is scored by the bound its authors report:
- timestep index i = t - 1 in 0..T-1, the index the network is conditioned on (their `t`, diffusers' too);
- the network predicts eps; x_0 is predicted as x_0^ = (x_t - sqrt(1 - abar_t) eps^) / sqrt(abar_t), clipped
  to [-1, 1] when `clip_denoised` (their `calc_bpd_loop` clips by default, diffusers' DDPMScheduler with
  `clip_sample`); the model mean is the posterior mean at x_0^: coef1_t x_0^ + coef2_t x_t (Eq. 7);
- the reverse variance ("model_var_type"): "fixed_large" sigma_t^2 = beta_t, "fixed_small" the posterior
  variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (Section 3.2). At t = 1 both use beta~_2,
  their "clipped" log-variance (beta~_1 is 0): the decoder's variance. Ho et al. trained CIFAR-10 with
  fixed_large (`scripts/run_cifar.py`), and google/ddpm-cifar10-32's `scheduler_config.json` says
  `"variance_type": "fixed_large"` (diffusers' own default is fixed_small): the default here is fixed_large.
- the decoder: bins of width 2/255 around the 256 levels, the first and last bin open to -inf and +inf
  (their `discretized_gaussian_log_likelihood`), but with the exact normal CDF (torch.special.log_ndtr)
  where they use a tanh approximation of it, and each bin's mass computed in the tail it lies in rather
  than clamped at 1e-12: the 256 probabilities of a sub-pixel still sum to one.
Schedule quantities are computed in float64 from `betas` and cast to the dtype of `gaussians` (the one
the network runs in) only when used, as their code keeps them in numpy float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from oodbench.models.diffusion.bound import gaussian_prior_log_prob
from oodbench.models.pixelcnn.logistic_mixture import HALF_BIN, bin_centres
from oodbench.units import N_LEVELS

VARIANCES = ("fixed_large", "fixed_small")  # the reverse process's variance, Ho et al.'s model_var_type
DEFAULT_VARIANCE = "fixed_large"  # google/ddpm-cifar10-32 and Ho et al.'s CIFAR-10 run
CLIP_RANGE = 1.0  # x_0^ is clipped to [-1, 1], the range of the scaled data

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z (B, C, H, W), timestep index long [B]) -> eps^


@dataclass(frozen=True)
class DDPMSchedule:
    """The quantities of Ho et al.'s `GaussianDiffusion2.__init__`, float64, indexed by i = t - 1."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor  # abar_t
    posterior_variance: torch.Tensor  # beta~_t; 0 at t = 1
    posterior_log_variance: torch.Tensor  # log beta~_t, with beta~_2 at t = 1 (their "clipped")
    posterior_mean_coef1: torch.Tensor  # of x_0 in the mean of q(x_{t-1} | x_t, x_0)
    posterior_mean_coef2: torch.Tensor  # of x_t
    model_log_variance: torch.Tensor  # log sigma_t^2 of p(x_{t-1} | x_t); sigma_1^2 = beta~_2 (the decoder)

    @classmethod
    def from_betas(cls, betas: torch.Tensor, variance: str = DEFAULT_VARIANCE) -> DDPMSchedule:
        if variance not in VARIANCES:
            raise ValueError(f"unknown reverse variance {variance!r}; supported: {', '.join(VARIANCES)}")
        betas = torch.as_tensor(betas).to(torch.float64)
        if betas.dim() != 1 or betas.numel() < 2 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError(f"betas must be a 1-D tensor of at least 2 values in (0, 1], got shape {tuple(betas.shape)}")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        large = torch.log(torch.cat([post_var[1:2], betas[1:]]))
        return cls(betas=betas, alphas_cumprod=abar, posterior_variance=post_var, posterior_log_variance=post_log_var,
                   posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
                   posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
                   model_log_variance=large if variance == "fixed_large" else post_log_var)

    @property
    def steps(self) -> int:
        return self.betas.numel()


def timesteps_of(t: torch.Tensor, steps: int) -> torch.Tensor:
    """The timestep index i in 1..T-1 (t = 2..T) of each time point t in [0, 1): the T - 1 terms of the sum
    over t = 2..T take equal slices of [0, 1), floor(t (T - 1)) + 1. A time point uniform on [0, 1), or on
    its own k-th of K equal slices (the model's stratified points, (u + k) / K), picks each term with
    probability 1 / (T - 1) on average over the K points, so (T - 1) / K times their sum is unbiased for the
    sum over t = 2..T; with K = T - 1 stratified points every term is drawn once and the sum is exact."""
    return torch.floor(t.to(torch.float64) * (steps - 1)).long().clamp(0, steps - 2) + 1


def band_of(index: torch.Tensor, steps: int, bands: int) -> torch.Tensor:
    """The band (0..bands-1) of timestep indices 1..T-1: t = 2..T in `bands` ranges of nearly equal length."""
    return torch.div((index - 1) * bands, steps - 1, rounding_mode="floor")


def _gather(values: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[index] as (B, 1, 1, 1) in like's dtype and device (float64 schedule -> the network's dtype)."""
    return values.to(like.device)[index].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _predict_x0(schedule: DDPMSchedule, eps_fn: EpsFn, x0: torch.Tensor, noise: torch.Tensor, index: torch.Tensor,
                clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t ~ q(x_t | x_0) drawn with `noise`, the model's x_0^ at it)."""
    abar = _gather(schedule.alphas_cumprod, index, x0)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    eps_hat = eps_fn(x_t, index)
    if eps_hat.shape != x0.shape:
        raise ValueError(f"the network returned {tuple(eps_hat.shape)} for inputs {tuple(x0.shape)}: it must predict "
                         "eps with the image's shape (a learned variance is not supported)")
    x0_hat = (x_t - (1.0 - abar).sqrt() * eps_hat.to(x0.dtype)) / abar.sqrt()
    if clip_denoised:
        x0_hat = x0_hat.clamp(-CLIP_RANGE, CLIP_RANGE)
    return x_t, x0_hat


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate for a near 0 and very negative (Maechler 2012)."""
    return torch.where(a > -math.log(2.0), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(level x) under N(mean, exp(log_scale)^2) discretised to the 256 levels of uint8 x, elementwise:
    the mass of [c - 1/255, c + 1/255] around the level's centre c = x / 127.5 - 1, the lowest bin taking
    (-inf, ..) and the highest (.., +inf), so the 256 masses sum to one. The mass Phi(b) - Phi(a) is taken
    in whichever tail the bin lies in (as Phi(-a) - Phi(-b) when a + b > 0), in logs, so that it keeps its
    precision far from the mean where Ho et al.'s difference of CDFs clamps at 1e-12."""
    centre = bin_centres(x, mean.dtype)
    inv_scale = torch.exp(-log_scale)
    lower = torch.where(x == 0, -math.inf, (centre - HALF_BIN - mean) * inv_scale)
    upper = torch.where(x == N_LEVELS - 1, math.inf, (centre + HALF_BIN - mean) * inv_scale)
    flip = (lower + upper) > 0  # the bin lies mostly above the mean: its mirror image lies below it
    lo, hi = torch.where(flip, -upper, lower), torch.where(flip, -lower, upper)
    log_hi = torch.special.log_ndtr(hi)
    gap = torch.special.log_ndtr(lo) - log_hi  # <= 0; -inf for an open edge
    log_mass = log_hi + log1mexp(gap.clamp(max=-torch.finfo(gap.dtype).tiny))
    # Where the two CDFs round to the same value (a narrow inner bin deep in a tail) the difference is lost:
    # the density at the bin's centre times its width stands in, as PixelCNN++'s reference code does. (From
    # the centre, not the edges: an open edge's infinity would make the unused branch's gradient NaN.)
    mid = (centre - mean) * inv_scale
    log_density = -0.5 * mid.square() - 0.5 * math.log(2 * math.pi) + math.log(2 * HALF_BIN) - log_scale
    return torch.where(gap < 0, log_mass, log_density)


def ddpm_bound_parts(eps_fn: EpsFn, betas: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                     gaussians: torch.Tensor, bands: int, *, variance: str = DEFAULT_VARIANCE,
                     clip_denoised: bool = True) -> dict[str, torch.Tensor]:
    """Per image [B], in nats: log_px (the bound on log P(x)), prior (-L_T), reconstruction (-L_0), diffusion
    (-sum_{t=2..T} L_{t-1}, estimated) and band_0..band_{bands-1} (its parts by time range).

    eps_fn(z, i) -> eps^ of z's shape, i the timestep index t - 1 (long [B]); betas [T] (float64);
    x uint8 (B, C, H, W); t (B, K): time points in [0, 1) (`timesteps_of`); gaussians (B, K+1, C, H, W):
    gaussians[:, k] draws x_t at time point k, gaussians[:, K] draws x_1 for the decoder. The network
    runs in gaussians' dtype. variance: "fixed_large" or "fixed_small"; clip_denoised: clip x_0^ to [-1, 1].
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"x must be uint8 images (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    batch, k = x.shape[0], t.shape[1] if t.dim() == 2 else -1
    if t.dim() != 2 or t.shape[0] != batch or k < 1:
        raise ValueError(f"t must be time points (B, K) with K >= 1 for B = {batch}, got {tuple(t.shape)}")
    if tuple(gaussians.shape) != (batch, k + 1, *x.shape[1:]) or not gaussians.is_floating_point():
        raise ValueError(f"gaussians must be float (B, K+1, C, H, W) = {(batch, k + 1, *x.shape[1:])}, "
                         f"got {gaussians.dtype} {tuple(gaussians.shape)}")
    schedule = DDPMSchedule.from_betas(betas, variance)
    steps = schedule.steps
    if not 1 <= bands <= steps - 1:
        raise ValueError(f"bands must be between 1 and T - 1 = {steps - 1}, got {bands}")
    x0 = bin_centres(x, gaussians.dtype)
    n_dims = math.prod(x.shape[1:])

    # L_{t-1}, t = 2..T: two Gaussians with diagonal covariances. Their means differ by coef1_t (x_0 - x_0^)
    # (the coef2_t x_t terms are the same), and the variance part is a constant of t, in float64.
    index = timesteps_of(t, steps).to(x.device)  # (B, K)
    band = band_of(index, steps, bands)
    log_ratio = schedule.model_log_variance - schedule.posterior_log_variance
    kl_constant = 0.5 * n_dims * (-1.0 + log_ratio + torch.exp(-log_ratio))  # [T], float64
    weight = (steps - 1) / k
    terms = []
    for slot in range(k):
        i = index[:, slot]
        _, x0_hat = _predict_x0(schedule, eps_fn, x0, gaussians[:, slot], i, clip_denoised)
        mean_gap = _gather(schedule.posterior_mean_coef1, i, x0) * (x0 - x0_hat)
        inv_var = _gather(torch.exp(-schedule.model_log_variance), i, x0)
        kl = 0.5 * (inv_var * mean_gap.square()).flatten(1).sum(dim=1) + kl_constant.to(x.device)[i].to(x0.dtype)
        terms.append(-weight * kl)
    terms = torch.stack(terms, dim=1)  # (B, K)
    parts = {f"band_{b}": (terms * (band == b)).sum(dim=1) for b in range(bands)}
    diffusion = terms.sum(dim=1)

    # L_0 = -log p(x_0 | x_1): the decoder is the reverse step from t = 1, a Gaussian at the model mean
    # (coef2_1 = 0, coef1_1 = 1: the mean is x_0^ itself) with variance sigma_1^2, discretised to the 256 levels.
    first = torch.zeros(batch, dtype=torch.long, device=x.device)
    x_1, x0_hat = _predict_x0(schedule, eps_fn, x0, gaussians[:, k], first, clip_denoised)
    mean = _gather(schedule.posterior_mean_coef1, first, x0) * x0_hat + _gather(schedule.posterior_mean_coef2, first, x0) * x_1
    log_scale = torch.full_like(mean, 0.5 * schedule.model_log_variance[0].item())
    reconstruction = discretized_gaussian_log_prob(x, mean, log_scale).flatten(1).sum(dim=1)

    prior = gaussian_prior_log_prob(x0, schedule.alphas_cumprod[-1].item())  # -L_T, closed form
    return {"log_px": prior + diffusion + reconstruction, "prior": prior, "reconstruction": reconstruction,
            "diffusion": diffusion, **parts}
