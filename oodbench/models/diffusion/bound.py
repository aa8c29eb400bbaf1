"""The variational bound of a continuous-time diffusion model on 8-bit images, as pure functions.

Kingma et al. 2021 ("Variational Diffusion Models", eq. 11-17; google-research/vdm, model_vdm.py): with
f = 2 (x + 1/2) / 256 - 1 the image's bin centres in [-1, 1] and z_t = alpha_t f + sigma_t eps,

    -log P(x) <= KL(q(z_1|x) || N(0, I))                              prior
                 + E_{t ~ U[0,1], eps} [ 1/2 gamma'(t) ||eps - eps_hat(z_t, t)||^2 ]   diffusion (T -> infinity)
                 - E_{eps_0} [ log p(x | z_0) ]                        reconstruction

where p(x|z_0) is, for each sub-pixel independently, the 256-way categorical with logits
-1/2 exp(-gamma_0) (z_0 / alpha_0 - f_k)^2 over the levels' bin centres f_k: a probability of the 8-bit
image, so the bound is in the same units as every other family's log_px (PAPER.md, "Units").

The expectation over time is estimated with K stratified points per image, t_j = (u + j) / K with one
uniform u: unbiased for any K, and with the variance of a stratified estimate, far below K independent
points' for a smooth integrand. The diffusion term splits into equal time bands: band b is the points with
t in [b / bands, (b + 1) / bands) (unbiased whatever K; K a multiple of `bands` gives every band K / bands
points), and the bands sum to the diffusion term. Every part here is a log-probability contribution
(nats, the negative of a loss term), so they sum to the bound on log P(x).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from oodbench.data.quantize import equal_bin_centres
from oodbench.models.categorical import categorical_log_prob
from oodbench.models.diffusion.config import DiffusionConfig
from oodbench.models.diffusion.schedule import alpha_sigma_of_gamma, gamma, gamma_rate
from oodbench.units import N_LEVELS

# Decoder logits held at once (elements): the reconstruction term's 256 logits per sub-pixel go through in
# chunks of images this size. 2**22 float32 (16 MiB) stays in a CPU's last-level cache; a GPU takes 2**27.
CPU_DECODE_ELEMENTS = 2**22
GPU_DECODE_ELEMENTS = 2**27


def stratified_times(u: torch.Tensor, points: int) -> torch.Tensor:
    """t_j = (u + j) / K for j < K: one time in each of K equal slices of [0, 1), from u [B] in [0, 1); (B, K)."""
    return (u[:, None] + torch.arange(points, device=u.device, dtype=u.dtype)) / points


def gaussian_prior_log_prob(x: torch.Tensor, alpha_sq: float) -> torch.Tensor:
    """-KL(N(alpha x, (1 - alpha^2) I) || N(0, I)) per image [B]: the prior term of a variance-preserving diffusion
    whose last latent keeps alpha^2 = `alpha_sq` of the signal (VDM's loss_klz; DDPM's L_T, ddpm.py)."""
    noise_var = 1.0 - alpha_sq
    kl = 0.5 * (alpha_sq * x.square() + noise_var - math.log1p(-alpha_sq) - 1.0)
    return -kl.flatten(1).sum(dim=1)


def prior_log_prob(config: DiffusionConfig, f: torch.Tensor) -> torch.Tensor:
    """-KL(q(z_1|x) || N(0, I)) per image [B], q(z_1|x) = N(alpha_1 f, sigma_1^2 I), alpha_1^2 = sigmoid(-gamma_1)."""
    return gaussian_prior_log_prob(f, 1.0 / (1.0 + math.exp(config.gamma_max)))


def decoder_logits(config: DiffusionConfig, z0_rescaled: torch.Tensor) -> torch.Tensor:
    """Logits (..., 256) of p(x|z_0) at each sub-pixel, from z_0 / alpha_0 (any shape): VDM's `EncDec.decode`,
    -1/2 exp(-gamma_0) (z_0 / alpha_0 - f_k)^2 over the 256 bin centres f_k."""
    levels = equal_bin_centres(torch.arange(N_LEVELS, device=z0_rescaled.device))
    return -0.5 * math.exp(-config.gamma_min) * (z0_rescaled[..., None] - levels).square()


# The decoder's log-sum-exp skips the levels whose logit lies more than this below the largest one: each is
# then under e^-80 (1.8e-35) of it, beneath float32's and float64's rounding.
SKIPPED_LOGIT_GAP = 80.0


def decoder_window(config: DiffusionConfig) -> int | None:
    """W such that the levels more than W bins from z_0 / alpha_0's own bin add nothing to the decoder's
    normaliser: with bin width D and precision s = exp(-gamma_0), a level d bins away has a logit at least
    s D^2 d (d - 1) / 2 below the largest, so W is the least with s D^2 W (W + 1) / 2 >= SKIPPED_LOGIT_GAP.
    None when the window would span the 256 levels anyway (a wide decoder, gamma_0 near 0)."""
    scale = math.exp(-config.gamma_min) * (2.0 / N_LEVELS) ** 2
    window = 1
    while 0.5 * scale * window * (window + 1) < SKIPPED_LOGIT_GAP:
        window += 1
        if 2 * window + 1 >= N_LEVELS:
            return None
    return window


def decoder_log_prob(config: DiffusionConfig, z0_rescaled: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | z_0) per sub-pixel (the shape of x), for z_0 / alpha_0 of that shape: the log-softmax of
    `decoder_logits` at x, its normaliser summed over the `decoder_window` levels around z_0 / alpha_0's
    bin. At VDM's gamma_0 = -13.3 that is 5 of the 256 levels (s D^2 = 36.4): the same number to
    rounding at a 50th of the work, which in full was a quarter of a CPU training step."""
    window = decoder_window(config)
    if window is None:
        return categorical_log_prob(decoder_logits(config, z0_rescaled).reshape(-1, N_LEVELS),
                                    x.reshape(-1).long()).view(x.shape)
    precision = math.exp(-config.gamma_min)
    nearest = ((z0_rescaled + 1.0) * (N_LEVELS / 2.0)).floor().clamp(0, N_LEVELS - 1)
    levels = nearest[..., None] + torch.arange(-window, window + 1, device=x.device, dtype=nearest.dtype)
    logits = -0.5 * precision * (z0_rescaled[..., None] - equal_bin_centres(levels.clamp(0, N_LEVELS - 1))).square()
    logits = logits.masked_fill((levels < 0) | (levels > N_LEVELS - 1), -math.inf)
    target = -0.5 * precision * (z0_rescaled - equal_bin_centres(x)).square()
    return target - torch.logsumexp(logits, dim=-1)


def reconstruction_log_prob(config: DiffusionConfig, x: torch.Tensor, eps_0: torch.Tensor) -> torch.Tensor:
    """log p(x | z_0) per image [B] with z_0 = alpha_0 f + sigma_0 eps_0, i.e. z_0 / alpha_0 = f + exp(gamma_0 / 2)
    eps_0 (VDM's z_0_rescaled: no division by alpha_0 ~ 1, whose rounding would swamp sigma_0 ~ 1e-3)."""
    f = equal_bin_centres(x)
    z0_rescaled = f + math.exp(0.5 * config.gamma_min) * eps_0
    per_image = N_LEVELS * x[0].numel()
    budget = GPU_DECODE_ELEMENTS if x.device.type == "cuda" else CPU_DECODE_ELEMENTS
    rows = max(1, budget // per_image)
    return torch.cat([decoder_log_prob(config, z, target).flatten(1).sum(dim=1)
                      for z, target in zip(z0_rescaled.split(rows), x.split(rows), strict=True)])


def diffusion_terms(config: DiffusionConfig, eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    f: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The continuous-time diffusion loss at each time point, 1/2 gamma'(t) ||eps - eps_hat(z_t, t)||^2, (B, K),
    for bin centres f (B, C, H, W), times t (B, K) and noise eps (B, K, C, H, W); one denoiser pass per point.
    `eps_fn(z, t)` takes t [B] in [0, 1]."""
    g = gamma(config, t.double())
    alpha, sigma = (s.to(f.dtype) for s in alpha_sigma_of_gamma(g))
    terms = []
    for j in range(t.shape[1]):
        z = alpha[:, j, None, None, None] * f + sigma[:, j, None, None, None] * eps[:, j]
        terms.append((eps[:, j] - eps_fn(z, t[:, j])).square().flatten(1).sum(dim=1))
    return 0.5 * gamma_rate(config) * torch.stack(terms, dim=1)


def vdm_bound_parts(config: DiffusionConfig, eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    x: torch.Tensor, t: torch.Tensor, gaussians: torch.Tensor, bands: int) -> dict[str, torch.Tensor]:
    """{"log_px", "prior", "reconstruction", "diffusion", "band_0".."band_<bands-1>"}, each [B] in nats, for uint8
    images x (B, C, H, W), time points t (B, K) in [0, 1) and standard-normal draws gaussians (B, K + 1, C, H, W):
    gaussians[:, j] is time point j's noise, gaussians[:, K] the reconstruction's eps_0. The diffusion term is
    the mean over the K points (see the module docstring); log_px = prior + reconstruction + diffusion."""
    points = t.shape[1]
    f = equal_bin_centres(x)
    # 1. prior: the image's last latent against N(0, I)
    prior = prior_log_prob(config, f)
    # 2. reconstruction: the discrete decoder at t = 0
    reconstruction = reconstruction_log_prob(config, x, gaussians[:, points])
    # 3. diffusion: the K time points, each assigned to the band its t falls in
    terms = diffusion_terms(config, eps_fn, f, t, gaussians[:, :points]) / points
    band_of = (t * bands).floor().clamp(0, bands - 1).long()
    parts = {f"band_{b}": -(terms * (band_of == b)).sum(dim=1) for b in range(bands)}
    diffusion = -terms.sum(dim=1)
    return {"log_px": prior + reconstruction + diffusion, "prior": prior, "reconstruction": reconstruction,
            "diffusion": diffusion, **parts}
