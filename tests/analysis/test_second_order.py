"""The second-order analysis (Nalisnick et al. 2019, Section 5) against independent references.

- variance terms against hand-computed variances;
- Hessian-vector products against the brute-force Hessian (torch.autograd.functional.hessian) of a
  tiny non-linear Glow;
- the CV-Glow closed form against the exact Hessian term on a linear CV-Glow (couplings output zero
  translation, as a fresh additive Glow's zero-initialised last conv does; priors fixed Gaussians),
  where the expansion has no higher orders. It agrees where the paper's assumptions hold (the variance
  difference the same at every position of a channel, every latent of prior variance sigma^2), and a
  guard shows the comparison fails for an alpha that ignores actnorm or sums u along the wrong axis;
- the exact quadratic identity E_q[log p] - E_p[log p] = first order + covariance + mean-offset terms.
Tiny shapes, float64, one thread.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oodbench.analysis.second_order import (
    PAPER_SCALE,
    closed_form_gap,
    cv_glow_alphas,
    full_covariance_term,
    hessian_diagonal,
    hessian_trace_term,
    hutchinson_diagonal_trace,
    pixel_variance_difference,
    second_order_row,
    taylor_terms,
    variance_difference,
)
from oodbench.errors import OodbenchError
from oodbench.models.glow import Glow, GlowConfig
from oodbench.units import LN2, N_LEVELS

F64 = torch.float64


def _images(n, shape, *, seed, mean=0.5, spread=0.1):
    """Float images around `mean` with a per-pixel spread, deterministic."""
    generator = torch.Generator().manual_seed(seed)
    return mean + spread * torch.randn(n, *shape, generator=generator, dtype=F64)


def _log_prob_fn(glow):
    def log_prob(y):
        log_pz, logdet = glow.flow_log_density(y)
        return log_pz + logdet
    return log_prob


def _brute_force_hessian(log_prob, x0):
    hessian = torch.autograd.functional.hessian(lambda v: log_prob(v.unsqueeze(0)).sum(), x0)
    return hessian.reshape(x0.numel(), x0.numel())


@torch.no_grad()
def _glow(shape, *, levels, coupling="additive", steps=2, seed=0):
    """A tiny float64 Glow, actnorm initialised on data whose channels have different spreads (so every
    actnorm scale is far from 1 and differs per channel), then its actnorms and 1x1 convs perturbed (so W
    is no longer a rotation). The couplings' and priors' zero-initialised convs are left at zero: an
    additive Glow is then linear with N(0, I) priors."""
    torch.manual_seed(seed)
    glow = Glow(GlowConfig(in_channels=shape[0], levels=levels, steps=steps, hidden_channels=4, coupling=coupling))
    glow = glow.double()
    spreads = torch.linspace(0.05, 0.4, shape[0], dtype=F64).view(1, -1, 1, 1)
    glow.flow_parts(0.5 + spreads * torch.randn(32, *shape, dtype=F64))
    generator = torch.Generator().manual_seed(seed + 1)
    for level in glow.levels:
        for step in level.steps:
            for parameter in (step.actnorm.log_scale, step.actnorm.bias, step.invconv.lower, step.invconv.upper,
                              step.invconv.log_s):
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=F64))
    return glow


@torch.no_grad()
def _set_prior_sigma(glow, sigma):
    """Every latent's prior N(0, sigma^2): the top prior's log-scale, the split priors' log-scale bias."""
    glow.top_prior.log_scale.fill_(math.log(sigma))
    for level in glow.levels:
        if level.split is not None:
            bias = level.split.prior.bias
            bias[bias.shape[0] // 2:] = math.log(sigma)
    return glow


@torch.no_grad()
def _perturb_priors(glow, seed=3):
    """Fixed but non-standard Gaussian priors (the split priors' weights stay zero): still quadratic."""
    generator = torch.Generator().manual_seed(seed)
    parameters = [glow.top_prior.mean, glow.top_prior.log_scale]
    parameters += [level.split.prior.bias for level in glow.levels if level.split is not None]
    for parameter in parameters:
        parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=F64))
    return glow


# --- variances ---------------------------------------------------------------------------------------

def test_variance_difference_against_hand_computed_variances():
    p = torch.full((4, 2, 2, 2), 7, dtype=torch.uint8)  # constant: variance 0
    q = torch.zeros(4, 2, 2, 2, dtype=torch.uint8)
    q[::2, 0] = 255  # channel 0: half 0, half 255, variance (255/2)^2
    q[3, 1] = 128  # channel 1: 0, 0, 0, 128: mean 32, variance (3 * 32^2 + 96^2) / 4 = 3072
    per_pixel = pixel_variance_difference(p, q, scale=PAPER_SCALE)
    np.testing.assert_allclose(per_pixel[0], np.full((2, 2), 0.25))
    np.testing.assert_allclose(per_pixel[1], np.full((2, 2), 3072 / 255**2))
    np.testing.assert_allclose(variance_difference(p, q, scale=PAPER_SCALE), [1.0, 4 * 3072 / 255**2])
    np.testing.assert_allclose(variance_difference(q, p, scale=N_LEVELS), [-4 * 127.5**2 / 256**2, -4 * 3072 / 256**2])
    with pytest.raises(OodbenchError, match="differ in shape"):
        variance_difference(p, q[:, :1])


# --- Hessian-vector products against the brute-force Hessian -----------------------------------------

def test_hessian_terms_match_the_brute_force_hessian_of_a_nonlinear_glow():
    glow = _glow((2, 4, 4), levels=2, coupling="affine")
    with torch.no_grad():  # non-linear: couplings and split priors active (small, so exp() stays tame)
        for name, parameter in glow.named_parameters():
            if "conv_out" in name or "split.prior" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    log_prob = _log_prob_fn(glow)
    p, q = _images(12, (2, 4, 4), seed=1), _images(9, (2, 4, 4), seed=2, mean=0.4, spread=0.2)
    x0 = p.mean(0)
    hessian = _brute_force_hessian(log_prob, x0)
    assert (hessian - hessian.T).abs().max() < 1e-8 * hessian.abs().max()
    assert (hessian - torch.diag(hessian.diagonal())).abs().max() > 1e-3  # a real, coupled Hessian

    diagonal = hessian_diagonal(log_prob, x0, chunk=5)  # 32 dims in chunks of 5, the last one short
    torch.testing.assert_close(diagonal.flatten(), hessian.diagonal(), rtol=1e-10, atol=1e-10)

    var_diff = torch.from_numpy(pixel_variance_difference(p, q, scale=1.0))
    exact = 0.5 * float(hessian.diagonal() @ var_diff.flatten())
    assert hessian_trace_term(log_prob, x0, var_diff) == pytest.approx(exact, rel=1e-10)

    estimate, stderr = hutchinson_diagonal_trace(log_prob, x0, var_diff, n_probes=2000, seed=0, chunk=500)
    assert abs(estimate - 2 * exact) < 4 * stderr and stderr < 0.1 * abs(exact)

    cov = np.cov(q.flatten(1).numpy(), rowvar=False, bias=True) - np.cov(p.flatten(1).numpy(), rowvar=False, bias=True)
    expected = 0.5 * float(np.trace(hessian.numpy() @ cov))
    assert full_covariance_term(log_prob, x0, p, q, chunk=4) == pytest.approx(expected, rel=1e-9)


# --- the closed form on a linear CV-Glow -------------------------------------------------------------

SHAPE = (3, 8, 8)  # two levels: 4x4 patches, four of them


def _uniform_per_channel(values, shape=SHAPE):
    return torch.tensor(values, dtype=F64).view(-1, 1, 1).expand(shape).clone()


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_closed_form_equals_the_exact_term_on_a_linear_cv_glow(sigma):
    glow = _set_prior_sigma(_glow(SHAPE, levels=2), sigma)
    log_prob = _log_prob_fn(glow)
    x0 = _images(1, SHAPE, seed=4)[0]
    # linear: the same Hessian at another point
    torch.testing.assert_close(hessian_diagonal(log_prob, x0), hessian_diagonal(log_prob, x0 + 0.3))
    dvar = _uniform_per_channel([-0.3, 0.1, -0.5])
    exact = hessian_trace_term(log_prob, x0, dvar)
    closed = closed_form_gap(cv_glow_alphas(glow), dvar.sum(dim=(1, 2)).numpy(), sigma)
    assert closed == pytest.approx(exact, rel=1e-9)


def test_the_closed_form_comparison_fails_for_a_wrong_alpha():
    """Guards the test above: alpha without actnorm's scales, or with u summed over its input axis
    (row norms of the product of the steps), gives another number. One level, so the product of the
    steps' u_k = W_k diag(s_k) is the whole linear map (read off each step's weights here)."""
    glow = _glow((2, 4, 4), levels=1, steps=3)
    log_prob = _log_prob_fn(glow)
    dvar = _uniform_per_channel([-0.3, 0.2], (2, 4, 4))
    var_diff = dvar.sum(dim=(1, 2)).numpy()
    exact = hessian_trace_term(log_prob, _images(1, (2, 4, 4), seed=5)[0], dvar)

    def alphas_of(product, axis):
        squared = (product**2).sum(axis).reshape(2, 4).mean(1)  # level channel 4c + 2i + j is image channel c
        return np.sqrt(squared)

    with torch.no_grad():
        steps = glow.levels[0].steps
        u = [step.invconv.weight().numpy() * step.actnorm.affine()[0].numpy() for step in steps]
        w = [step.invconv.weight().numpy() for step in steps]
    product, without_actnorm = np.linalg.multi_dot(u[::-1]), np.linalg.multi_dot(w[::-1])
    assert closed_form_gap(alphas_of(product, 0), var_diff) == pytest.approx(exact, rel=1e-9)
    np.testing.assert_allclose(alphas_of(product, 0), cv_glow_alphas(glow), rtol=1e-10)
    for wrong in (alphas_of(without_actnorm, 0), alphas_of(product, 1)):
        assert abs(closed_form_gap(wrong, var_diff) - exact) > 0.05 * abs(exact)


def test_closed_form_averages_the_hessian_over_positions_within_a_channel():
    """Where the variance difference varies within a channel the closed form is an approximation: it
    is the exact term of the variance difference averaged over each channel's positions."""
    glow = _glow(SHAPE, levels=2)
    log_prob = _log_prob_fn(glow)
    x0 = _images(1, SHAPE, seed=6)[0]
    dvar = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=F64) - 0.2
    closed = closed_form_gap(cv_glow_alphas(glow), dvar.sum(dim=(1, 2)).numpy())
    averaged = dvar.mean(dim=(1, 2), keepdim=True).expand(SHAPE)
    assert closed == pytest.approx(hessian_trace_term(log_prob, x0, averaged), rel=1e-9)
    assert abs(closed - hessian_trace_term(log_prob, x0, dvar)) > 0.01 * abs(closed)


def test_column_sum_alphas_are_the_gradient_of_the_sum_of_all_latents():
    """The paper's sum_j u_{k,c,j}, tracked through the whole linear map: d(sum of latents)/dy, read
    here from the model's own encoder."""
    glow = _glow(SHAPE, levels=2)
    y = _images(1, SHAPE, seed=8).requires_grad_(True)
    (grad,) = torch.autograd.grad(sum(z.sum() for z in glow.encode(y)), y)
    expected = grad[0].pow(2).mean(dim=(1, 2)).sqrt().numpy()
    np.testing.assert_allclose(cv_glow_alphas(glow, method="column-sum"), expected, rtol=1e-10)
    # with mixing 1x1 convs the squared column sums are not the squared column norms (cross terms)
    assert np.abs(cv_glow_alphas(glow, method="column-sum") - cv_glow_alphas(glow)).max() > 0.05


def test_alphas_are_the_papers_product_of_column_sums_when_the_convs_do_not_mix_channels():
    glow = _glow((2, 4, 4), levels=1, steps=3)
    with torch.no_grad():  # W = diag(sign * exp(log_s)): every 1x1 conv keeps the channels apart
        for step in glow.levels[0].steps:
            step.invconv.permutation.copy_(torch.eye(8, dtype=F64))
            step.invconv.lower.zero_()
            step.invconv.upper.zero_()
        u = [step.invconv.weight() * step.actnorm.affine()[0] for step in glow.levels[0].steps]
    papers = torch.stack([u_k.sum(0) for u_k in u]).prod(0)  # prod_k sum_j u_{k,c,j}, per level channel
    expected = papers.pow(2).view(2, 4).mean(1).sqrt().numpy()  # level channel 4c + 2i + j: image channel c
    np.testing.assert_allclose(cv_glow_alphas(glow, method="column-sum"), expected, rtol=1e-10)
    np.testing.assert_allclose(cv_glow_alphas(glow), expected, rtol=1e-10)


def test_unknown_alpha_method_is_a_user_error():
    with pytest.raises(OodbenchError, match="valid: exact, column-sum"):
        cv_glow_alphas(_glow((1, 2, 2), levels=1, steps=1), method="paper")


# --- the exact quadratic identity --------------------------------------------------------------------

def _measured_gap(log_prob, p, q):
    with torch.no_grad():
        return float(log_prob(q).mean() - log_prob(p).mean())


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_the_expansion_is_exact_for_a_linear_cv_glow_only(coupling):
    glow = _perturb_priors(_glow(SHAPE, levels=2, coupling=coupling))
    if coupling == "affine":
        with torch.no_grad():  # a non-linear flow: the expansion has higher orders
            for name, parameter in glow.named_parameters():
                if "conv_out" in name:
                    parameter.add_(0.1 * torch.randn_like(parameter))
    log_prob = _log_prob_fn(glow)
    p, q = _images(10, SHAPE, seed=9), _images(7, SHAPE, seed=10, mean=0.45, spread=0.15)
    terms = taylor_terms(log_prob, p.mean(0), p, q, chunk=4)
    predicted, measured = sum(terms.values()), _measured_gap(log_prob, p, q)
    if coupling == "additive":
        assert predicted == pytest.approx(measured, rel=1e-9)
    else:
        assert abs(predicted - measured) > 1e-3 * abs(measured)


def test_with_a_shared_mean_the_gap_is_the_covariance_term_alone():
    glow = _perturb_priors(_glow(SHAPE, levels=2))
    log_prob = _log_prob_fn(glow)
    p = _images(10, SHAPE, seed=11)
    other = _images(8, SHAPE, seed=12)
    stretch = 0.5 + torch.rand(SHAPE, generator=torch.Generator().manual_seed(13), dtype=F64)
    q = p.mean(0) + stretch * (other - other.mean(0))  # q's mean is p's, its covariance another
    terms = taylor_terms(log_prob, p.mean(0), p, q)
    measured = _measured_gap(log_prob, p, q)
    assert terms["covariance"] == pytest.approx(measured, rel=1e-9)
    assert abs(terms["first_order"]) < 1e-9 * abs(measured) and abs(terms["mean_offset"]) < 1e-9 * abs(measured)


def test_second_order_row_has_every_term_in_nats_and_bits_per_dim():
    glow = _glow(SHAPE, levels=2)
    log_prob = _log_prob_fn(glow)
    p, q = _images(6, SHAPE, seed=14), _images(5, SHAPE, seed=15, spread=0.025)
    measured = _measured_gap(log_prob, p, q)
    row = second_order_row(log_prob_fn=log_prob, p_y=p, q_y=q, measured_gap_nats=measured,
                           alphas=cv_glow_alphas(glow), n_probes=None, chunk=64)
    n_dims = math.prod(SHAPE)
    assert (row["n_p"], row["n_q"], row["n_dims"], row["diag_method"]) == (6, 5, n_dims, "exact")
    np.testing.assert_allclose([row[f"var_diff_c{c}"] for c in range(3)], variance_difference(p, q, scale=1.0))
    for term in ("diag_term", "first_order", "covariance", "mean_offset", "taylor", "closed_form", "measured_gap"):
        assert row[f"{term}_bpd"] == pytest.approx(-row[f"{term}_nats"] / (n_dims * LN2))
    assert row["taylor_nats"] == pytest.approx(measured, rel=1e-9)  # linear: the expansion is exact
    assert row["measured_gap_nats"] > 0  # q, around the same mean with a quarter of the spread, is rated likelier
    assert row["diag_term_stderr_nats"] == 0.0
    estimated = second_order_row(log_prob_fn=log_prob, p_y=p, q_y=q, measured_gap_nats=measured, n_probes=400)
    assert estimated["diag_method"] == "hutchinson-400" and "closed_form_nats" not in estimated
    assert abs(estimated["diag_term_nats"] - row["diag_term_nats"]) < 4 * estimated["diag_term_stderr_nats"]
