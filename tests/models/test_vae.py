"""The VAE: its bounds against a linear-Gaussian model whose log p(x) is closed form (below it,
tightening with k, exact when q is the true posterior); the model's own IWAE-k, ELBO and KL against the
exact log p(x) of a VAE whose decoder ignores z, and its IWAE-k rising with k on its shared draws; the
categorical decoder against a hand-computed log-softmax; IWAE >= ELBO on the same draws; scores
independent of the batch; the contract and the errors. Tiny shapes, CPU."""

from __future__ import annotations

import math

import pytest
import torch

from oodbench.errors import OodbenchError
from oodbench.models import build_model, model_config
from oodbench.models.base import LikelihoodModel
from oodbench.models.vae import VAE, VAEConfig
from oodbench.models.vae import bounds
from oodbench.scores import bits_per_dim

F64 = torch.float64


# --- the bounds on a model with a known answer ------------------------------------------------------


class LinearGaussian:
    """p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I_3): log p(x) = log N(x; b, W W^T + s^2 I) exactly,
    and the posterior p(z|x) is Gaussian with a closed form too."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 2, generator=g, dtype=F64)
        self.b = torch.randn(3, generator=g, dtype=F64)
        self.s = 0.5

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.w @ self.w.T + self.s**2 * torch.eye(3, dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision = torch.eye(2, dtype=F64) + self.w.T @ self.w / self.s**2
        cov = torch.linalg.inv(precision)
        return (x - self.b) @ self.w @ cov.T / self.s**2, cov

    def log_weights(self, x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for diagonal q, z = mean + std * eps; eps (B, k, 2)."""
        z = mean[:, None] + log_std.exp()[:, None] * eps
        log_px_z = torch.distributions.Normal(z @ self.w.T + self.b, self.s).log_prob(x[:, None]).sum(-1)
        return log_px_z + bounds.standard_normal_log_density(z) - bounds.gaussian_log_density(z, mean[:, None], log_std[:, None])


def test_iwae_is_below_the_exact_likelihood_and_tightens_with_k():
    model = LinearGaussian()
    x = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.7]], dtype=F64)
    exact = model.exact_log_px(x)
    post_mean, _ = model.posterior(x)
    # A deliberately imperfect diagonal q: shifted mean, too narrow.
    mean, log_std = post_mean + 0.4, torch.full_like(post_mean, math.log(0.3))
    g = torch.Generator().manual_seed(1)
    replicates = 4000
    expected = {}
    for k in (1, 4, 16, 64):
        eps = torch.randn(2 * replicates, k, 2, generator=g, dtype=F64)
        log_w = model.log_weights(x.repeat(replicates, 1), mean.repeat(replicates, 1), log_std.repeat(replicates, 1), eps)
        expected[k] = bounds.iwae_bound(log_w).view(replicates, 2).mean(0)
    gaps = {k: exact - value for k, value in expected.items()}
    for k in expected:
        assert (gaps[k] > 0).all(), (k, gaps[k])  # a lower bound (the MC error is far below the gap)
    assert (gaps[1] > gaps[4]).all() and (gaps[4] > gaps[16]).all() and (gaps[16] > gaps[64]).all()
    assert (gaps[64] < 0.25 * gaps[1]).all()
    # k = 1 is the ELBO, whose expectation is known in closed form: E_q[log p(x|z)] - KL(q || p).
    assert torch.allclose(expected[1], _closed_form_elbo(model, x, mean, log_std), atol=0.05)


def _closed_form_elbo(model: LinearGaussian, x, mean, log_std) -> torch.Tensor:
    var = (2 * log_std).exp()
    residual = x - (mean @ model.w.T + model.b)
    expected_sq = residual.square().sum(-1) + (var @ model.w.T.square()).sum(-1)
    expected_log_lik = -0.5 * expected_sq / model.s**2 - 3 * (math.log(model.s) + 0.5 * bounds.LOG_2PI)
    return expected_log_lik - bounds.kl_to_standard_normal(mean, log_std)


def test_bounds_are_exact_when_q_is_the_true_posterior():
    model = LinearGaussian()
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=F64)
    post_mean, post_cov = model.posterior(x)
    # The posterior is not diagonal in general; rotate W so that it is, keeping p(x) the same.
    _, eigvec = torch.linalg.eigh(post_cov)
    model.w = model.w @ eigvec
    post_mean, post_cov = model.posterior(x)
    assert torch.allclose(post_cov, torch.diag(torch.diagonal(post_cov)), atol=1e-12)
    eps = torch.randn(1, 7, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    log_w = model.log_weights(x, post_mean, 0.5 * torch.diagonal(post_cov).log()[None], eps)
    # Every weight is p(x) itself, so both bounds are exact, for any draw.
    assert torch.allclose(log_w, model.exact_log_px(x)[:, None].expand(1, 7), atol=1e-10)
    assert torch.allclose(bounds.iwae_bound(log_w), model.exact_log_px(x), atol=1e-10)


def test_densities_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(3)
    z, mean, log_std = (torch.randn(5, 4, generator=g, dtype=F64) for _ in range(3))
    normal = torch.distributions.Normal(mean, log_std.exp())
    standard = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert torch.allclose(bounds.gaussian_log_density(z, mean, log_std), normal.log_prob(z).sum(-1))
    assert torch.allclose(bounds.standard_normal_log_density(z), standard.log_prob(z).sum(-1))
    assert torch.allclose(bounds.kl_to_standard_normal(mean, log_std),
                          torch.distributions.kl_divergence(normal, standard).sum(-1))


def test_iwae_of_equal_weights_is_that_weight_and_never_below_the_elbo():
    log_w = torch.randn(6, 9, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert (bounds.iwae_bound(log_w) >= bounds.elbo_estimate(log_w)).all()
    same = torch.full((2, 5), -3.0, dtype=F64)
    assert torch.allclose(bounds.iwae_bound(same), torch.full((2,), -3.0, dtype=F64))


# --- the model --------------------------------------------------------------------------------------


def _tiny(channels: int = 3, **overrides) -> VAE:
    torch.manual_seed(0)
    settings = {"in_channels": channels, "image_size": 8, "base_channels": 4, "latent_dim": 3, "iw_samples": 5, **overrides}
    return VAE(VAEConfig(**settings)).eval()


def _images(batch: int, channels: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_it_is_a_likelihood_model_with_named_parts_and_bound():
    model = _tiny()
    assert isinstance(model, LikelihoodModel) and model.part_names == ("elbo", "kl", "reconstruction")
    assert model.bound == "iwae-5"
    model.iw_samples = 1
    assert model.bound == "elbo"


def test_categorical_decoder_matches_a_hand_computed_log_softmax():
    model = _tiny(channels=2)
    x = _images(2, channels=2)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model.decoder(z)  # (N, S, S, C, 256)
        got = model.reconstruction_log_prob(x, z)
    want = torch.zeros(2)
    for n in range(2):
        for c in range(2):
            for i in range(8):
                for j in range(8):
                    column = logits[n, i, j, c].double()
                    want[n] += (column[x[n, c, i, j].long()] - torch.logsumexp(column, 0)).float()
    assert torch.allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("channels, size", [(1, 8), (3, 16)])
def test_the_heads_four_phases_are_its_transposed_convolution_and_so_are_their_gradients(channels, size):
    model = _tiny(channels, image_size=size).double()
    features = torch.randn(2, model.decoder.head.in_channels, size // 2, size // 2, dtype=F64)
    full = model.decoder.logits(features)  # torch's conv_transpose2d: the reference
    projection = torch.randn(full.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad((full * projection).sum(), (model.decoder.head.weight, model.decoder.head.bias))
    seen, phased = set(), 0.0
    for a, b, logits in model.decoder.phase_logits(features):
        torch.testing.assert_close(logits, full[:, a::2, b::2], rtol=0, atol=1e-12)
        phased = phased + (logits * projection[:, a::2, b::2]).sum()
        seen.add((a, b))
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}
    got = torch.autograd.grad(phased, (model.decoder.head.weight, model.decoder.head.bias))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_iwae_is_at_least_the_elbo_of_the_same_draws_and_k1_is_the_elbo():
    model = _tiny()
    x = _images(4)
    index = torch.arange(4)
    with torch.no_grad():
        parts = model.log_prob_parts(x, model.eval_noise(x, index, seed=0))
        assert (parts["log_px"] >= parts["elbo"] - 1e-4).all()
        assert (parts["kl"] >= 0).all()
        model.iw_samples = 1
        single = model.log_prob_parts(x, model.eval_noise(x, index, seed=0))
    assert torch.allclose(single["log_px"], single["elbo"], atol=1e-4)


def test_draws_depend_on_index_and_seed_only_and_share_a_prefix_across_k():
    model = _tiny()
    x = _images(3)
    noise = model.eval_noise(x, torch.tensor([10, 11, 12]), seed=7)
    assert noise.shape == (3, 5, 3) and torch.isfinite(noise).all()
    assert torch.equal(noise[1:2], model.eval_noise(x[:1], torch.tensor([11]), seed=7))
    assert not torch.equal(noise, model.eval_noise(x, torch.tensor([10, 11, 12]), seed=8))
    model.iw_samples = 9
    assert torch.equal(model.eval_noise(x, torch.tensor([10, 11, 12]), seed=7)[:, :5], noise)


def test_scores_do_not_depend_on_the_batch_or_the_decode_chunk(monkeypatch):
    model = _tiny()
    x = _images(6)
    index = torch.arange(100, 106)
    with torch.no_grad():
        together = model.log_prob_parts(x, model.eval_noise(x, index, seed=0))["log_px"]
        alone = torch.cat([model.log_prob_parts(x[i:i + 1], model.eval_noise(x[i:i + 1], index[i:i + 1], seed=0))["log_px"]
                           for i in range(6)])
        monkeypatch.setattr("oodbench.models.vae.model.DECODE_CHUNK_ELEMENTS", 256 * 3 * 64 * 7)  # 7 decodes a chunk
        # heads 2 at a time: a head phase holds a quarter of an 8x8 image's 256 * 3 * 64 logits
        monkeypatch.setattr("oodbench.models.vae.model.CPU_HEAD_CHUNK_ELEMENTS", 256 * 3 * 16 * 2)
        chunked = model.log_prob_parts(x, model.eval_noise(x, index, seed=0))["log_px"]
    assert torch.allclose(together, alone, atol=1e-3)
    assert torch.allclose(together, chunked, atol=1e-3)


def test_untrained_model_is_near_8_bits_and_training_objective_has_gradients():
    model = _tiny().train()
    x = _images(4)
    elbo = model.training_log_prob(x)
    assert elbo.shape == (4,)
    assert (bits_per_dim(elbo.detach(), 3 * 64) - 8.0).abs().max() < 0.5
    elbo.sum().backward()
    for name in ("encoder", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name


# --- the model's own bounds against a log p(x) known exactly ---------------------------------------


def _pinned_vae(mean: torch.Tensor, log_std: torch.Tensor, logits: torch.Tensor | None = None) -> VAE:
    """A tiny grayscale 8x8 VAE whose posterior is q(z|x) = N(mean, diag(exp(log_std)^2)) for every x
    (the encoder's last convolution zeroed, its bias set to (mean, log_std)), and, when `logits` (256)
    is given, whose decoder is p(x|z) = softmax(logits) at every sub-pixel for every z (the head's
    weight zeroed, its bias set to the logits): then p(x) = prod over sub-pixels of softmax(logits)[x],
    exactly. Eval mode, so batch norm does not depend on the batch."""
    model = _tiny(channels=1, latent_dim=mean.numel(), iw_samples=1)
    with torch.no_grad():
        last = model.encoder.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat((mean, log_std)))
        if logits is not None:
            model.decoder.head.weight.zero_()
            model.decoder.head.bias.copy_(logits)
    return model


def _importance_ratio_moments(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[float, float]:
    """For r = p(z) / q(z) with p = N(0, I), q = N(mean, diag(s^2)), z ~ q, in closed form:
    (E_q[r^2], Var_q[log r]). Per dimension E_q[r^2] = s^2 / sqrt(2 s^2 - 1) exp(m^2 / (2 s^2 - 1))
    (finite for s^2 > 1/2) and, with z = m + s e, log r = (1 - s^2) e^2 / 2 - m s e - m^2 / 2 + log s,
    so Var[log r] = (1 - s^2)^2 / 2 + m^2 s^2; dimensions are independent."""
    var = torch.exp(2 * log_std)
    second_moment = (var / torch.sqrt(2 * var - 1) * torch.exp(mean.square() / (2 * var - 1))).prod()
    log_ratio_var = ((1 - var).square() / 2 + mean.square() * var).sum()
    return second_moment.item(), log_ratio_var.item()


def test_model_bounds_converge_to_the_exact_log_px_of_a_decoder_that_ignores_z():
    """With p(x|z) = p(x) fixed, every importance weight is p(x) p(z_j) / q(z_j | x), so the model's
    IWAE-k is log p(x) + log mean_j p(z_j)/q(z_j), whose mean tends to log p(x) (from below, by about
    Var(r)/2k), its ELBO column has mean log p(x) - KL(q || p), and its KL column is that KL exactly.
    Catches: + log q instead of - log q in the weights (IWAE ~11 nats low), a wrong Gaussian normaliser
    or a z drawn with the wrong scale (IWAE converges 0.2-0.7 nats off: log_std != 0 and mean != 0 on
    purpose), a missing - log k or a mean of log-weights in place of logsumexp (off by log k or by the
    KL, 0.31 nats), a wrong closed-form KL, a reconstruction term averaged instead of summed."""
    # q wider than the prior in every dimension: r = p/q is bounded, so the IWAE's error has the
    # delta-method spread sqrt(Var(r) / k), computed below in closed form.
    mean = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=F64)
    log_std = torch.tensor([0.2, 0.1, 0.15, 0.25], dtype=F64)
    logits = 2.0 * torch.randn(256, generator=torch.Generator().manual_seed(11), dtype=F64)
    model = _pinned_vae(mean, log_std, logits)
    x = _images(4, channels=1, seed=12)
    # The reference, in float64 and independent of the model: p(x) is a product of softmax entries.
    exact = torch.log_softmax(logits, dim=0)[x.long()].sum(dim=(1, 2, 3))
    q = torch.distributions.Normal(mean, log_std.exp())
    prior = torch.distributions.Normal(torch.zeros(4, dtype=F64), torch.ones(4, dtype=F64))
    kl = torch.distributions.kl_divergence(q, prior).sum()
    k = 1024
    noise = torch.randn(4, k, 4, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        parts = model.log_prob_parts(x, noise)
    second_moment, log_ratio_var = _importance_ratio_moments(mean, log_std)
    assert second_moment - 1 < 0.5  # Var(r) ~ 0.41: the spread below is small
    iwae_sd = math.sqrt((second_moment - 1) / k)  # ~0.02 nats per image
    elbo_sd = math.sqrt(log_ratio_var / k)  # ~0.03 nats per image

    torch.testing.assert_close(parts["kl"].double(), kl.expand(4), atol=1e-5, rtol=0)
    iwae_error = parts["log_px"].double() - exact
    assert iwae_error.max() < 5 * iwae_sd, iwae_error  # never much above log p(x) ...
    assert iwae_error.min() > -5 * iwae_sd, iwae_error  # ... and close to it (the bias, ~2e-4, is far smaller)
    assert iwae_error.mean().abs() < 5 * iwae_sd / 2, iwae_error  # the mean of 4 independent images
    elbo_error = parts["elbo"].double() - (exact - kl)
    assert elbo_error.abs().max() < 5 * elbo_sd, elbo_error
    assert (parts["log_px"] - parts["elbo"]).min() > 0.1  # the IWAE really is the tighter bound here
    # The decoder ignores z, so every draw's reconstruction term is log p(x) itself.
    torch.testing.assert_close(parts["reconstruction"].double(), exact, atol=1e-3, rtol=0)


def test_model_iwae_tightens_with_k_on_its_own_shared_draws():
    """The model's IWAE-k over 160 images, with `eval_noise`'s draws (the first k shared across k),
    rises clearly from k = 1 to 4, 16 and 64. The decoder is the random initial network; the posterior
    is pinned to N(1, 0.6^2) in 8 dimensions, far from the prior (a random encoder gives q ~ p, whose
    gaps, a few hundredths of a nat, drown in the noise). Catches: an IWAE that does not average the
    weights (a mean of log-weights, or one draw's weight: flat in k) and a wrong weight formula (+ log q:
    the 16 -> 64 gain falls to 0.15 nats). That the draws are shared is checked above, by
    test_draws_depend_on_index_and_seed_only_and_share_a_prefix_across_k; here it pairs the gains."""
    model = _pinned_vae(torch.full((8,), 1.0, dtype=F64), torch.full((8,), math.log(0.6), dtype=F64))
    batch = 160
    x = _images(batch, channels=1, seed=14)
    index = torch.arange(batch)
    iwae = {}
    with torch.no_grad():
        for k in (1, 4, 16, 64):
            model.iw_samples = k
            iwae[k] = model.log_prob_parts(x, model.eval_noise(x, index, seed=0))["log_px"].double()
    for small, large in ((1, 4), (4, 16), (16, 64)):
        gain = iwae[large] - iwae[small]  # paired: the same image, the same first `small` draws
        standard_error = gain.std().item() / math.sqrt(batch)
        # For these q and p the expected gains are about 1.3, 1.0 and 0.7 nats (6-8 standard errors here).
        assert gain.mean() > max(0.3, 4 * standard_error), (small, large, gain.mean().item(), standard_error)


def test_the_default_and_paper_sizes():
    assert sum(p.numel() for p in VAE().parameters()) == 1_338_632  # the ~1.3M-parameter reference size
    paper = VAEConfig.paper()
    assert (paper.base_channels, paper.latent_dim) == (64, 100)


def test_encoder_settings_default_to_the_dcgan_encoder_and_give_xiaos():
    """The defaults keep oodbench's encoder (no batch norm on the first convolution, leaky ReLU, inputs
    2k/255 - 1, as before the settings existed); Xiao et al.'s code's settings give conv, batch norm and ReLU
    at every stage and inputs k/255 (tests/published/test_vae_import.py compares it with their code)."""
    x = (torch.arange(3 * 16 * 16) % 256).to(torch.uint8).view(1, 3, 16, 16)  # every level
    sizes = {"image_size": 16, "base_channels": 4, "latent_dim": 3}
    seen: list[torch.Tensor] = []  # what the encoder is given
    xiao = {"encoder_activation": "relu", "encoder_input_norm": True, "input_range": "0..1"}
    for settings, layers, scaled in (
        ({}, ["Conv2d", "LeakyReLU", "Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d"], x.float() * (2 / 255) - 1),
        (xiao, ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"], x.float() / 255),
    ):
        model = VAE(VAEConfig(**sizes, **settings)).eval()
        assert [type(layer).__name__ for layer in model.encoder.net] == layers
        assert all(layer.negative_slope == 0.2 for layer in model.encoder.net if isinstance(layer, torch.nn.LeakyReLU))
        model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        model.encode(x)
        assert torch.equal(seen[-1], scaled)
    assert {k: getattr(VAEConfig(), k) for k in xiao} == \
        {"encoder_activation": "leaky_relu", "encoder_input_norm": False, "input_range": "-1..1"}


def test_family_takes_its_image_size_from_the_data():
    config = model_config("vae", {"base_channels": 8}, image_shape=(1, 16, 16))
    assert (config.in_channels, config.image_size, config.base_channels) == (1, 16, 8)
    model = build_model("vae", config)
    with torch.no_grad():
        assert model.log_prob(_images(2, channels=1, size=16)).shape == (2,)
    with pytest.raises(OodbenchError, match="square"):
        model_config("vae", {}, image_shape=(3, 32, 16))


@pytest.mark.parametrize("settings, named", [
    ({"image_size": 30}, "power of two"),
    ({"image_size": 4}, "power of two"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"iw_samples": 0}, "iw_samples"),
    ({"base_channels": 0}, "base_channels"),
    ({"encoder_activation": "tanh"}, "encoder_activation"),
    ({"input_range": "0..255"}, "input_range"),
])
def test_bad_settings_are_refused_by_name(settings, named):
    with pytest.raises(OodbenchError, match=named):
        VAEConfig(**settings)


def test_rejects_images_it_cannot_score():
    model = _tiny()
    for bad in (_images(2, size=16), _images(2, channels=1), _images(2).float()):
        with pytest.raises(OodbenchError, match="uint8 images"):
            model.log_prob(bad)


def test_index_seeded_draws_are_finite_at_both_ends_of_the_uniform_grid():
    # index_noise takes the 2**24 values k / 2**24; the largest used to become inf (float32 rounded the
    # half-step up to 1.0), making that image's IWAE NaN. Index 12522 of Tiny-ImageNet's training split
    # drew it (seed 0, 100 latent dimensions) in the quick sweep.
    from oodbench.models.vae.model import standard_normal

    grid = torch.tensor([0.0, 2.0**-24, 0.5, 1 - 2.0**-23, 1 - 2.0**-24], dtype=torch.float32)
    z = standard_normal(grid)
    assert torch.isfinite(z).all() and z.dtype == torch.float32
    assert z[0] == -z[-1] and abs(z[2]) < 1e-6  # symmetric: k and 2**24 - 1 - k map to opposite draws
    model = VAE(VAEConfig(in_channels=3, image_size=32, latent_dim=100, iw_samples=1))
    noise = model.eval_noise(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([12522]), seed=0)
    assert torch.isfinite(noise).all()


def test_reconstruction_and_elbo_columns_match_a_hand_computation_draw_by_draw():
    """The columns DoSE and the reports read, recomputed one image and one draw at a time in float64,
    with torch.distributions for the Gaussians and a log-softmax gathered at each sub-pixel's value for
    the decoder: z_j = mean + std * eps_j; reconstruction = mean_j log p(x|z_j); elbo = mean_j (log p(x|z_j)
    + log p(z_j) - log q(z_j|x)); log_px = log mean_j exp(...); kl = KL(q || p) in closed form. The
    posterior is pinned wide (std 1.5) and the decoder is the random initial network with its last layer
    scaled up, so the draws' reconstruction terms differ by nats: the first draw alone, a sum over draws, another image's draws
    or an ELBO of reconstruction - KL instead of the draws' weights all fail."""
    k, latent = 4, 3
    mean = torch.tensor([0.5, -1.0, 0.3], dtype=F64)
    log_std = torch.full((latent,), math.log(1.5), dtype=F64)
    model = _pinned_vae(mean, log_std)
    model.iw_samples = k
    with torch.no_grad():
        model.decoder.head.weight.mul_(200)  # the initial decoder barely depends on z: make its logits follow z
    x = _images(3, channels=1, seed=21)
    noise = torch.randn(3, k, latent, generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        parts = model.log_prob_parts(x, noise)
        q = torch.distributions.Normal(mean, log_std.exp())
        prior = torch.distributions.Normal(torch.zeros(latent, dtype=F64), torch.ones(latent, dtype=F64))
        rec = torch.zeros(3, k, dtype=F64)
        log_w = torch.zeros(3, k, dtype=F64)
        for b in range(3):
            target = x[b].permute(1, 2, 0).long()  # (S, S, C), the decoder's layout
            for j in range(k):
                z = mean + log_std.exp() * noise[b, j].double()
                log_probs = torch.log_softmax(model.decoder(z.float()[None])[0].double(), dim=-1)  # (S, S, C, 256)
                rec[b, j] = log_probs.gather(-1, target[..., None]).sum()
                log_w[b, j] = rec[b, j] + prior.log_prob(z).sum() - q.log_prob(z).sum()
    assert (rec.max(dim=1).values - rec.min(dim=1).values).min() > 1.0  # the draws really differ
    kl = torch.distributions.kl_divergence(q, prior).sum()
    torch.testing.assert_close(parts["reconstruction"].double(), rec.mean(dim=1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(parts["elbo"].double(), log_w.mean(dim=1), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(parts["log_px"].double(), torch.logsumexp(log_w, dim=1) - math.log(k), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(parts["kl"].double(), kl.expand(3), rtol=1e-5, atol=1e-5)
