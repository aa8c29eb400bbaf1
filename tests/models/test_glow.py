"""Glow and CV-Glow: every layer inverts, its log-determinant cancels and matches a brute-force
Jacobian; actnorm's data-dependent init is right and survives a checkpoint; the whole model's
log-determinant matches the Jacobian of y -> (all latents), and its density exp(log_pz + logdet)
integrates to one over R^D (importance sampling). Tiny shapes, CPU, float64 where exactness is checked.
Zero-initialised weights are perturbed first, or the couplings would be identities."""

from __future__ import annotations

import math

import pytest
import torch
from flow_checks import brute_force_logdet, check_flow_layer, check_inverts, perturb

from oodbench.data.quantize import discretization_nats, index_noise
from oodbench.errors import OodbenchError
from oodbench.models.base import DequantizedFlow
from oodbench.models.glow import FlowStep, Glow, GlowConfig
from oodbench.models.glow.actnorm import ActNorm
from oodbench.models.glow.coupling import Coupling
from oodbench.models.glow.invconv import InvConv1x1
from oodbench.models.glow.nets import ConvActNorm
from oodbench.models.glow.squeeze_split import Split, Squeeze, TopPrior, squeeze, unsqueeze
from oodbench.scores import bits_per_dim

F64 = torch.float64


def _randn(*shape, seed=0, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale + shift


def _ready(layer: torch.nn.Module, shape: tuple[int, ...]) -> torch.nn.Module:
    """float64, actnorm initialised on a batch of its own, then every parameter perturbed."""
    torch.manual_seed(0)
    layer = layer.double()
    with torch.no_grad():
        layer(_randn(8, *shape, seed=1, scale=1.5, shift=0.3))
    return perturb(layer, scale=0.2)


LAYERS = {
    "actnorm": (lambda: ActNorm(4), (4, 4, 4)),
    "invconv": (lambda: InvConv1x1(4), (4, 4, 4)),
    "coupling-affine": (lambda: Coupling(4, 8, affine=True), (4, 4, 4)),
    "coupling-additive": (lambda: Coupling(4, 8, affine=False), (4, 4, 4)),
    "coupling-affine-odd-channels": (lambda: Coupling(3, 8, affine=True), (3, 2, 4)),
    "squeeze": (lambda: Squeeze(), (2, 4, 4)),
    "step-affine": (lambda: FlowStep(4, 8, affine=True), (4, 4, 4)),
    "step-additive": (lambda: FlowStep(4, 8, affine=False), (4, 4, 4)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_inverts_and_logdet_matches_jacobian(name):
    build, shape = LAYERS[name]
    layer = _ready(build(), shape)
    check_flow_layer(layer, _randn(2, *shape, seed=2), atol=1e-8)


@pytest.mark.parametrize("name", ["coupling-affine", "step-affine"])
def test_affine_logdet_depends_on_the_input(name):
    """Guards the checks above: a perturbed affine layer is not volume-preserving."""
    build, shape = LAYERS[name]
    layer = _ready(build(), shape)
    _, logdet = layer(_randn(2, *shape, seed=3))
    assert (logdet[0] - logdet[1]).abs() > 1e-6


def test_squeeze_layout_and_inverse():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    # channel 4c + 2i + j of the output holds pixel (2h + i, 2w + j) of channel c
    reference = x.view(2, 3, 2, 2, 3, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 12, 2, 3)
    assert torch.equal(squeeze(x), reference)
    assert torch.equal(unsqueeze(squeeze(x)), x)


def test_split_inverts_and_its_prior_is_a_gaussian():
    split = _ready(Split(4), (4, 4, 4))
    x = _randn(3, 4, 4, 4, seed=4)
    z1, z2, log_pz2 = split(x)
    assert z1.shape == z2.shape == (3, 2, 4, 4)
    torch.testing.assert_close(split.reverse(z1, z2), x, atol=0, rtol=0)
    mean, log_scale = split.prior(z1).chunk(2, dim=1)
    reference = torch.distributions.Normal(mean, log_scale.exp()).log_prob(z2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_pz2, reference)
    assert not torch.allclose(mean, torch.zeros_like(mean)), "perturbed: the prior is conditional"


def test_top_prior_is_a_gaussian_with_per_channel_parameters():
    prior = perturb(TopPrior(3).double())
    z = _randn(2, 3, 2, 2, seed=5)
    reference = torch.distributions.Normal(prior.mean.view(1, -1, 1, 1), prior.log_scale.exp().view(1, -1, 1, 1))
    torch.testing.assert_close(prior(z), reference.log_prob(z).sum(dim=(1, 2, 3)))
    fixed = TopPrior(3, learn=False)
    assert not any(p.requires_grad for p in fixed.parameters())


# ---- actnorm: data-dependent init and checkpoints ---------------------------------------------

def test_actnorm_init_gives_zero_mean_unit_variance():
    layer = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 2.0, 0.1]).view(1, 3, 1, 1) + torch.tensor([-1.0, 0.0, 4.0]).view(1, 3, 1, 1)
    y, logdet = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert bool(layer.initialized)
    # a second batch with other statistics does not re-initialise
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(torch.randn(16, 3, 5, 5) * 10)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_actnorm_init_survives_state_dict_reload():
    layer = ActNorm(3)
    layer(torch.randn(32, 3, 4, 4) * 3 + 1)
    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    new_data = torch.randn(8, 3, 4, 4) * 7 - 2
    torch.testing.assert_close(fresh(new_data)[0], layer(new_data)[0], atol=0, rtol=0)
    assert torch.equal(fresh.bias, state["bias"]) and torch.equal(fresh.log_scale, state["log_scale"])
    # and the other way round: loading an uninitialised state makes the next batch initialise again
    layer.load_state_dict(ActNorm(3).state_dict())
    y, _ = layer(new_data)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_glow_checkpoint_reload_is_identical_and_not_reinitialised():
    config = GlowConfig(in_channels=1, levels=2, steps=2, hidden_channels=8)
    torch.manual_seed(0)
    model = Glow(config)
    with torch.no_grad():
        model.log_prob(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8))  # data-dependent init
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    reloaded = Glow(config)
    reloaded.load_state_dict(state)
    x = torch.randint(0, 60, (4, 1, 8, 8), dtype=torch.uint8)  # darker images: other statistics
    noise = index_noise(torch.arange(4), (1, 8, 8), seed=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.log_prob(x, noise), model.log_prob(x, noise), atol=0, rtol=0)
    assert all(torch.equal(state[k], v) for k, v in reloaded.state_dict().items()), "a reload re-initialised"


def test_conv_actnorm_fused_equals_unfused():
    layer = _ready(ConvActNorm(3, 5, 3), (3, 4, 4))
    x = _randn(2, 3, 4, 4, seed=6)
    torch.testing.assert_close(layer(x), layer.forward_unfused(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("affine", [True, False])
def test_step_fused_equals_unfused(affine):
    step = _ready(FlowStep(4, 8, affine=affine), (4, 4, 4))
    x = _randn(3, 4, 4, 4, seed=7)
    y, logdet = step(x)
    y_ref, logdet_ref = step.forward_unfused(x)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, logdet_ref, atol=1e-10, rtol=0)
    # the same gradients too: training follows the paper's parameterisation, not a refolded one
    weights = _randn(*y.shape, seed=8)
    grads = torch.autograd.grad((y * weights).sum() + logdet.sum(), list(step.parameters()), allow_unused=True)
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + logdet_ref.sum(), list(step.parameters()), allow_unused=True)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, atol=1e-10, rtol=1e-10)


# ---- the whole model --------------------------------------------------------------------------

GLOWS = {
    "affine": GlowConfig(in_channels=2, levels=2, steps=2, hidden_channels=8),
    "additive": GlowConfig(in_channels=2, levels=2, steps=2, hidden_channels=8, coupling="additive"),
    "affine-1level-fixed-top": GlowConfig(in_channels=1, levels=1, steps=3, hidden_channels=4, learn_top=False),
    "additive-rgb": GlowConfig(in_channels=3, levels=2, steps=1, hidden_channels=8, coupling="additive"),
}


def _ready_glow(config: GlowConfig, size: int = 4, dtype=F64) -> Glow:
    torch.manual_seed(0)
    model = Glow(config).to(dtype)
    with torch.no_grad():
        model.flow_log_density(torch.rand(16, config.in_channels, size, size, dtype=dtype))
    # Gentler than for single layers: the hidden convs start at std 0.05 and actnorm rescales their
    # output by up to ~20, so larger noise makes couplings extreme and the inverse ill-conditioned.
    return perturb(model, scale=0.05)


@pytest.mark.parametrize("name", GLOWS)
def test_glow_encode_decode_inverts(name):
    config = GLOWS[name]
    model = _ready_glow(config, size=8, dtype=torch.float32)
    y = torch.rand(3, config.in_channels, 8, 8)
    with torch.no_grad():
        latents = model.encode(y)
        assert len(latents) == config.levels
        assert sum(z[0].numel() for z in latents) == y[0].numel()
        torch.testing.assert_close(model.decode(latents), y, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", GLOWS)
def test_glow_logdet_matches_jacobian_of_all_latents(name):
    config = GLOWS[name]
    model = _ready_glow(config)
    y = torch.rand(2, config.in_channels, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        _, logdet = model.flow_log_density(y)
    for b in range(2):
        def all_latents(v):
            return torch.cat([z.reshape(-1) for z in model.encode(v.unsqueeze(0))])

        torch.testing.assert_close(logdet[b], brute_force_logdet(all_latents, y[b]), atol=1e-7, rtol=1e-7)


def test_glow_step_layers_are_checked_inside_a_model():
    """The checker on a step taken from an initialised model (channels-last inputs, as in use)."""
    model = _ready_glow(GLOWS["affine"])
    x = squeeze(_randn(2, 2, 4, 4, seed=9))
    for step in model.levels[0].steps:
        check_flow_layer(step, x, atol=1e-8)
        check_inverts(step.coupling, x, atol=1e-8)


def _reference_log_pz(model: Glow, y: torch.Tensor) -> torch.Tensor:
    """Every level's prior, walked by hand with torch.distributions and the unfused steps."""
    x, total = y - 0.5, torch.zeros(y.shape[0], dtype=y.dtype)
    for level in model.levels:
        x = squeeze(x)
        for step in level.steps:
            x = step.forward_unfused(x)[0]
        if level.split is not None:
            x, z2 = x.chunk(2, dim=1)
            mean, log_scale = level.split.prior(x).chunk(2, dim=1)
            total = total + torch.distributions.Normal(mean, log_scale.exp()).log_prob(z2).sum(dim=(1, 2, 3))
    top = model.top_prior
    prior = torch.distributions.Normal(top.mean.view(1, -1, 1, 1), top.log_scale.exp().view(1, -1, 1, 1))
    return total + prior.log_prob(x).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("name", GLOWS)
def test_glow_log_pz_sums_every_levels_prior(name):
    config = GLOWS[name]
    model = _ready_glow(config)
    y = torch.rand(3, config.in_channels, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        log_pz, _ = model.flow_log_density(y)
        torch.testing.assert_close(log_pz, _reference_log_pz(model, y), atol=1e-9, rtol=1e-9)


# Tiny Glows whose density over all of R^D can be integrated by importance sampling: D = 4 without a
# split, and D = 16 with one (two levels need 4x4 images), one step per level to keep it Gaussian-like.
INTEGRABLE_GLOWS = {
    "one-level-2x2": (GlowConfig(in_channels=1, levels=1, steps=2, hidden_channels=8), 2),
    "two-levels-with-split-4x4": (GlowConfig(in_channels=1, levels=2, steps=1, hidden_channels=8), 4),
}


def _importance_estimate_of_total_mass(model: Glow, size: int, n_draws: int) -> tuple[float, float]:
    """(estimate, standard error) of the integral over R^D of p(y) = exp(log_pz + logdet) from
    `flow_log_density`, by importance sampling: y_i ~ q, the mean of w_i = p(y_i) / q(y_i), and
    std(w) / sqrt(N). q is a Gaussian fitted (mean, full covariance) to 20k of the model's own samples,
    the covariance inflated by 1.2^2 so that q's tails are heavier than the model's where it matters."""
    torch.manual_seed(20)  # `sample` draws from torch's generator
    samples = model.sample(20_000, image_size=(size, size)).flatten(1)
    assert torch.isfinite(samples).all()
    proposal = torch.distributions.MultivariateNormal(samples.mean(dim=0), covariance_matrix=1.2**2 * torch.cov(samples.T))
    torch.manual_seed(21)
    y = proposal.sample((n_draws,))
    with torch.no_grad():
        log_p = torch.cat([sum(model.flow_log_density(chunk.view(-1, 1, size, size))) for chunk in y.split(50_000)])
    weights = torch.exp(log_p - proposal.log_prob(y))
    return weights.mean().item(), weights.std().item() / math.sqrt(n_draws)


@pytest.mark.parametrize("name", INTEGRABLE_GLOWS)
def test_glow_density_integrates_to_one(name):
    """exp(log_pz + logdet) is a probability density on R^D: its integral, estimated from 200k
    importance-weighted draws in float64, is 1 within 5 standard errors and within 0.05. The brute-force
    Jacobian tests check each logdet term against its layer; this checks that the terms and the priors
    add up to a density. Catches: a dropped (the integral falls to ~e^-4.7 for 2x2, ~e^-18 for 4x4) or
    doubled log-determinant, a sign error in any one layer's logdet, a wrong per-pixel factor in the fused
    actnorm + 1x1 conv, a split or top prior that is not normalised or that conditions on the z it scores."""
    config, size = INTEGRABLE_GLOWS[name]
    model = _ready_glow(config, size=size)  # float64; actnorm initialised on data; couplings off identity
    estimate, standard_error = _importance_estimate_of_total_mass(model, size, n_draws=200_000)
    # The standard error (~0.002 and ~0.006 here) must be small enough for the check to mean something;
    # across seeds the estimate's spread matched it (0.007 vs 0.008 for 4x4), so 5 of them is a safe margin.
    assert standard_error < 0.01, (estimate, standard_error)
    assert abs(estimate - 1.0) < 5 * standard_error, (estimate, standard_error)
    assert abs(estimate - 1.0) < 0.05, (estimate, standard_error)


def test_cv_glow_logdet_does_not_depend_on_the_input():
    additive = _ready_glow(GLOWS["additive"])
    affine = _ready_glow(GLOWS["affine"])
    y1, y2 = torch.rand(3, 2, 4, 4, dtype=F64), torch.rand(3, 2, 4, 4, dtype=F64) * 0.2
    with torch.no_grad():
        logdets = torch.cat([additive.flow_log_density(y1)[1], additive.flow_log_density(y2)[1]])
        torch.testing.assert_close(logdets, logdets[:1].expand(6), atol=1e-10, rtol=0)
        assert additive.levels[0].steps[0].coupling(squeeze(y1 - 0.5))[1].abs().max() == 0
        affine_logdets = torch.cat([affine.flow_log_density(y1)[1], affine.flow_log_density(y2)[1]])
        assert affine_logdets.std() > 1e-3, "an affine Glow's volume term must depend on x"


def test_log_px_is_prior_plus_logdet_plus_discretization_and_deterministic():
    model = _ready_glow(GLOWS["affine"], size=8, dtype=torch.float32)
    x = torch.randint(0, 256, (5, 2, 8, 8), dtype=torch.uint8)
    noise = index_noise(torch.arange(5), (2, 8, 8), seed=3)
    with torch.no_grad():
        parts = model.log_prob_parts(x, noise)
        again = model.log_prob_parts(x, noise)
        first_two = model.log_prob_parts(x[:2], noise[:2])
    assert set(parts) == {"log_px", *model.part_names} and "logdet_level2" in parts
    assert all(value.shape == (5,) for value in parts.values())
    n_dims = 2 * 8 * 8
    expected = parts["log_pz"] + parts["logdet"] + discretization_nats(n_dims)
    torch.testing.assert_close(parts["log_px"], expected, atol=0, rtol=0)
    assert discretization_nats(n_dims) == pytest.approx(-n_dims * math.log(256))
    for name in parts:
        assert torch.equal(parts[name], again[name]), "same images and noise must give the same numbers"
        torch.testing.assert_close(first_two[name], parts[name][:2], atol=1e-3, rtol=1e-6)  # batch-independent
    assert not torch.allclose(parts["logdet"], parts["logdet"][:1].expand(5))


def test_glow_fused_equals_unfused_on_log_px():
    model = _ready_glow(GLOWS["affine"], size=8, dtype=torch.float32)
    x = torch.randint(0, 256, (4, 2, 8, 8), dtype=torch.uint8)
    noise = index_noise(torch.arange(4), (2, 8, 8), seed=0)
    with torch.no_grad():
        fused = model.log_prob(x, noise)
        for level in model.levels:
            for step in level.steps:
                step.forward = step.forward_unfused  # the literal actnorm -> 1x1 conv -> coupling
        unfused = model.log_prob(x, noise)
    torch.testing.assert_close(fused, unfused, atol=2e-3, rtol=1e-6)


def test_glow_is_a_dequantized_flow_and_trains():
    config = GlowConfig(in_channels=1, levels=2, steps=2, hidden_channels=16)
    torch.manual_seed(0)
    model = Glow(config)
    assert isinstance(model, DequantizedFlow)
    x = (torch.rand(16, 1, 8, 8) * 64 + 96).to(torch.uint8)  # a narrow pixel range: easy to learn
    with torch.no_grad():
        model.log_prob(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = bits_per_dim(model.log_prob(x), 64).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.2


def test_glow_has_no_image_size_dependent_parameters_and_samples():
    model = _ready_glow(GLOWS["affine"], size=8, dtype=torch.float32)
    with torch.no_grad():
        for size in (4, 8, 16):
            log_pz, logdet = model.flow_log_density(torch.rand(2, 2, size, size))
            assert log_pz.shape == logdet.shape == (2,)
        images = model.sample(3, 0.7, image_size=(8, 12))
    assert images.shape == (3, 2, 8, 12) and torch.isfinite(images).all()


def test_bad_shapes_and_settings_are_user_errors():
    model = Glow(GlowConfig(in_channels=1, levels=3, steps=1, hidden_channels=4))
    with pytest.raises(OodbenchError, match="divisible by 8"):
        model.flow_log_density(torch.rand(1, 1, 12, 12))
    with pytest.raises(OodbenchError, match="in_channels=1"):
        model.flow_log_density(torch.rand(1, 3, 8, 8))
    with pytest.raises(OodbenchError, match="bad value 'affin' for coupling: expected one of affine, additive"):
        GlowConfig(coupling="affin")
    with pytest.raises(OodbenchError, match="levels"):
        GlowConfig(levels=0)


def test_config_defaults_and_paper_size():
    paper = GlowConfig.paper()
    assert (paper.steps, paper.levels, paper.hidden_channels, paper.coupling) == (32, 3, 512, "affine")
    assert GlowConfig.paper(coupling="additive").coupling == "additive"
    default = GlowConfig()
    assert default.levels == 3 and default.learn_top and default.coupling == "affine"
    with pytest.raises(TypeError):
        GlowConfig(3)  # keyword-only: settings are always named


def test_each_levels_share_of_the_prior_and_the_log_determinant():
    # Level 1 run by hand with the literal (unfused) steps: its log-determinant and its split's prior term
    # are what the model reports for level 1; the levels add up to the totals.
    model = _ready_glow(GLOWS["affine"], size=8, dtype=F64)
    y = torch.rand(3, 2, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        parts = model.flow_parts(y)
        x, logdet = squeeze(y - 0.5), torch.zeros(3, dtype=F64)
        for step in model.levels[0].steps:
            x, step_logdet = step.forward_unfused(x)
            logdet = logdet + step_logdet
        _, _, split_log_pz = model.levels[0].split(x)
    torch.testing.assert_close(parts["logdet_level1"], logdet)
    torch.testing.assert_close(parts["log_pz_level1"], split_log_pz)
    levels = range(1, model.config.levels + 1)
    torch.testing.assert_close(sum(parts[f"logdet_level{i}"] for i in levels), parts["logdet"])
    torch.testing.assert_close(sum(parts[f"log_pz_level{i}"] for i in levels), parts["log_pz"])
