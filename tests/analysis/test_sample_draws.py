"""The model's own samples (analysis/samples.py) against independent references: models whose sampling
distribution is known in closed form (a Glow that is a rotation of its Gaussian prior, a PixelCNN++ and a
VAE whose every pixel is one known logistic or categorical), each family's draw seeded, and the
comparison's numbers against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from oodbench.analysis.samples import compare, draw_samples, sampler_of, to_pixels
from oodbench.errors import OodbenchError
from oodbench.models import model_config
from oodbench.models.families import build_model


def _model(family: str, shape: tuple[int, int, int], **settings):
    return build_model(family, model_config(family, settings, image_shape=shape)).eval()


def _fit(counts: np.ndarray, probs: np.ndarray) -> float:
    """The chi-square goodness-of-fit p-value of level `counts` against `probs`, rare levels pooled."""
    expected = probs * counts.sum()
    keep = expected >= 5
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    observed, expected = (observed[:-1], expected[:-1]) if expected[-1] < 5 else (observed, expected)
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


def _standard_glow():
    """A CV-Glow that is a rotation (the 1x1 convolutions) of its N(0, I) priors: identity actnorms, zero
    coupling shifts and split priors; so its y - 1/2 is N(0, T^2 I) at temperature T."""
    glow = _model("cv-glow", (1, 8, 8), levels=2, steps=2, hidden_channels=8)
    with torch.no_grad():
        for name, parameter in glow.named_parameters():
            if "invconv" not in name:  # actnorm scales and biases, every coupling net, the priors
                parameter.zero_()
    return glow


@pytest.mark.parametrize("temperature", [0.03, 0.1])
def test_glow_draws_its_prior_at_the_temperature(temperature):
    pixels = draw_samples(_standard_glow(), 100, image_shape=(1, 8, 8), temperature=temperature, seed=1)
    assert pixels.dtype == torch.uint8 and pixels.shape == (100, 1, 8, 8)
    values = pixels.double().numpy().ravel()
    # floor(256 y) of y ~ N(1/2, T^2): mean 127.5, std 256 T (the floor's 1/12 variance is negligible here)
    assert values.mean() == pytest.approx(127.5, abs=4 * 256 * temperature / math.sqrt(values.size))
    assert values.std() == pytest.approx(256 * temperature, rel=0.03)
    # and bin by bin, the discretised normal itself
    edges = np.arange(257) / 256
    cdf = stats.norm.cdf(edges, loc=0.5, scale=temperature)
    probs = np.diff(cdf)
    probs[0] += cdf[0]
    probs[-1] += 1 - cdf[-1]
    assert _fit(np.bincount(values.astype(int), minlength=256), probs) > 1e-3


def test_to_pixels_is_the_bin_that_dequantizes_to_y():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    for u in (0.0, 0.5, 0.999):
        assert torch.equal(to_pixels((x.float() + u) / 256), x)
    assert to_pixels(torch.tensor([-0.2, 1.0, 1.7])).tolist() == [0, 255, 255]  # a flow's tails: the edge bins


def test_pixelcnn_draws_its_logistic():
    """Every pixel one logistic (mean m, scale s on [-1, 1]), rounded to its bin, the tails in the edge
    bins (Salimans et al. 2017): the reference is scipy's logistic cdf at the bin edges."""
    model = _model("pixelcnn", (1, 6, 6), nr_resnet=1, nr_filters=4, nr_logistic_mix=1)
    mean, scale = 0.3, 0.02
    with torch.no_grad():
        model.nin_out.g.zero_()  # the output layer's kernel is g v / ||v||: zero, whatever comes before it
        model.nin_out.bias.copy_(torch.tensor([0.0, mean, math.log(scale)]))  # logit, mean, log-scale
    pixels = draw_samples(model, 200, image_shape=(1, 6, 6), seed=3)
    centres = np.arange(256) * 2 / 255 - 1
    cdf = stats.logistic.cdf(centres[:-1] + 1 / 255, loc=mean, scale=scale)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    counts = np.bincount(pixels.numpy().ravel(), minlength=256)
    assert _fit(counts, probs) > 1e-3
    assert abs(pixels.double().mean() - (probs * np.arange(256)).sum()) < 0.3


def test_vae_draws_its_decoder_categorical():
    model = _model("vae", (1, 16, 16), base_channels=4, latent_dim=2)
    probs = np.full(256, 0.0)
    probs[[0, 100, 255]] = [0.5, 0.3, 0.2]
    with torch.no_grad():
        model.decoder.head.weight.zero_()  # the logits are the head's bias, whatever z is
        model.decoder.head.bias.copy_(torch.from_numpy(np.log(np.maximum(probs, 1e-30))).float())
    pixels = draw_samples(model, 60, image_shape=(1, 16, 16), seed=4)
    counts = np.bincount(pixels.numpy().ravel(), minlength=256)
    assert counts[probs == 0].sum() == 0
    assert _fit(counts, probs) > 1e-3


@pytest.mark.parametrize("family, shape, settings", [
    ("glow", (1, 8, 8), {"levels": 2, "steps": 1, "hidden_channels": 4}),
    ("pixelcnn", (3, 4, 4), {"nr_resnet": 1, "nr_filters": 4, "nr_logistic_mix": 2}),
    ("vae", (1, 16, 16), {"base_channels": 4, "latent_dim": 2}),
])
def test_the_same_seed_draws_the_same_samples(family, shape, settings):
    torch.manual_seed(0)
    model = _model(family, shape, **settings)
    before = torch.random.get_rng_state()
    first = draw_samples(model, 5, image_shape=shape, seed=7, batch_size=2)  # batches of 2, 2 and 1
    assert torch.equal(torch.random.get_rng_state(), before)  # the global generator is left alone
    assert torch.equal(first, draw_samples(model, 5, image_shape=shape, seed=7, batch_size=2))
    assert not torch.equal(first, draw_samples(model, 5, image_shape=shape, seed=8, batch_size=2))
    assert first.shape == (5, *shape) and first.dtype == torch.uint8


def test_samples_come_from_the_eval_mode_model_which_is_left_as_it_was():
    torch.manual_seed(0)
    model = _model("vae", (1, 16, 16), base_channels=4, latent_dim=2)
    evaluated = draw_samples(model, 8, image_shape=(1, 16, 16))
    # in training mode its batch norms would use the batch's statistics, not the running ones
    assert torch.equal(draw_samples(model.train(), 8, image_shape=(1, 16, 16)), evaluated)
    assert model.training


def test_a_model_without_a_sampler_is_refused():
    assert sampler_of(torch.nn.Linear(2, 2)) is None
    with pytest.raises(OodbenchError, match="no sampler"):
        draw_samples(torch.nn.Linear(2, 2), 2, image_shape=(1, 2, 2))


def test_compare_against_scikit_learn():
    rng = np.random.default_rng(0)
    samples, test, ood = rng.normal(3.0, 0.2, 40), rng.normal(3.1, 0.3, 60), rng.normal(2.5, 0.3, 50)
    row = compare(samples, test, ood)
    assert row["bpd_samples_mean"] == pytest.approx(samples.mean()) and row["n_ood"] == 50
    assert row["bpd_in_test_std"] == pytest.approx(np.std(test, ddof=1))
    # OOD (the second set) positive, larger bits/dim = more OOD
    label = np.r_[np.zeros(40), np.ones(50)]
    assert row["auroc_samples_vs_ood"] == pytest.approx(roc_auc_score(label, np.r_[samples, ood]))
    assert row["auroc_samples_vs_ood"] < 0.1  # the OOD set is the likelier one here
    assert row["auroc_in_test_vs_samples"] == pytest.approx(roc_auc_score(np.r_[np.zeros(60), np.ones(40)],
                                                                          np.r_[test, samples]))
    assert row["auroc_samples_vs_ood_low"] <= row["auroc_samples_vs_ood"] <= row["auroc_samples_vs_ood_high"]
