"""The diffusion family: its bound against a model whose log P(x) is known (data uniform over the 256 levels
with the Bayes-optimal denoiser: the bound is 8 bits/dim up to a known, tiny gap, and below the exact value,
computed by quadrature); a zero denoiser's diffusion term against its closed form; the prior and
reconstruction terms against direct computations; the parts summing to log_px; scores independent of the
batch; the U-Net's settings against the released google/ddpm-cifar10-32 config; the discrete schedule against
diffusers' DDPMScheduler; samples; refused sizes; and a tiny model trained and scored through the CLI.
Tiny shapes, CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cli_runs import run_cli

from oodbench.errors import OodbenchError
from oodbench.models import build_model, model_config
from oodbench.models.base import LikelihoodModel
from oodbench.models.diffusion import Diffusion, DiffusionConfig
from oodbench.models.diffusion.networks import unet_settings
from oodbench.units import N_LEVELS

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0
LEVELS = 2 * (np.arange(N_LEVELS) + 0.5) / N_LEVELS - 1  # the 256 bin centres in [-1, 1]


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _tiny(**settings) -> Diffusion:
    """A small real U-Net on 1x8x8 images."""
    base = dict(in_channels=1, image_size=8, channels=8, channel_mult=(1, 2), attention_resolutions=(4,),
                norm_groups=4, time_points=8, sample_steps=4)
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**{**base, **settings})).eval()


def _bare(**settings) -> Diffusion:
    """A model whose denoiser a test replaces: 1x4x4 images, a one-level U-Net that is never called."""
    base = dict(in_channels=1, image_size=4, channels=4, channel_mult=(1,), attention_resolutions=(),
                norm_groups=4, time_points=16)
    return Diffusion(DiffusionConfig(**{**base, **settings})).eval()


class BayesDenoiser(nn.Module):
    """The optimal denoiser for data uniform over the 256 levels, each sub-pixel independent: z_t is a mixture of
    256 Gaussians N(alpha_t f_k, sigma_t^2), and eps_hat = (z - alpha_t E[f | z_t]) / sigma_t. Written from the
    definitions, in float64; its time input is the U-Net's, 1000 t."""

    def forward(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.double()[:, None, None, None] / 1000
        g = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t
        alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
        levels = torch.as_tensor(LEVELS)
        zd = z.double()
        weights = torch.softmax(-0.5 * ((zd[..., None] - alpha[..., None] * levels) / sigma[..., None]) ** 2, dim=-1)
        mean_f = (weights * levels).sum(-1)
        return ((zd - alpha * mean_f) / sigma).to(z.dtype)


class ZeroDenoiser(nn.Module):
    def forward(self, z: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z)


def _noise(model: Diffusion, x: torch.Tensor, index: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return model.eval_noise(x, index, seed)


# --- the bound on a model with a known likelihood ------------------------------------------------------


def _uniform_data_reference(k: int) -> dict[str, float]:
    """For one sub-pixel of value k of data uniform over the levels, with the exact reverse process of that data
    (the Bayes denoiser) and the prior N(0, 1): per dimension, the bound's expectation, its three terms, and the
    exact log p(x) of the model. q(z_1) = (1/256) sum_k N(alpha_1 f_k, sigma_1^2). With an exact reverse process
    p(x, z) differs from q(x, z) only through p(z_1) vs q(z_1), so (Gauss-Hermite quadrature over z_1 ~ q(z_1|x)):
        expected bound = log q(x) - E[log q(z_1) - log N(z_1; 0, 1)],  log q(x) = -ln 256
        exact log p(x) = log q(x) + log E[N(z_1; 0, 1) / q(z_1)]   (>= the bound, by Jensen)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(120)
    weights = weights / weights.sum()
    alpha_1, sigma_1 = math.sqrt(_sigmoid(-GAMMA_MAX)), math.sqrt(_sigmoid(GAMMA_MAX))
    z1 = alpha_1 * LEVELS[k] + sigma_1 * nodes
    log_q_z1 = np.logaddexp.reduce(-0.5 * ((z1[:, None] - alpha_1 * LEVELS) / sigma_1) ** 2, axis=1) \
        - math.log(N_LEVELS) - math.log(sigma_1) - 0.5 * math.log(2 * math.pi)
    log_prior = -0.5 * z1**2 - 0.5 * math.log(2 * math.pi)
    bound = -math.log(N_LEVELS) - float(np.sum(weights * (log_q_z1 - log_prior)))
    exact = -math.log(N_LEVELS) + math.log(float(np.sum(weights * np.exp(log_prior - log_q_z1))))
    # the prior term: -KL(N(alpha_1 f, sigma_1^2) || N(0, 1)), from torch.distributions
    prior = -torch.distributions.kl_divergence(torch.distributions.Normal(alpha_1 * LEVELS[k], sigma_1),
                                               torch.distributions.Normal(0.0, 1.0)).item()
    # the reconstruction term: E log p(x | z_0), z_0 = alpha_0 f + sigma_0 eps_0; for uniform data the decoder is
    # the posterior q(x | z_0) of the 256 Gaussians N(alpha_0 f_j, sigma_0^2)
    alpha_0, sigma_0 = math.sqrt(_sigmoid(-GAMMA_MIN)), math.sqrt(_sigmoid(GAMMA_MIN))
    z0 = alpha_0 * LEVELS[k] + sigma_0 * nodes
    log_joint = -0.5 * ((z0[:, None] - alpha_0 * LEVELS) / sigma_0) ** 2
    reconstruction = float(np.sum(weights * (log_joint[:, k] - np.logaddexp.reduce(log_joint, axis=1))))
    return {"bound": bound, "exact": exact, "prior": prior, "reconstruction": reconstruction,
            "diffusion": bound - prior - reconstruction}


def test_bound_with_the_optimal_denoiser_is_the_exact_likelihood_of_uniform_data():
    """8 bits/dim, the likelihood of data uniform over the levels, is what the bound must find with the Bayes
    denoiser; its Monte Carlo estimate, averaged over 1,000 index-seeded draws, matches the quadrature value of
    each part, and lies below the exact log p(x) of the model by the (known, tiny) prior mismatch."""
    model = _bare()
    model.denoiser = BayesDenoiser()
    values = torch.tensor([[3, 60, 128, 250], [0, 17, 200, 255], [90, 91, 92, 93], [7, 140, 33, 222]], dtype=torch.uint8)
    x = values.view(1, 1, 4, 4)
    draws = 4000
    with torch.no_grad():
        parts = model.log_prob_parts(x.expand(draws, -1, -1, -1), _noise(model, x.expand(draws, -1, -1, -1),
                                                                         torch.arange(draws)))
    reference = {name: 0.0 for name in ("bound", "exact", "prior", "reconstruction", "diffusion")}
    for k in values.flatten().tolist():
        for name, value in _uniform_data_reference(k).items():
            reference[name] += value
    dims = x.numel()
    assert reference["bound"] / dims == pytest.approx(-math.log(N_LEVELS), abs=1e-3)  # 8 bits/dim, the model's p(x)
    assert 0 < reference["exact"] - reference["bound"] < 1e-3 * dims  # the bound is below, by very little
    for name, ours in (("bound", "log_px"), ("prior", "prior"), ("reconstruction", "reconstruction"),
                       ("diffusion", "diffusion")):
        estimate = parts[ours].double()
        standard_error = estimate.std().item() / math.sqrt(draws)
        assert abs(estimate.mean().item() - reference[name]) < 4 * standard_error + 1e-4, (name, estimate.mean(), reference[name])
    # the estimate is precise enough for this to mean something: a diffusion term off by 1% would fail
    assert 4 * parts["log_px"].double().std().item() / math.sqrt(draws) < 0.008 * abs(reference["diffusion"])
    # the prior term has no randomness, so it matches torch.distributions' KL image by image
    assert torch.allclose(parts["prior"].double(), torch.full((draws,), reference["prior"], dtype=torch.float64), atol=1e-5)


def test_a_zero_denoiser_pays_half_the_log_snr_range_per_dimension():
    """With eps_hat = 0 the diffusion term is -1/2 (gamma_max - gamma_min) ||eps||^2 at every time point: per
    image, -9.15 times the mean of its K draws' squared norms, read from eval_noise's documented layout
    (u, the reconstruction's Gaussian, then one per time point); on average -9.15 D."""
    model = _bare(time_points=8)
    model.denoiser = ZeroDenoiser()
    n, dims, k = 400, 16, 8
    x = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    noise = _noise(model, x, torch.arange(n))
    parts = model.log_prob_parts(x, noise)
    per_point = noise[:, 1 + dims:].view(n, k, dims).double().square().sum(-1)
    half_range = 0.5 * (GAMMA_MAX - GAMMA_MIN)
    assert torch.allclose(parts["diffusion"].double(), -half_range * per_point.mean(1), rtol=1e-5)
    assert parts["diffusion"].double().mean().item() == pytest.approx(-half_range * dims, rel=4 / math.sqrt(n * k * dims / 2))
    # the bands split the term by time; with K = 8 each holds two points
    assert torch.allclose(sum(parts[f"band_{b}"] for b in range(4)), parts["diffusion"], rtol=1e-5)
    assert torch.allclose(parts["band_0"].double(), -half_range * per_point[:, :2].sum(1) / k, rtol=1e-5)


def test_parts_sum_to_log_px_and_the_bound_is_the_sum_of_its_terms_on_a_real_unet():
    model = _tiny()
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        parts = model.log_prob_parts(x, _noise(model, x, torch.arange(5)))
    assert set(parts) == {"log_px", *Diffusion.part_names}
    assert torch.allclose(parts["prior"] + parts["reconstruction"] + parts["diffusion"], parts["log_px"])
    assert torch.allclose(sum(parts[f"band_{b}"] for b in range(4)), parts["diffusion"], rtol=1e-5)
    assert all((value <= 0).all() for value in parts.values())  # log-probability contributions of a discrete x


def test_more_time_points_estimate_the_same_bound_with_less_spread():
    """Stratified time points are unbiased for every K: the mean over images stays put while each image's spread
    over draws falls."""
    model = _bare()
    model.denoiser = BayesDenoiser()
    x = torch.randint(0, 256, (1, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    draws, spread, means = 400, {}, {}
    for k in (1, 4, 16):
        model.time_points = k
        with torch.no_grad():
            log_px = model.log_prob(x.expand(draws, -1, -1, -1), _noise(model, x.expand(draws, -1, -1, -1),
                                                                       torch.arange(draws))).double()
        spread[k], means[k] = log_px.std().item(), log_px.mean().item()
    assert spread[16] < spread[4] < spread[1]
    assert abs(means[1] - means[16]) < 4 * spread[1] / math.sqrt(draws)


# --- invariances and the contract ------------------------------------------------------------------------


def test_scores_do_not_depend_on_the_batch():
    model = _tiny()
    x = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    index = torch.arange(100, 107)
    with torch.no_grad():
        whole = model.log_prob_parts(x, _noise(model, x, index))
        parts = [model.log_prob_parts(x[i:i + 3], _noise(model, x[i:i + 3], index[i:i + 3])) for i in (0, 3, 6)]
    for name, value in whole.items():
        assert torch.allclose(torch.cat([p[name] for p in parts]), value, rtol=1e-5, atol=1e-5), name
    # and another seed draws other times and noise
    with torch.no_grad():
        other = model.log_prob(x, _noise(model, x, index, seed=1))
    assert not torch.allclose(other, whole["log_px"])


def test_contract_bound_name_and_statistic_costs():
    model = _tiny()
    assert isinstance(model, LikelihoodModel) and model.bound == "vdm-elbo-8t"
    assert model.statistic_passes("likelihood", {}) == "8 denoiser forward"
    assert model.statistic_passes("diffpath", {"diffpath_steps": 10}) == "10 denoiser forward"
    assert model.statistic_passes("msma", {"msma_levels": 10}) == "10 denoiser forward"
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    noise = _noise(model, x, torch.arange(2))
    value = model.validation_log_prob(x, noise)
    assert value.shape == (2,) and torch.isfinite(value).all()
    with torch.no_grad():  # without index-seeded noise: fresh draws of the same layout
        assert torch.isfinite(model.log_prob(x)).all() and torch.isfinite(model.validation_log_prob(x)).all()
    model.train()
    loss = -model.training_log_prob(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.denoiser.parameters() if p.requires_grad)


def test_the_pieces_the_ood_statistics_use():
    model = _tiny()
    x = torch.tensor([0, 255], dtype=torch.uint8).repeat(32).view(1, 1, 8, 8)
    assert model.scaled(x).min().item() == pytest.approx(-1 + 1 / 256) and model.scaled(x).max().item() == pytest.approx(1 - 1 / 256)
    t = torch.tensor([0.0, 0.5, 1.0])
    alpha, sigma = model.alpha_sigma(t)
    gamma = GAMMA_MIN + (GAMMA_MAX - GAMMA_MIN) * t.double().numpy()
    assert np.allclose(sigma.numpy() ** 2, _sigmoid(gamma), rtol=1e-5) and torch.allclose(alpha**2 + sigma**2, torch.ones(3))
    z = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert model.eps(z, t).shape == z.shape


def test_discrete_time_follows_diffusers_ddpm_scheduler():
    from diffusers import DDPMScheduler

    model = _tiny(time="discrete")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    assert torch.equal(model.betas.float(), scheduler.betas)
    steps = torch.tensor([0, 1, 499, 999])
    t = (steps + 1).double() / 1000  # step i is time (i + 1) / T
    alpha, sigma = model.alpha_sigma(t)
    assert torch.allclose(alpha**2, scheduler.alphas_cumprod[steps], rtol=1e-5)
    assert torch.allclose(sigma**2, 1 - scheduler.alphas_cumprod[steps], atol=1e-6)  # diffusers' float32 1 - alpha_bar
    assert model.bound == "ddpm-elbo-8t"
    x = torch.randint(0, 256, (1, 1, 8, 8), dtype=torch.uint8)
    assert torch.allclose(model.scaled(x).double(), x.double() / 127.5 - 1, atol=1e-7)


# --- the U-Net, its sizes and the registry ----------------------------------------------------------------

# The released google/ddpm-cifar10-32 unet/config.json (Ho et al. 2020's CIFAR-10 model, converted by diffusers).
GOOGLE_DDPM_CIFAR10 = {
    "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}


def test_the_paper_size_is_the_released_ddpm_cifar10_unet():
    settings = unet_settings(DiffusionConfig.paper(in_channels=3, image_size=32))
    ours = {key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()}
    assert {key: ours[key] for key in GOOGLE_DDPM_CIFAR10} == GOOGLE_DDPM_CIFAR10
    assert ours["dropout"] == 0.1  # Ho et al.'s training dropout; the released config leaves it at diffusers' 0


def test_sizes_the_unet_cannot_take_are_one_line_errors():
    with pytest.raises(OodbenchError, match=r"image_size.*multiple of 4"):
        model_config("diffusion", {"channel_mult": [1, 2, 2]}, image_shape=(1, 30, 30))
    with pytest.raises(OodbenchError, match=r"attention_resolutions.*sides are \[32, 16, 8, 4\]"):
        model_config("diffusion", {"attention_resolutions": [2]}, image_shape=(3, 32, 32))
    with pytest.raises(OodbenchError, match=r"norm_groups"):
        model_config("diffusion", {"channels": 12, "norm_groups": 8}, image_shape=(3, 32, 32))
    with pytest.raises(OodbenchError, match=r"channel_mult"):
        model_config("diffusion", {"channel_mult": 2}, image_shape=(3, 32, 32))
    model = _tiny()
    with pytest.raises(OodbenchError, match="uint8 images"):
        model.log_prob(torch.zeros(1, 1, 8, 8))


def test_fourier_features_show_the_unet_where_z_sits_between_levels():
    from oodbench.models.diffusion.networks import fourier_features

    # at exponent 7 a period is one level of [-1, 1] (2 / 256): every bin centre gets the same features
    centres = torch.as_tensor(LEVELS, dtype=torch.float64).view(1, 1, 16, 16)
    features = fourier_features(centres, (7,))
    assert features.shape == (1, 3, 16, 16) and torch.equal(features[:, :1], centres)
    assert torch.allclose(features[:, 1], torch.zeros(16, 16, dtype=torch.float64), atol=1e-9)  # sin(2 pi (k + 1/2))
    assert torch.allclose(features[:, 2], -torch.ones(16, 16, dtype=torch.float64))
    model = _tiny(fourier_features=(6, 7))
    assert model.denoiser.unet.conv_in.in_channels == 1 + 4
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x, _noise(model, x, torch.arange(2)))).all()


def test_built_by_name_from_padded_grey_images():
    model = build_model("diffusion", model_config("diffusion", {"channels": 8, "norm_groups": 4}, image_shape=(1, 32, 32)))
    assert isinstance(model, Diffusion) and model.config.image_size == 32 and model.config.in_channels == 1


def test_samples_are_images_of_the_models_shape_and_seeded():
    from oodbench.analysis.samples import draw_samples, sampler_of

    model = _tiny()
    assert sampler_of(model) == "diffusion"
    first = draw_samples(model, 3, image_shape=(1, 8, 8), seed=5)
    assert first.shape == (3, 1, 8, 8) and first.dtype == torch.uint8
    assert torch.equal(first, draw_samples(model, 3, image_shape=(1, 8, 8), seed=5))
    discrete = _tiny(time="discrete")
    assert draw_samples(discrete, 2, image_shape=(1, 8, 8), seed=0).shape == (2, 1, 8, 8)


# --- end to end through the CLI ---------------------------------------------------------------------------

TINY_CLI = ["--set", "channels=8", "--set", "channel_mult=[1, 2]", "--set", "attention_resolutions=[]",
            "--set", "norm_groups=4", "--set", "time_points=4", "--set", "sample_steps=2"]


@pytest.mark.slow
def test_trains_and_is_scored_through_the_cli(tmp_path, staged_root, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--model", "diffusion", "--dataset", "fashionmnist", "--data-root", staged_root,
                            "--epochs", "1", "--limit-train", "128", "--batch-size", "64", "--runs-dir", tmp_path,
                            "--quiet", *TINY_CLI], capsys)
    assert code == 0, err
    run = tmp_path / "diffusion-fashionmnist-seed0"
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", run, "--data-root", staged_root,
                            "--limit", "20", "--train-sample", "10", "--scores", "likelihood,dose", "--quiet"], capsys)
    assert code == 0, err
    folder = run / "eval" / "fashionmnist_vs_mnist"
    scores = pd.read_csv(folder / "scores.csv")
    assert {"prior", "reconstruction", "diffusion", "band_0", "band_3"} <= set(scores.columns)
    assert np.allclose(scores["prior"] + scores["reconstruction"] + scores["diffusion"], scores["log_px"], atol=1e-2)
    # bits/dim of the 28x28 image: finite and above 0, the bound of a model trained for two steps
    assert np.isfinite(scores["bpd"]).all() and (scores["bpd"] > 0).all()
    rows = json.loads((folder / "metrics.json").read_text())["rows"]
    assert {row["bound"] for row in rows} == {"vdm-elbo-4t"} and {row["score"] for row in rows} >= {"likelihood", "dose"}
