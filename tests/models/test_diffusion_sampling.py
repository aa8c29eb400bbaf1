"""The diffusion model's ancestral sampling: one reverse step (`reverse_step`) against diffusers' DDPMScheduler.step,
the independent reference of Ho et al. 2020's sampler, for both fixed variances, with and without clipping x_0,
at every step and respaced; and `Diffusion.sample` following the configured variance and clipping. Tiny shapes, CPU."""

from __future__ import annotations

import math

import pytest
import torch

from oodbench.models.diffusion import Diffusion, DiffusionConfig
from oodbench.models.diffusion import model as diffusion_model
from oodbench.models.diffusion.model import reverse_step

T = 50
SHAPE = (2, 3, 4, 4)


def _scheduler(variance: str, clip: bool):
    """diffusers' DDPMScheduler with a linear schedule of T steps, its schedule in float64 so the comparison is exact
    to rounding (step computes from alphas_cumprod and `one` only)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.2,
                              variance_type=variance, clip_sample=clip, prediction_type="epsilon")
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _gamma(scheduler, index: int) -> float:
    abar = scheduler.alphas_cumprod[index].item()
    return math.log1p(-abar) - math.log(abar)


def _diffusers_mean_std(scheduler, eps: torch.Tensor, t: int, z: torch.Tensor) -> tuple[torch.Tensor, float]:
    """step's prev_sample is mean + std * randn_tensor(shape, generator): two seeded draws give both, std by least
    squares over the elements (it is one number), and the second draw checks the model of the output."""
    from diffusers.utils.torch_utils import randn_tensor

    outs, noises = [], []
    for seed in (11, 12):
        outs.append(scheduler.step(eps, t, z, generator=torch.Generator().manual_seed(seed)).prev_sample)
        noises.append(randn_tensor(z.shape, generator=torch.Generator().manual_seed(seed), dtype=z.dtype))
    d_out, d_noise = outs[0] - outs[1], noises[0] - noises[1]
    std = float((d_out * d_noise).sum() / (d_noise * d_noise).sum())
    mean = outs[0] - std * noises[0]
    torch.testing.assert_close(outs[1], mean + std * noises[1], rtol=0, atol=1e-12)
    return mean, std


def _inputs(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + t)
    # z wider than N(0, 1) so that x_hat leaves [-1, 1] and clipping matters at every t
    z = 1.5 * torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    return z, torch.randn(SHAPE, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("t", [1, 2, 10, 25, T - 2, T - 1])
def test_reverse_step_is_diffusers_ddpm_step(variance, clip, t):
    """Every step taken: diffusers' timestep t (0-based) is the gamma of alphas_cumprod[t], the step goes to t - 1.
    (t = 0, the last step, adds no noise; `sample` takes it as the mean x_hat, rounded.)"""
    scheduler = _scheduler(variance, clip)
    z, eps = _inputs(t)
    want_mean, want_std = _diffusers_mean_std(scheduler, eps, t, z)
    mean, std = reverse_step(z, eps, _gamma(scheduler, t), _gamma(scheduler, t - 1), clip=clip,
                             large_variance=variance == "fixed_large")
    assert std == pytest.approx(want_std, rel=1e-6)
    torch.testing.assert_close(mean, want_mean, rtol=1e-6, atol=1e-9)
    if clip:  # the inputs are such that clipping changes the mean
        unclipped, _ = reverse_step(z, eps, _gamma(scheduler, t), _gamma(scheduler, t - 1), clip=False,
                                    large_variance=variance == "fixed_large")
        assert (unclipped - mean).abs().max() > 1e-3


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small"])
def test_reverse_step_is_diffusers_respaced_step(variance):
    """With 10 of the 50 steps (diffusers' set_timesteps, "leading" spacing: 45, 40, ..., 0) a step goes from t to
    t - 5: fixed_large's variance is that step's beta, 1 - abar_t / abar_{t-5}."""
    scheduler = _scheduler(variance, True)
    scheduler.set_timesteps(10)
    stride = T // 10
    for t in scheduler.timesteps.tolist()[:-1]:
        z, eps = _inputs(t)
        want_mean, want_std = _diffusers_mean_std(scheduler, eps, t, z)
        mean, std = reverse_step(z, eps, _gamma(scheduler, t), _gamma(scheduler, t - stride), clip=True,
                                 large_variance=variance == "fixed_large")
        assert std == pytest.approx(want_std, rel=1e-6)
        torch.testing.assert_close(mean, want_mean, rtol=1e-6, atol=1e-9)


def test_reverse_step_unclipped_is_vdms_update():
    """Unclipped, the posterior-mean form is VDM's alpha_s / alpha_t (z_t - sigma_t c eps_hat), sigma_s sqrt(c)."""
    z, eps = _inputs(3)
    g_t, g_s = 1.3, -2.0
    c = -math.expm1(g_s - g_t)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    mean, std = reverse_step(z, eps, g_t, g_s, clip=False, large_variance=False)
    torch.testing.assert_close(mean, math.sqrt(sig(-g_s) / sig(-g_t)) * (z - math.sqrt(sig(g_t)) * c * eps))
    assert std == pytest.approx(math.sqrt(sig(g_s) * c), rel=1e-12)


def _tiny(**settings) -> Diffusion:
    """A small real U-Net on 1x8x8 images (tests/models/test_diffusion.py's)."""
    base = dict(in_channels=1, image_size=8, channels=8, channel_mult=(1, 2), attention_resolutions=(4,),
                norm_groups=4, time_points=8, sample_steps=4)
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**{**base, **settings})).eval()


@pytest.mark.parametrize("time, variance, clip", [("discrete", "fixed_large", True), ("discrete", "fixed_small", True),
                                                  ("discrete", "fixed_large", False), ("continuous", "fixed_large", True)])
def test_sampling_follows_the_configured_variance_and_clipping(monkeypatch, time, variance, clip):
    """Discrete time's steps take the configured variance and clipping; continuous time's are VDM's (neither). The
    images are seeded uint8 of the model's shape."""
    calls = []

    def recording(*args, **kwargs):
        calls.append((kwargs["clip"], kwargs["large_variance"]))
        return reverse_step(*args, **kwargs)

    monkeypatch.setattr(diffusion_model, "reverse_step", recording)
    model = _tiny(time=time, variance=variance, clip_denoised=clip)
    first = model.sample(3, generator=torch.Generator().manual_seed(5))
    assert first.shape == (3, 1, 8, 8) and first.dtype == torch.uint8
    assert torch.equal(first, model.sample(3, generator=torch.Generator().manual_seed(5)))
    discrete = time == "discrete"
    assert calls and set(calls) == {(discrete and clip, discrete and variance == "fixed_large")}


def test_discrete_samples_differ_between_the_variances():
    """Same weights and seed: the larger variance gives other images."""
    large = _tiny(time="discrete", variance="fixed_large").sample(2, generator=torch.Generator().manual_seed(0))
    small = _tiny(time="discrete", variance="fixed_small").sample(2, generator=torch.Generator().manual_seed(0))
    assert large.shape == small.shape == (2, 1, 8, 8) and not torch.equal(large, small)
