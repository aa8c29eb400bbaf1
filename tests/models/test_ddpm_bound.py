"""Ho et al.'s DDPM bound (models/diffusion/ddpm.py) against references computed another way: each term by
hand from the schedule in numpy and torch.distributions' Gaussian KL, the decoder's bins by numerical
integration, the Monte Carlo sum over timesteps against the exact sum, and the whole bound against one
computed through diffusers' DDPMScheduler and a random UNet2DModel (tests/models/ddpm_reference.py)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import Normal, kl_divergence

from oodbench.models.diffusion.ddpm import (
    VARIANCES,
    DDPMSchedule,
    ddpm_bound_parts,
    discretized_gaussian_log_prob,
    timesteps_of,
)
from tests.models.ddpm_reference import float64_scheduler, reference_bound
from tests.published.peers import randomise_

STEPS = 6
BETAS = torch.linspace(0.05, 0.4, STEPS, dtype=torch.float64)  # few steps, each term large enough to matter


def toy_eps(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A parameter-free 'network' that depends on z (not elementwise) and on the timestep."""
    return torch.tanh(1.7 * z.flip(-1) + 0.3 * index.view(-1, 1, 1, 1).to(z.dtype)) * 1.5


def images(shape=(2, 1, 3, 4), seed=0) -> torch.Tensor:
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x.view(-1)[:2] = torch.tensor([0, 255], dtype=torch.uint8)  # both open edge bins
    return x


def stratified(u: torch.Tensor) -> torch.Tensor:
    """The model's stratified time points from uniforms (B, K): t_k = (u_k + k) / K, one in each K-th of [0, 1)."""
    return (u + torch.arange(u.shape[1], dtype=u.dtype)) / u.shape[1]


def gaussians_for(x: torch.Tensor, k: int, seed=1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn((x.shape[0], k + 1, *x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def direct_terms(x, gaussians, variance, clip):
    """Each term of the bound by hand: (prior [B], KL per t = 2..T as a list of [B], decoder [B]), nats.
    The schedule in numpy; the model mean as Eq. 11 of Ho et al. (the eps form) unless clipping, and
    tilde-mu(x_t, clip(x_0^)) then; slot k of `gaussians` draws x_{k+2}, the last one x_1."""
    betas = BETAS.numpy()
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    x0 = x.double() / 127.5 - 1
    prior = kl_divergence(Normal(math.sqrt(abar[-1]) * x0, math.sqrt(1 - abar[-1])), Normal(0.0, 1.0)).flatten(1).sum(1)

    def tilde(t):  # q(x_{t-1} | x_t, x_0), paper t (1-based)
        ab, ab_prev = abar[t - 1], (abar[t - 2] if t > 1 else 1.0)
        return (math.sqrt(ab_prev) * betas[t - 1] / (1 - ab), math.sqrt(alphas[t - 1]) * (1 - ab_prev) / (1 - ab),
                (1 - ab_prev) / (1 - ab) * betas[t - 1])

    def model_mean(t, x_t):
        index = torch.full((x.shape[0],), t - 1, dtype=torch.long)
        eps_hat = toy_eps(x_t, index)
        ab = abar[t - 1]
        if not clip:
            return (x_t - betas[t - 1] / math.sqrt(1 - ab) * eps_hat) / math.sqrt(alphas[t - 1])
        x0_hat = ((x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)).clamp(-1, 1)
        c0, ct, _ = tilde(t)
        return c0 * x0_hat + ct * x_t

    kls = []
    for t in range(2, STEPS + 1):
        x_t = math.sqrt(abar[t - 1]) * x0 + math.sqrt(1 - abar[t - 1]) * gaussians[:, t - 2]
        c0, ct, post_var = tilde(t)
        sigma2 = betas[t - 1] if variance == "fixed_large" else post_var
        kl = kl_divergence(Normal(c0 * x0 + ct * x_t, math.sqrt(post_var)), Normal(model_mean(t, x_t), math.sqrt(sigma2)))
        kls.append(kl.flatten(1).sum(1))
    x_1 = math.sqrt(abar[0]) * x0 + math.sqrt(1 - abar[0]) * gaussians[:, -1]
    sigma = math.sqrt(tilde(2)[2])  # Ho et al.'s decoder variance: the posterior's at t = 2, for either variance
    decoder = integrated_log_prob(x, model_mean(1, x_1), sigma).flatten(1).sum(1)
    return prior, kls, decoder


def integrated_log_prob(x, mean, sigma):
    """log of the Gaussian density integrated numerically (scipy's quad) over each level's bin; an open end
    is cut 40 standard deviations beyond the mean or the bin's edge (what lies further is below 1e-300 of it)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for i, (level, m) in enumerate(zip(x.flatten().tolist(), mean.flatten().tolist(), strict=True)):
        lo = level / 127.5 - 1 - 1 / 255
        hi = level / 127.5 - 1 + 1 / 255
        if level == 0:
            lo = min(hi, m) - 40 * sigma
        if level == 255:
            hi = max(lo, m) + 40 * sigma
        density = lambda v, m=m: math.exp(-0.5 * ((v - m) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
        mass, _ = integrate.quad(density, lo, hi, epsabs=0, epsrel=1e-13, points=[m] if lo < m < hi else None, limit=200)
        out.view(-1)[i] = math.log(mass)
    return out


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("clip", [False, True])
def test_every_timestep_once_gives_each_term_exactly(variance, clip):
    x = images()
    k = STEPS - 1
    gaussians = gaussians_for(x, k)
    if clip:
        gaussians = gaussians * 3  # far from the data: x_0^ leaves [-1, 1] and is clipped
    t = stratified(torch.rand(x.shape[0], k, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    parts = ddpm_bound_parts(toy_eps, BETAS, x, t, gaussians, bands=STEPS - 1, variance=variance, clip_denoised=clip)
    prior, kls, decoder = direct_terms(x, gaussians, variance, clip)
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(parts["prior"], -prior, **close)
    torch.testing.assert_close(parts["reconstruction"], decoder, **close)
    for b, kl in enumerate(kls):  # one band per timestep: band b is t = b + 2
        torch.testing.assert_close(parts[f"band_{b}"], -kl, **close)
    torch.testing.assert_close(parts["diffusion"], -sum(kls), **close)
    torch.testing.assert_close(parts["log_px"], -(prior + sum(kls)) + decoder, **close)
    assert all((kl > 0).all() for kl in kls)
    if clip:  # and clipping did change something
        unclipped = ddpm_bound_parts(toy_eps, BETAS, x, t, gaussians, bands=1, variance=variance, clip_denoised=False)
        assert (unclipped["log_px"] - parts["log_px"]).abs().min() > 1e-3


@pytest.mark.parametrize("k", [2, 4])
def test_the_stratified_estimate_averages_to_the_exact_sum(k):
    """E_u of the estimate from K stratified points (u + k) / K is the sum over t = 2..T, band by band. With one
    noise for every point each term is a function of its timestep alone, and the mean over the midpoints of
    (T-1) m equal cells of u is the exact expectation (the timesteps change at multiples of 1/(T-1) in u)."""
    x = images(seed=3)
    bands = 2
    noise = gaussians_for(x, 0)[:, :1]
    exact = ddpm_bound_parts(toy_eps, BETAS, x, stratified(torch.rand(x.shape[0], STEPS - 1, dtype=torch.float64)),
                             noise.expand(-1, STEPS, -1, -1, -1), bands=bands)
    cells = (STEPS - 1) * 3
    estimates = []
    for n in range(cells):
        u = torch.full((x.shape[0], k), (n + 0.5) / cells, dtype=torch.float64)
        estimates.append(ddpm_bound_parts(toy_eps, BETAS, x, stratified(u), noise.expand(-1, k + 1, -1, -1, -1), bands=bands))
    for name in ("diffusion", "band_0", "band_1", "log_px"):
        torch.testing.assert_close(torch.stack([e[name] for e in estimates]).mean(0), exact[name], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(exact["band_0"] + exact["band_1"], exact["diffusion"], rtol=1e-14, atol=0)


def test_time_points_pick_each_timestep_once_when_k_is_t_minus_1():
    index = timesteps_of(stratified(torch.rand(5, 999, dtype=torch.float64)), 1000)
    assert torch.equal(index, torch.arange(1, 1000).expand(5, -1))
    index = timesteps_of(stratified(torch.rand(4, 8)), 1000)  # point k lies in the k-th eighth of the 999 terms
    strata = torch.arange(8)
    assert ((index - 1 >= (strata * 999) // 8) & (index - 1 <= ((strata + 1) * 999) // 8)).all()
    assert timesteps_of(torch.tensor([[0.0, 0.9999999]]), 1000).tolist() == [[1, 999]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_decoder_sums_to_one_over_the_256_levels(dtype):
    levels = torch.arange(256, dtype=torch.uint8)
    for mean, scale in [(0.0, 0.01), (0.3, 0.0074), (-1.3, 0.05), (1.8, 0.001), (0.999, 1e-4), (0.0, 3.0), (-0.5, 1e-5)]:
        log_p = discretized_gaussian_log_prob(levels, torch.full((256,), mean, dtype=dtype),
                                              torch.full((256,), math.log(scale), dtype=dtype))
        assert torch.isfinite(log_p).all()
        assert abs(log_p.double().exp().sum().item() - 1) < (1e-12 if dtype == torch.float64 else 1e-6), (mean, scale)


def test_the_decoder_is_the_integrated_gaussian_on_each_bin():
    levels = torch.tensor([0, 1, 17, 127, 128, 200, 254, 255], dtype=torch.uint8)
    centres = levels.double() / 127.5 - 1
    for sigma in (0.004, 0.05, 0.7):
        for offset in (-25.0, -3.0, -0.4, 0.0, 0.9, 6.0, 30.0):  # the mean, in standard deviations from the centre
            means = centres + offset * sigma
            ours = discretized_gaussian_log_prob(levels, means, torch.full_like(means, math.log(sigma)))
            torch.testing.assert_close(ours, integrated_log_prob(levels, means, sigma), rtol=1e-9, atol=1e-11,
                                       msg=f"sigma {sigma}, offset {offset}")


def test_the_decoder_keeps_its_precision_far_in_the_tails():
    """Where Phi(b) - Phi(a) underflows in float64 (30 and more standard deviations out) the log-mass must
    still be finite and match the tail asymptotics, on either side of the mean."""
    sigma = 0.004
    levels = torch.tensor([10, 245], dtype=torch.uint8)
    centre = levels.double() / 127.5 - 1
    means = torch.tensor([0.5, -0.5], dtype=torch.float64)
    ours = discretized_gaussian_log_prob(levels, means, torch.full_like(means, math.log(sigma)))
    near_edge = torch.minimum((centre - 1 / 255 - means).abs(), (centre + 1 / 255 - means).abs()) / sigma
    # log(Phi(-a) - Phi(-b)) ~ log phi(a) - log a for a bin [a, b] with b - a >> 1/a, far out
    asymptote = -0.5 * near_edge**2 - 0.5 * math.log(2 * math.pi) - near_edge.log()
    torch.testing.assert_close(ours, asymptote, rtol=1e-5, atol=0)


def test_a_bin_whose_cdfs_round_together_takes_the_density_times_the_width():
    """In float32, 10^6 standard deviations out, the two CDFs of an inner bin round to the same log: the
    density at the centre times the width stands in, and agrees with float64's difference of CDFs."""
    levels = torch.tensor([100], dtype=torch.uint8)
    mean, log_scale = torch.tensor([1e6]), torch.tensor([0.0])
    ours = discretized_gaussian_log_prob(levels, mean, log_scale)
    exact = discretized_gaussian_log_prob(levels, mean.double(), log_scale.double())
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), exact, rtol=1e-6, atol=0)


def test_the_decoder_has_finite_gradients_equal_to_the_cdf_differences():
    """Open edges included (their infinite bounds must not leak a NaN into the gradient, training needs it):
    the gradient in the mean and the log-scale is that of log(Phi(b) - Phi(a)) written with torch.distributions."""
    levels = torch.tensor([0, 0, 1, 128, 254, 255, 255, 60], dtype=torch.uint8)
    means = torch.tensor([-1.0, -0.97, -0.99, 0.0, 0.99, 1.0, 0.97, -0.5], dtype=torch.float64, requires_grad=True)
    log_scales = torch.full((8,), math.log(0.01), dtype=torch.float64, requires_grad=True)
    discretized_gaussian_log_prob(levels, means, log_scales).sum().backward()
    ref_means, ref_log_scales = means.detach().clone().requires_grad_(), log_scales.detach().clone().requires_grad_()
    normal = Normal(ref_means, ref_log_scales.exp())
    centre = levels.double() / 127.5 - 1
    upper = torch.where(levels == 255, 1.0, normal.cdf(centre + 1 / 255))
    lower = torch.where(levels == 0, 0.0, normal.cdf(centre - 1 / 255))
    (upper - lower).log().sum().backward()
    torch.testing.assert_close(means.grad, ref_means.grad, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(log_scales.grad, ref_log_scales.grad, rtol=1e-7, atol=1e-9)


def test_the_schedule_is_ho_et_al():
    schedule = DDPMSchedule.from_betas(BETAS, "fixed_large")
    betas = BETAS.numpy()
    abar = np.cumprod(1 - betas)
    post = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])
    np.testing.assert_allclose(schedule.model_log_variance.numpy(), np.log(np.r_[post[0], betas[1:]]), rtol=1e-14)
    small = DDPMSchedule.from_betas(BETAS, "fixed_small")
    np.testing.assert_allclose(small.model_log_variance.numpy(), np.log(np.r_[post[0], post]), rtol=1e-14)
    with pytest.raises(ValueError, match="fixed_large, fixed_small"):
        DDPMSchedule.from_betas(BETAS, "learned")


def test_bad_inputs_are_refused():
    x = images()
    u = torch.rand(2, 3)
    with pytest.raises(ValueError, match="uint8"):
        ddpm_bound_parts(toy_eps, BETAS, x.float(), u, gaussians_for(x, 3), bands=1)
    with pytest.raises(ValueError, match="K\\+1"):
        ddpm_bound_parts(toy_eps, BETAS, x, u, gaussians_for(x, 2), bands=1)
    with pytest.raises(ValueError, match="bands"):
        ddpm_bound_parts(toy_eps, BETAS, x, u, gaussians_for(x, 3), bands=STEPS)


# --- against diffusers ------------------------------------------------------------------------------------

def tiny_unet(seed=0):
    """A UNet2DModel laid out like google/ddpm-cifar10-32's (positional time embedding, an attention block on
    the way down and up, norm_eps 1e-6, no padding on the downsampling conv), tiny, every tensor random."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                       attention_head_dim=None)
    randomise_(unet, torch.Generator().manual_seed(seed), scale=0.2)
    return unet.eval()


@pytest.mark.parametrize("variance, clip, k", [("fixed_large", True, 11), ("fixed_small", False, 11), ("fixed_large", False, 4),
                                               ("fixed_small", True, 3)])
def test_the_bound_is_diffusers_ddpm(variance, clip, k):
    from diffusers import DDPMScheduler

    steps = 12
    scheduler = DDPMScheduler(num_train_timesteps=steps, beta_start=0.01, beta_end=0.2, variance_type=variance, clip_sample=clip)
    betas = scheduler.betas.double()  # the scheduler's own (float32) betas, in float64 on both sides
    ref_scheduler = float64_scheduler(scheduler, betas)
    unet = tiny_unet().double()
    unets = {torch.float64: unet, torch.float32: copy.deepcopy(unet).float()}
    x = images((3, 3, 8, 8), seed=5)
    t = stratified(torch.rand(3, k, generator=torch.Generator().manual_seed(6), dtype=torch.float64))
    gaussians = gaussians_for(x, k, seed=7)
    ref = reference_bound(unet, ref_scheduler, x, t, gaussians)

    def eps_fn(z, index):
        with torch.no_grad():
            return unets[z.dtype](z, index).sample

    ours = ddpm_bound_parts(eps_fn, betas, x, t, gaussians, bands=3, variance=variance, clip_denoised=clip)
    for name in ("prior", "diffusion", "reconstruction", "log_px"):
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=1e-9, msg=name)
    ours32 = ddpm_bound_parts(eps_fn, betas, x, t.float(), gaussians.float(), bands=3, variance=variance,
                              clip_denoised=clip)
    torch.testing.assert_close(ours32["log_px"].double(), ref["log_px"], rtol=1e-5, atol=0)
