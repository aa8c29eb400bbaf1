"""PixelCNN++: the output at a sub-pixel ignores every later sub-pixel (raster order, then R -> G -> B)
and does depend on earlier ones; the discretized logistic mixture is a distribution over the 256
levels with the tails in the edge bins, and matches the reference code's formula; log_px is the sum of
the per-sub-pixel terms, deterministic in evaluation, differentiable; a flat output layer gives the
hand-computed bits/dim of a logistic(0, 1) per sub-pixel; the whole model's probabilities of all 65,536
two-pixel images sum to one. Tiny shapes, CPU; float64 where exactness is checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oodbench.errors import OodbenchError
from oodbench.models.base import LikelihoodModel
from oodbench.models.pixelcnn import PixelCNN, PixelCNNConfig
from oodbench.models.pixelcnn import logistic_mixture as lm
from oodbench.models.pixelcnn.layers import concat_elu, gate, keep_mask
from oodbench.scores import bits_per_dim

F64 = torch.float64


def _tiny(channels: int, **overrides) -> PixelCNN:
    torch.manual_seed(0)
    settings = {"in_channels": channels, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3, **overrides}
    return PixelCNN(PixelCNNConfig(**settings))


def _images(batch: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=generator)


# --- causality -------------------------------------------------------------------------------------


def dependency_matrix(subpixel_fn, x: torch.Tensor) -> torch.Tensor:
    """D[q, p] = |change of output p when input sub-pixel q alone is changed|, for one image x
    (1, C, H, W); sub-pixels are numbered in generation order: raster over pixels, channels inside."""
    _, channels, height, width = x.shape
    n = channels * height * width
    flat = x.permute(0, 2, 3, 1).reshape(1, n).repeat(n + 1, 1)  # row 0: x itself; row q + 1: q changed
    shift = torch.randint(1, 256, (n,), generator=torch.Generator().manual_seed(1))
    rows = torch.arange(n)
    flat[rows + 1, rows] = ((flat[rows + 1, rows].long() + shift) % 256).to(torch.uint8)
    batch = flat.reshape(n + 1, height, width, channels).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = subpixel_fn(batch).permute(0, 2, 3, 1).reshape(n + 1, n)
    return (out[1:] - out[0]).abs()


def assert_causal(dependencies: torch.Tensor, channels: int, width: int) -> None:
    n = dependencies.shape[0]
    later = torch.ones(n, n, dtype=torch.bool).tril(-1)  # [q, p] with q after p
    assert dependencies[later].max() == 0, "an output depends on a later sub-pixel"
    # ... and it is not vacuous: every output but the first depends on something before it, and in
    # particular on the earlier channels of its own pixel, its left neighbour and the pixel above.
    earlier = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert ((dependencies * earlier).amax(dim=0)[1:] > 1e-6).all()
    pixel_stride = channels
    for p in range(n):
        pixel, channel = divmod(p, channels)
        row, column = divmod(pixel, width)
        for c in range(channel):
            assert dependencies[pixel * pixel_stride + c, p] > 1e-6
        if column > 0:
            assert dependencies[(pixel - 1) * pixel_stride, p] > 1e-6
        if row > 0:
            assert dependencies[(pixel - width) * pixel_stride, p] > 1e-6


@pytest.mark.parametrize(("channels", "size"), [(3, (8, 8)), (1, (8, 8)), (1, (7, 5))])
def test_output_at_a_subpixel_ignores_later_subpixels(channels, size):
    model = _tiny(channels).double().eval()
    x = _images(1, channels, *size)
    assert_causal(dependency_matrix(model.subpixel_log_probs, x), channels, size[1])


def test_causality_check_catches_a_model_that_peeks():
    # The same check on a function whose output at a pixel reads its right-hand neighbour must fail.
    def peeking(x: torch.Tensor) -> torch.Tensor:
        centres = lm.bin_centres(x, F64)
        return centres + 0.5 * F.pad(centres[:, :, :, 1:], (0, 1))

    x = _images(1, 3, 4, 4)
    with pytest.raises(AssertionError, match="later sub-pixel"):
        assert_causal(dependency_matrix(peeking, x), 3, 4)


# --- the discretized logistic mixture --------------------------------------------------------------


def _one_pixel_params(channels: int, seed: int = 3) -> torch.Tensor:
    """Hand-made mixtures at one pixel (1, P, 1, 1): 3 components, one mean outside [-1, 1] (its mass
    sits in an edge bin), one narrow component (scale ~ a bin), one broad."""
    n_mix = 3
    logits = torch.tensor([0.3, -0.2, 1.0], dtype=F64)
    means = torch.tensor([[1.3, -0.25, 0.1], [-0.6, 0.8, 0.0], [0.2, 0.5, -1.1]], dtype=F64)[:channels]
    log_scales = torch.tensor([[-1.0, -5.0, 0.5], [-2.0, -4.5, -0.5], [-3.0, -1.0, 0.0]], dtype=F64)[:channels]
    per_channel = [torch.stack((means[c], log_scales[c])) for c in range(channels)]
    if channels == 3:
        raw_coeffs = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.7, 0.0], [1.5, 0.2, -0.8]], dtype=F64)
        per_channel = [torch.cat((p, raw_coeffs[c:c + 1])) for c, p in enumerate(per_channel)]
    flat = torch.cat((logits, torch.stack(per_channel).reshape(-1)))
    assert flat.numel() == n_mix * lm.params_per_mixture(channels)
    return flat.view(1, -1, 1, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_each_subpixel_conditional_sums_to_one_over_256_levels(channels):
    params = _one_pixel_params(channels).expand(256, -1, -1, -1)
    generator = torch.Generator().manual_seed(4)
    for trial in range(3):  # a few settings of the other channels
        fixed = torch.randint(0, 256, (channels,), generator=generator).to(torch.uint8)
        for c in range(channels):
            x = fixed.view(1, channels, 1, 1).repeat(256, 1, 1, 1)
            x[:, c, 0, 0] = torch.arange(256, dtype=torch.uint8)
            log_probs = lm.subpixel_log_probs(x, params)[:, c, 0, 0]
            assert torch.isfinite(log_probs).all()
            total = log_probs.exp().sum().item()
            assert total == pytest.approx(1.0, abs=1e-4), (trial, c)


def test_the_pixel_distribution_sums_to_one_over_all_levels():
    # Grayscale: the pixel is the sub-pixel; in float32, as the model runs.
    params = _one_pixel_params(1).float().expand(256, -1, -1, -1)
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    assert lm.pixel_log_probs(x, params).exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_edge_bins_take_the_tails_and_mid_bins_the_cdf_difference():
    mean, log_scale = 0.3, -2.0
    s = math.exp(log_scale)
    params = torch.tensor([0.0, mean, log_scale], dtype=F64).view(1, 3, 1, 1).expand(256, -1, -1, -1)
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    log_probs = lm.pixel_log_probs(x, params)[:, 0, 0]

    def cdf(v):
        return 1.0 / (1.0 + math.exp(-(v - mean) / s))

    half = 1.0 / 255.0
    assert log_probs[0].item() == pytest.approx(math.log(cdf(-1.0 + half)), rel=1e-9)
    assert log_probs[255].item() == pytest.approx(math.log(1.0 - cdf(1.0 - half)), rel=1e-9)
    centre = 140 / 127.5 - 1.0
    assert log_probs[140].item() == pytest.approx(math.log(cdf(centre + half) - cdf(centre - half)), rel=1e-9)


def test_a_bin_far_from_a_narrow_component_falls_back_to_the_density():
    # Scale ~ e^-7 (the floor): 200 bins from the mean the sigmoid difference underflows; the reference
    # code then uses the log-density at the bin centre minus log(127.5), which stays finite.
    params = torch.tensor([0.0, -0.5, -7.0], dtype=torch.float32).view(1, 3, 1, 1)
    x = torch.full((1, 1, 1, 1), 250, dtype=torch.uint8)
    log_prob = lm.pixel_log_probs(x, params).item()
    centred = (250 / 127.5 - 1.0) + 0.5
    mid_in = centred * math.exp(7.0)
    expected = mid_in + 7.0 - 2.0 * mid_in - math.log(127.5)  # softplus(z) = z for large z
    assert math.isfinite(log_prob)
    assert log_prob == pytest.approx(expected, rel=1e-5)


def _reference_log_probs(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The reference code's per-pixel log-likelihood (openai/pixel-cnn `discretized_mix_logistic_loss`,
    without the final sum), transcribed literally, channels-last: x in [-1, 1] (B, H, W, 3),
    params (B, H, W, 10 K). Returns (B, H, W)."""
    xs = list(x.shape)
    nr_mix = params.shape[-1] // 10
    logit_probs = params[:, :, :, :nr_mix]
    rest = params[:, :, :, nr_mix:].reshape(xs + [nr_mix * 3])
    means = rest[:, :, :, :, :nr_mix]
    log_scales = torch.clamp(rest[:, :, :, :, nr_mix:2 * nr_mix], min=-7.0)
    coeffs = torch.tanh(rest[:, :, :, :, 2 * nr_mix:3 * nr_mix])
    x = x.unsqueeze(-1) + torch.zeros(xs + [nr_mix], dtype=x.dtype)
    m2 = (means[:, :, :, 1, :] + coeffs[:, :, :, 0, :] * x[:, :, :, 0, :]).unsqueeze(3)
    m3 = (means[:, :, :, 2, :] + coeffs[:, :, :, 1, :] * x[:, :, :, 0, :] + coeffs[:, :, :, 2, :] * x[:, :, :, 1, :]).unsqueeze(3)
    means = torch.cat((means[:, :, :, 0:1, :], m2, m3), dim=3)
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered_x + 1.0 / 255.0)
    cdf_plus = torch.sigmoid(plus_in)
    min_in = inv_stdv * (centered_x - 1.0 / 255.0)
    cdf_min = torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)
    log_one_minus_cdf_min = -F.softplus(min_in)
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered_x
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min,
                    torch.where(cdf_delta > 1e-5, torch.log(torch.clamp(cdf_delta, min=1e-12)),
                                log_pdf_mid - np.log(127.5))))
    log_probs = log_probs.sum(dim=3) + torch.log_softmax(logit_probs, dim=-1)
    return torch.logsumexp(log_probs, dim=-1)


def test_matches_the_reference_codes_formula():
    generator = torch.Generator().manual_seed(5)
    n_mix = 4
    params = torch.randn(6, 10 * n_mix, 5, 5, generator=generator, dtype=F64) * 2.0
    x = _images(6, 3, 5, 5, seed=6)
    x[0, :, 0, :] = 0  # edge bins on purpose
    x[1, :, :, 0] = 255
    expected = _reference_log_probs(lm.bin_centres(x, F64).permute(0, 2, 3, 1), params.permute(0, 2, 3, 1))
    torch.testing.assert_close(lm.pixel_log_probs(x, params), expected, rtol=1e-10, atol=1e-10)


def test_samples_follow_the_mixture():
    # Grayscale: the empirical histogram of 40k draws matches exp(log p) over the 256 levels.
    params = _one_pixel_params(1).float()
    draws = lm.sample(params.expand(40_000, -1, -1, -1), 1, torch.Generator().manual_seed(7))
    empirical = torch.bincount(draws.flatten().long(), minlength=256).double() / draws.numel()
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    exact = lm.pixel_log_probs(levels, params.expand(256, -1, -1, -1)).exp().flatten().double()
    assert 0.5 * (empirical - exact).abs().sum().item() < 0.03  # total variation


# --- the model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_log_px_is_the_sum_of_subpixel_log_probs_and_deterministic_in_eval(channels):
    model = _tiny(channels).eval()
    x = _images(3, channels, 6, 5)
    with torch.no_grad():
        parts = model.log_prob_parts(x)
        subpixels = model.subpixel_log_probs(x)
        again = model.log_prob(x)
    assert set(parts) == {"log_px"} and parts["log_px"].shape == (3,)
    torch.testing.assert_close(subpixels.sum(dim=(1, 2, 3)), parts["log_px"], rtol=1e-5, atol=1e-3)
    assert torch.equal(parts["log_px"], again)
    # noise is ignored: the likelihood is discrete
    assert torch.equal(model.log_prob(x, torch.rand(x.shape)), again)


def _every_two_pixel_image(shape: tuple[int, int]) -> torch.Tensor:
    """All 256^2 grayscale images of `shape` (1, 2) or (2, 1): (65536, 1, H, W), image 256 a + b holding
    a in its first pixel (raster order) and b in its second."""
    levels = torch.arange(256, dtype=torch.uint8)
    first, second = torch.meshgrid(levels, levels, indexing="ij")
    return torch.stack((first.flatten(), second.flatten()), dim=1).view(-1, 1, *shape)


def _sharp_tiny_grayscale() -> PixelCNN:
    """A tiny grayscale model in float64 and eval mode (no dropout) whose mixtures are pushed off their
    initial form: at initialisation every component is nearly the same broad logistic (log-scales
    within ~0.4 of 0, means near 0, logits nearly equal) that barely depends on the earlier pixels. Here
    every weight-norm gain is doubled and the 1x1 output conv's tripled (the mixture then moves with the
    earlier pixel), the logits made unequal, the means spread to about -1.1, 0.2 and 0.9 (mass in both
    tails) and the log-scales lowered by 3 (scales of ~5-10 bins), so that the middle bins, both edge
    bins and the far-tail fallback all carry terms."""
    model = _tiny(1, nr_filters=4).double().eval()
    n_mix = model.config.nr_logistic_mix
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".g"):
                parameter.mul_(2.0)
        model.nin_out.g.mul_(3.0)
        bias = model.nin_out.bias  # layout: K logits, K means, K log-scales
        bias[:n_mix] += torch.tensor([0.0, 1.0, -0.5], dtype=F64)
        bias[n_mix:2 * n_mix] += torch.tensor([-1.1, 0.2, 0.9], dtype=F64)
        bias[2 * n_mix:] -= 3.0
    return model


@pytest.mark.parametrize("shape", [(1, 2), (2, 1)])
def test_the_whole_model_sums_to_one_over_every_two_pixel_image(shape):
    """sum over all 65,536 images x of exp(log_prob(x)) = 1: the network, the causal shifts and the
    discretized mixture together define a distribution. (1, 2) puts the second pixel to the right of
    the first (the ul stream's right shift), (2, 1) below it (the down shifts). Catches: a dropped or
    doubled sub-pixel term (sum 256, or far below 1), edge bins that do not take the tails or bins of the
    wrong width (mass lost or counted twice), mixture weights not log-softmaxed, and a network that
    peeks at the pixel it predicts or a later one (then p(x1) depends on x2 and the sum is not 1)."""
    model = _sharp_tiny_grayscale()
    x = _every_two_pixel_image(shape)
    with torch.no_grad():
        joint = torch.cat([model.log_prob(chunk) for chunk in x.split(4096)]).exp().view(256, 256)
        # The first pixel's own distribution, from the 256 images whose second pixel is 0.
        first = model.subpixel_log_probs(x.view(256, 256, 1, *shape)[:, 0]).flatten(1)[:, 0].exp()
    # The reference code's far-tail fallback (a bin of mass < 1e-5 scored as density x width) is the one
    # approximation: here it loses ~2e-7 of mass; float64 is otherwise exact to ~1e-14.
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-5)
    # Every conditional p(. | x1) sums to one as well: the joint's row sums are the first pixel's law.
    torch.testing.assert_close(joint.sum(dim=1), first, rtol=1e-5, atol=1e-12)
    # Not vacuous: the second pixel's law moves with the first, and both edge bins and the middle hold mass.
    conditionals = joint / joint.sum(dim=1, keepdim=True)
    total_variation = 0.5 * (conditionals - conditionals.mean(dim=0)).abs().sum(dim=1)
    assert total_variation.median() > 0.15  # 0.24 and 0.42 here: p(x2 | x1) is far from the average law for most x1
    assert first[0] > 0.01 and first[255] > 0.01 and first[1:255].sum() > 0.5  # ~5%, ~18%, ~77% here


def test_contract_attributes():
    model = _tiny(3)
    assert isinstance(model, LikelihoodModel)
    assert model.part_names == ()
    assert model.bound == "exact"
    assert "256 levels" in model.discretization


def test_a_flat_output_layer_gives_the_hand_computed_bits_per_dim():
    """With the output layer's kernel zeroed (g = 0) and its bias 0, every mixture parameter is 0: K equal
    logistic(0, 1) components, channel coefficients tanh(0) = 0, so every sub-pixel has the same law,
    P(k) = sigmoid(c_k + 1/255) - sigmoid(c_k - 1/255) at bin centres c_k = k / 127.5 - 1, the edge bins
    taking the tails. Its bits/dim, from that formula in float64 here, must be the model's to 1e-6: a
    pixel scaling, bin width or edge rule that differs, or nats read as bits, moves it by far more. (The
    untrained model's own ~8 bits/dim has no exact reference; a bound like 7 < bpd < 11 misses a bin
    width off by 2x, which moves it by 1 bit/dim.)"""
    model = _tiny(3).eval()
    with torch.no_grad():
        model.nin_out.g.zero_()
        model.nin_out.bias.zero_()
    x = _images(4, 3, 8, 8)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0, 255  # both edge bins
    centres = np.arange(256) / 127.5 - 1

    def cdf(t):  # the logistic's
        return 1 / (1 + np.exp(-t))

    probs = cdf(centres + 1 / 255) - cdf(centres - 1 / 255)
    probs[0], probs[255] = cdf(-1 + 1 / 255), 1 - cdf(1 - 1 / 255)
    assert abs(probs.sum() - 1) < 1e-12
    expected = -np.log(probs)[x.numpy()].sum(axis=(1, 2, 3)) / (3 * 8 * 8 * math.log(2))  # ~8.07 bits/dim
    with torch.no_grad():
        bpd = bits_per_dim(model.log_prob(x).double(), 3 * 8 * 8)
    np.testing.assert_allclose(bpd.numpy(), expected, rtol=1e-6)


def test_untrained_model_scores_finite_bits_per_dim_and_gradients_flow():
    model = _tiny(3).train()
    x = _images(4, 3, 8, 8)
    bpd = bits_per_dim(model.log_prob(x), 3 * 8 * 8)
    assert torch.isfinite(bpd).all()
    bpd.mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_dropout_is_random_in_training_only():
    model = _tiny(1, dropout=0.5)
    x = _images(2, 1, 6, 6)
    model.train()
    torch.manual_seed(1)
    first = model.log_prob(x)
    torch.manual_seed(1)
    replay = model.log_prob(x)
    second = model.log_prob(x)
    assert torch.equal(first, replay)  # seeded by torch's generator
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model.log_prob(x), model.log_prob(x))


def test_fused_concat_elu_matches_autograd_and_its_gradient():
    x = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    expected = F.pad(F.elu(torch.cat((x, -x), dim=1)), (1, 1, 1, 0))
    torch.testing.assert_close(concat_elu(x, (1, 1, 1)), expected)
    assert torch.autograd.gradcheck(lambda t: concat_elu(t, (1, 0, 0)), (x,))

    def dropped(t):
        torch.manual_seed(2)  # the same mask on every call
        return concat_elu(t, (1, 1, 0), dropout=0.5)

    assert torch.autograd.gradcheck(dropped, (x,))
    kept = dropped(x)[:, :, 1:, 1:] != 0
    assert 0.3 < kept.double().mean().item() < 0.7


# bits per element: 1, 2, 2, 4, 8 (3/256), 16, 16
@pytest.mark.parametrize("dropout", [0.5, 0.25, 0.75, 0.0625, 0.01171875, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, F64])
def test_dropout_keep_mask_drops_at_its_rate_independently_and_channels_last(dropout, dtype):
    shape = torch.Size((4, 16, 32, 32))
    torch.manual_seed(3)
    mask = keep_mask(shape, dropout, dtype, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(mask, keep_mask(shape, dropout, dtype, torch.device("cpu")))  # torch's generator
    assert mask.dtype == dtype and mask.shape == shape and mask.is_contiguous(memory_format=torch.channels_last)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    flat = 1.0 - mask.permute(0, 2, 3, 1).reshape(-1).double()  # dropped = 1, in memory order
    n = flat.numel()
    assert abs(flat.mean().item() - dropout) < 5 * math.sqrt(dropout * (1 - dropout) / n)
    centred = flat - dropout
    for lag in (1, 2, 3, 4, 7, 8, 16):  # fields cut from one byte or one word must not move together
        correlation = (centred[lag:] * centred[:-lag]).mean() / (dropout * (1 - dropout))
        assert abs(correlation.item()) < 5 / math.sqrt(n), lag


def test_fused_gate_matches_autograd_and_its_gradient():
    x = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    h = torch.randn(2, 6, 4, 5, dtype=F64).contiguous(memory_format=torch.channels_last).requires_grad_()
    expected = x + h[:, :3] * torch.sigmoid(h[:, 3:])
    torch.testing.assert_close(gate(x, h), expected)
    assert torch.autograd.gradcheck(gate, (x, h))
    with torch.no_grad():  # the in-place path gives the same values
        torch.testing.assert_close(gate(x, h.clone()), expected)


def test_weight_norm_does_not_change_the_initial_function():
    x = _images(2, 3, 5, 5)
    with_wn, without_wn = _tiny(3, weight_norm=True).eval(), _tiny(3, weight_norm=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(with_wn.log_prob(x), without_wn.log_prob(x), rtol=1e-5, atol=1e-3)


def test_sample_gives_images_of_the_asked_size():
    model = _tiny(3).eval()
    images = model.sample(2, image_size=(3, 4), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 3, 4) and images.dtype == torch.uint8
    assert torch.isfinite(model.log_prob(images)).all()


def test_rejects_images_it_cannot_score():
    model = _tiny(3)
    with pytest.raises(OodbenchError, match="uint8"):
        model.log_prob(torch.zeros(1, 3, 4, 4))
    with pytest.raises(OodbenchError, match="in_channels=3"):
        model.log_prob(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


# --- configuration -----------------------------------------------------------------------------------


def test_paper_config():
    config = PixelCNNConfig.paper()
    assert (config.nr_resnet, config.nr_filters, config.nr_logistic_mix, config.dropout) == (5, 160, 10, 0.5)
    assert PixelCNNConfig.paper(in_channels=1).in_channels == 1
    with pytest.raises(TypeError):
        PixelCNNConfig(3)  # keyword-only


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"in_channels": 2}, "in_channels"),
        ({"nr_resnet": 0}, "nr_resnet"),
        ({"nr_filters": 0}, "nr_filters"),
        ({"nr_logistic_mix": 0}, "nr_logistic_mix"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, named):
    with pytest.raises(OodbenchError, match=named):
        PixelCNNConfig(**settings)


def test_under_bf16_autocast_the_output_layer_and_the_mixture_run_in_float32(monkeypatch):
    """bf16-mixed training: the network's blocks may run in bf16, but its output layer (bf16 would round a
    mixture mean to half a bin) and the discretised logistic mixture (bin edges 2/255 apart, differences of
    sigmoids) run in float32 with autocast off, in training and in the per-subpixel conditionals alike. In
    bf16 they cost a quick CIFAR-10 model 0.33 bits/dim after 72 steps."""
    model = _tiny(3)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    seen = []
    for name in ("pixel_log_probs", "subpixel_log_probs"):
        real = getattr(lm, name)

        def recording(x, params, real=real):
            seen.append((params.dtype, torch.is_autocast_enabled("cpu")))
            return real(x, params)

        monkeypatch.setattr(lm, name, recording)
    dtypes = {}

    def record(name):
        def hook(module, inputs, out) -> None:  # returns None: the output stays the layer's own
            dtypes.setdefault(name, (inputs[0].dtype, out.dtype))
        return hook

    model.up_u[0][0].register_forward_hook(record("block"))
    model.nin_out.register_forward_hook(record("output"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_px = model.training_log_prob(x)
        subpixels = model.subpixel_log_probs(x)
    assert dtypes["block"][1] == torch.bfloat16 and dtypes["output"] == (torch.float32, torch.float32)
    assert seen == [(torch.float32, False), (torch.float32, False)]
    assert log_px.dtype == subpixels.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(log_px, model.log_prob(x), rtol=0.01, atol=0)  # bf16 blocks only
