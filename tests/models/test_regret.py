"""Likelihood regret: `refit` against a concave quadratic whose maximum is known (exactly 0 at the
maximum, the closed-form gap from elsewhere, samples that do not interact); `posterior_regret` and
`encoder_regret` on a tiny VAE (non-negative, the start being the model's own ELBO, weights untouched,
independent of the batch) and on a VAE whose decoder ignores z, where the most a refit can gain is
KL(q || p) in closed form and the prior's own parameters gain exactly nothing. Tiny shapes, CPU."""

from __future__ import annotations

import pytest
import torch

from oodbench.errors import OodbenchError
from oodbench.models.vae import VAE, VAEConfig
from oodbench.models.vae.regret import encoder_regret, posterior_elbo, posterior_regret, refit

LATENT = 3


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- refit on a concave quadratic: maximum 0 at a per-sample centre ---------------------------------


CENTRES = _randn(3, 5, seed=2)


def _quadratic(p: torch.Tensor) -> torch.Tensor:
    return -(p - CENTRES[: p.shape[0]]).square().sum(dim=1)


def test_refit_from_the_maximum_gains_exactly_nothing():
    before, best = refit(_quadratic, [CENTRES], steps=10, lr=0.1)
    assert torch.equal(before, torch.zeros(3)) and torch.equal(best - before, torch.zeros(3))


def test_refit_from_elsewhere_closes_the_closed_form_gap():
    start = _randn(3, 5, seed=3)
    gap = (start - CENTRES).square().sum(dim=1)  # objective 0 at the maximum, -gap at the start
    before, best = refit(_quadratic, [start], steps=300, lr=0.1)
    torch.testing.assert_close(before, -gap)
    torch.testing.assert_close(best - before, gap, atol=1e-4, rtol=0)
    assert (best <= 0).all()  # never above the maximum
    # Adam's first step moves every coordinate by lr towards the maximum (m / sqrt(v) = sign of the gradient).
    _, best = refit(_quadratic, [start], steps=1, lr=0.1)
    one_step = -((start - CENTRES).abs() - 0.1).square().sum(dim=1)
    torch.testing.assert_close(best, torch.maximum(one_step, -gap), atol=1e-5, rtol=0)


def test_refit_keeps_the_best_iterate_when_adam_overshoots():
    # At lr 1 Adam's momentum carries it past the maximum, so later iterates are sometimes worse:
    # the best over the first k steps must never drop as k grows (the last iterate does).
    start = _randn(3, 5, seed=3)
    bests = torch.stack([refit(_quadratic, [start], steps=k, lr=1.0)[1] for k in range(12)])
    assert (bests[1:] >= bests[:-1]).all()
    assert (bests[1:] == bests[:-1]).any() and (bests[-1] > bests[0]).all()


def test_refit_samples_of_a_batch_do_not_interact():
    start = _randn(3, 5, seed=4) * torch.tensor([[0.1], [1.0], [10.0]])  # very different gradient sizes
    batched = refit(_quadratic, [start], steps=15, lr=0.1)
    alone = [refit(_quadratic, [start[:i + 1]], steps=15, lr=0.1) for i in range(3)]
    for i in range(3):
        assert torch.equal(batched[0][i], alone[i][0][i]) and torch.equal(batched[1][i], alone[i][1][i])


def test_refit_leaves_its_start_alone_and_runs_under_no_grad():
    start = _randn(3, 5, seed=5)
    kept = start.clone()
    with torch.no_grad():
        before, best = refit(_quadratic, [start], steps=5, lr=0.1)
    assert torch.equal(start, kept) and start.grad is None
    assert not before.requires_grad and not best.requires_grad and ((best - before) > 0).all()


def test_refit_refuses_inference_mode_and_negative_steps():
    with torch.inference_mode(), pytest.raises(OodbenchError, match="inference_mode"):
        refit(_quadratic, [CENTRES], steps=1, lr=0.1)
    with pytest.raises(OodbenchError, match="steps"):
        refit(_quadratic, [CENTRES], steps=-1, lr=0.1)


# --- the VAE variants ------------------------------------------------------------------------------


def _tiny(**overrides) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(in_channels=1, image_size=8, base_channels=4, latent_dim=LATENT, iw_samples=1, **overrides)).eval()


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _z_blind(mean: torch.Tensor, log_std: torch.Tensor) -> VAE:
    """A tiny VAE with q(z|x) = N(mean, diag(exp(log_std)^2)) for every x (the encoder's last
    convolution zeroed, its bias set) and a decoder that ignores z (its head's weight zeroed): the
    ELBO is a constant minus KL(q || N(0, I)), so a refit can gain at most that KL."""
    model = _tiny()
    with torch.no_grad():
        model.encoder.net[-1].weight.zero_()
        model.encoder.net[-1].bias.copy_(torch.cat((mean, log_std)))
        model.decoder.head.weight.zero_()
    return model


def _weights(model: VAE) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def _assert_untouched(model: VAE, kept: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, kept[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_posterior_regret_is_a_gain_over_the_models_own_elbo_and_touches_no_weight():
    model, x, eps = _tiny(), _images(6), _randn(6, LATENT, seed=1)
    kept = _weights(model)
    with torch.no_grad():  # how a scorer calls it
        out = posterior_regret(model, x, eps)
        own_elbo = model._elbo(x, eps)
    assert (out["regret"] >= 0).all() and (out["regret"] > 1e-3).sum() >= 5, out["regret"]
    # The start is the encoder's posterior: what is left after the gain is the VAE's own ELBO, same eps.
    torch.testing.assert_close(out["elbo_refit"] - out["regret"], own_elbo, atol=1e-4, rtol=0)
    assert out["regret"].dtype == torch.float32 and not out["regret"].requires_grad
    _assert_untouched(model, kept)


def test_posterior_regret_does_not_depend_on_the_batch():
    model, x, eps = _tiny(), _images(4), _randn(4, LATENT, seed=1)
    alone, batched = posterior_regret(model, x[:2], eps[:2]), posterior_regret(model, x, eps)
    for key in ("regret", "elbo_refit"):
        torch.testing.assert_close(alone[key], batched[key][:2], atol=1e-5, rtol=0)


def test_posterior_regret_recovers_the_kl_when_the_decoder_ignores_z():
    mean, log_std = torch.tensor([0.6, -0.4, 0.3]), torch.tensor([0.3, -0.5, 0.2])
    q = torch.distributions.Normal(mean, log_std.exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    x, eps = _images(3), _randn(3, LATENT, seed=1)
    out = posterior_regret(_z_blind(mean, log_std), x, eps, steps=300)
    torch.testing.assert_close(out["regret"], kl.expand(3), atol=1e-3, rtol=0)


def test_posterior_regret_is_exactly_zero_at_the_optimum():
    # q = p(z) is the optimum when the decoder ignores z: the gradient is exactly zero there.
    out = posterior_regret(_z_blind(torch.zeros(LATENT), torch.zeros(LATENT)), _images(3), _randn(3, LATENT, seed=1))
    assert torch.equal(out["regret"], torch.zeros(3))


def test_posterior_elbo_at_the_encoders_posterior_is_the_models_elbo():
    model, x, eps = _tiny(), _images(3), _randn(3, LATENT, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(posterior_elbo(model, x, *model.encode(x), eps), model._elbo(x, eps))


def test_encoder_regret_is_a_gain_bounded_by_what_any_posterior_could_gain():
    mean, log_std = torch.tensor([0.6, -0.4, 0.3]), torch.tensor([0.3, -0.5, 0.2])
    q = torch.distributions.Normal(mean, log_std.exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
    model = _z_blind(mean, log_std)
    kept = _weights(model)
    out = encoder_regret(model, _images(3), _randn(3, LATENT, seed=1), steps=10, lr=1e-2)
    assert (out["regret"] > 1e-3).all() and (out["regret"] <= kl + 1e-4).all(), (out["regret"], kl)
    _assert_untouched(model, kept)


def test_encoder_regret_on_an_untrained_vae():
    model, x, eps = _tiny(), _images(3), _randn(3, LATENT, seed=1)
    kept = _weights(model)
    out = encoder_regret(model, x, eps)
    assert (out["regret"] >= 0).all() and (out["regret"] > 0).any(), out["regret"]
    with torch.no_grad():
        torch.testing.assert_close(out["elbo_refit"] - out["regret"], model._elbo(x, eps), atol=1e-4, rtol=0)
    _assert_untouched(model, kept)
    # One image at a time: the first image's regret does not depend on the others.
    torch.testing.assert_close(encoder_regret(model, x[:1], eps[:1])["regret"], out["regret"][:1], atol=1e-5, rtol=0)


def test_regret_refuses_a_training_mode_vae_and_a_wrong_eps():
    model, x = _tiny(), _images(2)
    with pytest.raises(OodbenchError, match="eps"):
        posterior_regret(model, x, _randn(2, LATENT + 1, seed=1))
    with pytest.raises(OodbenchError, match="eval mode"):
        encoder_regret(model.train(), x, _randn(2, LATENT, seed=1))
