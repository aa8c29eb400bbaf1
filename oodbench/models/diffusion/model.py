"""The diffusion model as a `LikelihoodModel`: trained and scored by its variational bound on log P(x).

Continuous time (the default) is a variational diffusion model (Kingma et al. 2021, "Variational Diffusion
Models"; `bound.py`); discrete time is Ho et al. 2020's DDPM, whose bound `ddpm.py` computes. Either way the
bound is on the probability of the 8-bit image (a discrete decoder at t = 0), in nats, comparable with the
other families in bits/dim, and `log_px` comes with its parts: `prior`, `reconstruction`, `diffusion` and the
diffusion term's `band_0`..`band_3` over four equal slices of time, the per-time-band terms DoSE reads as it
reads Glow's levels. They sum to `log_px`.

Scoring estimates the bound per image with K = `time_points` stratified time points. Their times and the
Gaussians come from `eval_noise`, a function of (seed, image index) only (data/quantize.index_noise), so an
image's score does not depend on batch size, device or process count; `bound` names K. Training takes one
time point per image, spread over the batch as VDM's antithetic sampling does (t_b = (u + b/B) mod 1).

For the diffusion OOD statistics (ood_statistics.py: DiffPath, MSMA) the model exposes its pieces:
`scaled(x)`, the pixels as the network sees them; `eps(z, t)`, the predicted noise at time t in [0, 1];
`alpha_sigma(t)`, the schedule.
"""

from __future__ import annotations

import math

import torch

from oodbench.data.quantize import equal_bin_centres, index_noise, standard_normal
from oodbench.errors import OodbenchError
from oodbench.models.base import LikelihoodModel
from oodbench.models.diffusion import schedule
from oodbench.models.diffusion.bound import decoder_logits, stratified_times, vdm_bound_parts
from oodbench.models.diffusion.config import DiffusionConfig
from oodbench.models.diffusion.networks import TIME_SCALE, Denoiser
from oodbench.models.pixelcnn.logistic_mixture import bin_centres as ddpm_levels
from oodbench.units import N_LEVELS

# The diffusion term's equal time bands reported as parts (band_0 nearest the data).
BANDS = 4
# Time points of the bound the "best" checkpoint is chosen by (`validation_log_prob`, also the bound the
# per-image gradients differentiate). Fewer than scoring's K: the choice compares the mean over the whole
# validation hold-out (hundreds of images) between epochs, and every epoch sees the same index-seeded times
# and noise, so the comparison's error is far below one image's; at a quarter of the forward passes.
VALIDATION_TIME_POINTS = 4
# Images whose index-seeded noise is drawn at once (`eval_noise`).
NOISE_ROWS = 16


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def reverse_step(z: torch.Tensor, eps_hat: torch.Tensor, g_t: float, g_s: float, *, clip: bool,
                 large_variance: bool) -> tuple[torch.Tensor, float]:
    """(mean, std) of the reverse step p(z_s | z_t) from gamma_t = log(sigma_t^2 / alpha_t^2) to gamma_s < gamma_t,
    given the predicted noise eps_hat: the posterior q(z_s | z_t, x = x_hat) of VDM's `sample` (Kingma et al.
    2021) in the posterior-mean form of Ho et al. 2020 (Eq. 7, 15) and diffusers' DDPMScheduler.step:
        x_hat = (z_t - sigma_t eps_hat) / alpha_t, clipped to [-1, 1] when `clip` (their clip_denoised / clip_sample),
        mean  = (alpha_s / alpha_t)(1 - c) z_t + alpha_s c x_hat,  c = -expm1(gamma_s - gamma_t),
        var   = sigma_s^2 c (the posterior's, "fixed_small"), or with `large_variance` sigma_t^2 c
                = 1 - alpha_t^2 / alpha_s^2 (the step's beta, Ho et al.'s "fixed_large"),
    alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma). Unclipped, the mean is VDM's
    alpha_s / alpha_t (z_t - sigma_t c eps_hat)."""
    c = -math.expm1(g_s - g_t)
    alpha_t, alpha_s = math.sqrt(_sigmoid(-g_t)), math.sqrt(_sigmoid(-g_s))
    x_hat = (z - math.sqrt(_sigmoid(g_t)) * eps_hat) / alpha_t
    if clip:
        x_hat = x_hat.clamp(-1.0, 1.0)
    mean = (alpha_s / alpha_t) * (1.0 - c) * z + alpha_s * c * x_hat
    # 1 - alpha_t^2 / alpha_s^2 written as sigma_t^2 c: the same number without the cancellation at small steps
    variance = _sigmoid(g_t if large_variance else g_s) * c
    return mean, math.sqrt(variance)


class Diffusion(LikelihoodModel):
    """A diffusion model on uint8 images (B, C, S, S) with diffusers' U-Net as its denoiser; see `DiffusionConfig`."""

    part_names = ("prior", "reconstruction", "diffusion", *(f"band_{b}" for b in range(BANDS)))
    extra_statistics = ("gradients", "diffpath", "msma")

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiffusionConfig()
        self.denoiser = Denoiser(config)
        if config.time == "discrete":
            self.register_buffer("betas", schedule.ddpm_betas(config), persistent=False)
            self.register_buffer("alpha_bar", schedule.ddpm_alpha_bar(config), persistent=False)
        self.time_points = config.time_points

    @property
    def bound(self) -> str:
        kind = "vdm" if self.config.time == "continuous" else "ddpm"
        return f"{kind}-elbo-{self.time_points}t"

    @property
    def discretization(self) -> str:  # the base class's attribute, here by time parameterisation
        decoder = ("a 256-way categorical per sub-pixel at t=0 (VDM)" if self.config.time == "continuous"
                   else "a Gaussian discretised to the 256 levels at t=1 (DDPM)")
        return f"exact discrete decoder, {decoder}; log_px is a lower bound on log P(x), Monte Carlo over time"

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want or x.dtype != torch.uint8:
            raise OodbenchError(f"this diffusion model takes uint8 images (B, {', '.join(map(str, want))}); "
                                f"got {x.dtype} {tuple(x.shape)}")

    # --- the pieces the OOD statistics use --------------------------------------------------------------

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The uint8 images as the denoiser's data, float32 in [-1, 1]: VDM's bin centres 2 (x + 1/2) / 256 - 1
        in continuous time, Ho et al.'s 2 x / 255 - 1 in discrete time."""
        return equal_bin_centres(x) if self.config.time == "continuous" else ddpm_levels(x)  # ddpm.py's x_0

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted noise eps_hat(z, t) for latents z (B, C, H, W) at times t [B] in [0, 1] (discrete time:
        the nearest step, `schedule.nearest_step`)."""
        t = t.to(z.device).expand(z.shape[0])
        if self.config.time == "continuous":
            return self.denoiser(z, (t * TIME_SCALE).to(z.dtype))
        return self.denoiser(z, schedule.nearest_step(self.config, t))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), each [B] float32 on t's device, for times t [B] in [0, 1]."""
        if self.config.time == "continuous":
            alpha, sigma = schedule.alpha_sigma_of_gamma(schedule.gamma(self.config, t.double()))
        else:
            alpha_bar = self.alpha_bar.to(t.device)[schedule.nearest_step(self.config, t).to(t.device)]
            alpha, sigma = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        return alpha.float(), sigma.float()

    # --- the bound ---------------------------------------------------------------------------------------

    def bound_parts(self, x: torch.Tensor, t: torch.Tensor, gaussians: torch.Tensor, *,
                    training: bool = False) -> dict[str, torch.Tensor]:
        """The bound's parts (nats, [B]) at time points t (B, K) in [0, 1) with gaussians (B, K + 1, C, H, W):
        gaussians[:, j] goes with t[:, j], gaussians[:, K] is the reconstruction's. `training`: the objective
        training follows (discrete time: x_0's prediction unclipped, as Ho et al.'s loss)."""
        self._check_input(x)
        if self.config.time == "continuous":
            return vdm_bound_parts(self.config, self.eps, x, t, gaussians, BANDS)
        try:
            from oodbench.models.diffusion.ddpm import ddpm_bound_parts
        except ImportError as exc:
            raise OodbenchError(f"discrete-time (DDPM) diffusion needs oodbench/models/diffusion/ddpm.py ({exc})") from None
        return ddpm_bound_parts(lambda z, steps: self.denoiser(z, steps), self.betas, x, t, gaussians, BANDS,
                                variance=self.config.variance, clip_denoised=self.config.clip_denoised and not training)

    def _points(self, noise: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(t (B, points), gaussians (B, points + 1, C, H, W)) from `eval_noise`'s tensor, which holds u, the
        reconstruction's Gaussian and then one per time point: the first `points` of them are used."""
        shape = (self.config.in_channels, self.config.image_size, self.config.image_size)
        dims = math.prod(shape)
        available = (noise.shape[1] - 1) // dims - 1
        if noise.shape[1] != 1 + (available + 1) * dims or available < points:
            raise OodbenchError(f"diffusion noise of {noise.shape[1]} values per image holds no {points} time points "
                                f"of {dims}-dimensional images; make it with eval_noise")
        gaussians = noise[:, 1:].view(noise.shape[0], available + 1, *shape)
        t = stratified_times(noise[:, 0], points)
        return t, torch.cat([gaussians[:, 1:points + 1], gaussians[:, :1]], dim=1)

    def fresh_noise(self, x: torch.Tensor, points: int) -> torch.Tensor:
        """Noise in `eval_noise`'s layout from the global generator (a bound without index-seeded draws)."""
        gaussians = torch.randn(x.shape[0], (points + 1) * x[0].numel(), device=x.device)
        return torch.cat([torch.rand(x.shape[0], 1, device=x.device), gaussians], dim=1)

    def eval_noise(self, x: torch.Tensor, index: torch.Tensor, seed: int) -> torch.Tensor:
        # (B, 1 + (K + 1) D): u of the stratified times, then the reconstruction's Gaussian, then one per time
        # point, so the reconstruction's draw and time point j's noise are the same whatever K is.
        # Drawn a few images at a time: the hash's int64 temporaries of a whole batch (250 images, K = 32, 3x32x32)
        # peaked at 1.5 GB.
        values = 1 + (self.time_points + 1) * x[0].numel()
        noise = torch.empty(index.shape[0], values, device=x.device)
        for rows in torch.arange(index.shape[0]).split(NOISE_ROWS):
            uniform = index_noise(index[rows], (values,), seed, device=x.device)
            noise[rows, :1], noise[rows, 1:] = uniform[:, :1], standard_normal(uniform[:, 1:])
        return noise

    def log_prob_parts(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"log_px": the bound with K = `time_points` time points, "prior", "reconstruction", "diffusion",
        "band_0".."band_3"}, each [B] in nats. `noise`: `eval_noise`'s; fresh draws when None."""
        noise = self.fresh_noise(x, self.time_points) if noise is None else noise
        return self.bound_parts(x, *self._points(noise, self.time_points))

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # VDM's training: one time point per image, spread evenly over the batch from one uniform draw
        # (antithetic_time_sampling), and fresh Gaussians.
        batch = x.shape[0]
        t = torch.remainder(torch.rand(1, device=x.device) + torch.arange(batch, device=x.device) / batch, 1.0)
        gaussians = torch.randn(batch, 2, *x.shape[1:], device=x.device)
        return self.bound_parts(x, t[:, None], gaussians, training=True)["log_px"]

    def validation_log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        points = min(VALIDATION_TIME_POINTS, self.time_points)
        noise = self.fresh_noise(x, points) if noise is None else noise
        return self.bound_parts(x, *self._points(noise, points))["log_px"]

    # --- optional statistics -----------------------------------------------------------------------------

    def extra_statistic(self, name: str, x: torch.Tensor, noise: torch.Tensor | None,
                        settings: dict[str, float]) -> dict[str, torch.Tensor]:
        """"diffpath": statistics of the deterministic path from the image to noise (Heng et al. 2024);
        "msma": norms of the predicted noise at several levels (Mahmood et al. 2021); both in ood_statistics.py."""
        if name in ("diffpath", "msma"):
            self._check_input(x)
            from oodbench.models.diffusion import ood_statistics  # written on this module's protocol

            compute = ood_statistics.diffpath_statistics if name == "diffpath" else ood_statistics.msma_statistics
            return compute(self, x, settings)
        return super().extra_statistic(name, x, noise, settings)

    def statistic_passes(self, name: str, settings: dict[str, float]) -> str:
        if name == "likelihood":  # discrete time: one more, the decoder's x_1
            return f"{self.time_points + (self.config.time == 'discrete')} denoiser forward"
        if name == "gradients":
            points = min(VALIDATION_TIME_POINTS, self.time_points)
            return f"{points} denoiser forward + backward, one image at a time"
        if name == "diffpath":
            return f"{int(settings['diffpath_steps'])} denoiser forward"
        if name == "msma":
            return f"{int(settings['msma_levels'])} denoiser forward"
        return super().statistic_passes(name, settings)

    # --- sampling ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, *, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n uint8 images by ancestral sampling in `sample_steps` steps from z_1 ~ N(0, I), each step drawing
        z_s from p(z_s | z_t), `reverse_step`: VDM's `sample`, q(z_s | z_t, x = x_hat(z_t)) with the posterior's
        variance; in discrete time DDPM's (Ho et al. 2020, diffusers' DDPMScheduler) on an evenly spaced subset of
        its steps, with the configured `variance` ("fixed_large": the respaced step's beta; "fixed_small": the
        posterior's) and x_hat clipped to [-1, 1] at every step when `clip_denoised`, as the bound has them;
        then the pixels: continuous time from the decoder p(x | z_0), discrete time as Ho et al., the last
        step's mean x_hat clipped to [-1, 1] and rounded. Gaussians are drawn on the CPU from `generator`."""
        cfg = self.config
        device = device if device is not None else next(self.parameters()).device
        shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
        steps = cfg.sample_steps
        if cfg.time == "continuous":
            times = torch.arange(steps, -1, -1, dtype=torch.float64) / steps  # 1, ..., 0
            gammas = schedule.gamma(cfg, times)
        else:  # `steps` of the T steps, evenly spaced, the last one step 0; t of step i is (i + 1) / T
            indices = torch.linspace(cfg.timesteps - 1, 0, steps, dtype=torch.float64).round().long()
            times = (indices + 1).double() / cfg.timesteps
            alpha_bar = schedule.ddpm_alpha_bar(cfg)[indices]
            gammas = torch.log1p(-alpha_bar) - torch.log(alpha_bar)
        # discrete time samples from the reverse process the bound scores (its variance and clipping); continuous
        # time's is VDM's, which has neither setting
        discrete = cfg.time == "discrete"
        clip, large_variance = discrete and cfg.clip_denoised, discrete and cfg.variance == "fixed_large"
        z = torch.randn(shape, generator=generator).to(device)
        for i in range(len(times) - 1):
            eps_hat = self.eps(z, torch.full((n,), times[i].item(), device=device))
            mean, std = reverse_step(z, eps_hat, gammas[i].item(), gammas[i + 1].item(), clip=clip,
                                     large_variance=large_variance)
            z = mean + std * torch.randn(shape, generator=generator).to(device)
        if cfg.time == "continuous":
            probs = torch.softmax(decoder_logits(cfg, z / math.sqrt(_sigmoid(-gammas[-1].item()))), dim=-1)  # (n, C, H, W, 256)
            flat = torch.multinomial(probs.reshape(-1, N_LEVELS).cpu(), 1, generator=generator)
            return flat.view(shape).to(torch.uint8).to(device)
        alpha, sigma = self.alpha_sigma(torch.full((n,), times[-1].item(), device=device))
        x_hat = (z - sigma[:, None, None, None] * self.eps(z, torch.full((n,), times[-1].item(), device=device)))
        x_hat = (x_hat / alpha[:, None, None, None]).clamp(-1, 1)
        return torch.round((x_hat + 1) * (N_LEVELS - 1) / 2).to(torch.uint8)
