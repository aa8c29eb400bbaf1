"""Dequantization and its index-seeded noise, against references that do not use the code's expressions:
exact fractions for y = (x + u) / 256, the moments and distribution of U[0, 1) for the noise (mean 1/2,
variance 1/12, a Kolmogorov-Smirnov test), and what "a function of (seed, index, position) only" implies:
different images and positions get different noise, and a sample's noise ignores the batch around it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from oodbench.data.quantize import dequantize, index_noise

# The largest float32 below 1 (index_noise's largest value, and the largest y may take).
BELOW_ONE = 1 - 2.0**-24


def noise_of(n_images: int, shape=(3, 32, 32), seed: int = 0, first: int = 0) -> np.ndarray:
    """Noise of images first .. first + n_images - 1, as (n_images, positions) float64."""
    index = torch.arange(first, first + n_images)
    return index_noise(index, shape, seed).reshape(n_images, -1).double().numpy()


def test_index_noise_has_the_moments_of_a_uniform_on_the_unit_interval():
    u = noise_of(512).ravel()  # 1.57M values
    n = u.size
    # U[0, 1): mean 1/2 (sd of the mean sqrt(1/12 / n) = 2.3e-4), variance 1/12 (sd of the sample variance
    # sqrt((1/80 - 1/144) / n) = 6e-5). Noise on [0, 2) or [0, 1/2), or a constant 1/2, fails here.
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt((1 / 80 - 1 / 144) / n)
    # Its range: [0, 1), reaching both ends (to 2**-24), on the grid of multiples of 2**-24 (exact in float32).
    assert u.min() >= 0 and u.max() < 1
    assert u.min() < 1e-5 and u.max() > 1 - 1e-5
    assert np.array_equal(u * 2**24, np.floor(u * 2**24))


def test_index_noise_passes_a_kolmogorov_smirnov_test_for_uniformity():
    u = noise_of(64).ravel()  # 196,608 values: a KS test of this size sees a 0.5% distortion of the CDF
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # Each position on its own, across images, is uniform too (not, say, a ramp over the image).
    by_position = noise_of(4096, shape=(1, 4, 4))
    for position in range(by_position.shape[1]):
        assert stats.kstest(by_position[:, position], "uniform").pvalue > 1e-4, position


def test_different_images_and_positions_get_different_noise():
    u = noise_of(256, shape=(3, 32, 32))
    n_images, n_positions = u.shape
    # Two independent 24-bit draws are equal with probability 2**-24: over 256 x 3072 pairs, ~0.05 expected.
    assert (u[1:] == u[:-1]).sum() <= 3  # neighbouring images (noise that ignores the index fails)
    assert (u[:, 1:] == u[:, :-1]).sum() <= 3  # neighbouring positions (noise that ignores the position fails)
    assert (u[1:, :-1] == u[:-1, 1:]).sum() <= 3  # no aliasing: image i+1 at p is not image i at p+1
    assert (u[:, n_positions // 2:] == u[:, :n_positions // 2]).sum() <= 3  # channels, rows: not a repeat
    # Within an image, 3,072 draws from 2**24 values repeat ~0.3 times on average.
    assert min(len(np.unique(row)) for row in u) >= n_positions - 3
    # And no linear dependence between neighbours (|corr| of independent draws: sd 1/sqrt(n)).
    for a, b in ((u[1:], u[:-1]), (u[:, 1:], u[:, :-1])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)
    assert n_images == 256


def test_a_samples_noise_ignores_the_batch_around_it_and_follows_the_seed():
    shape = (3, 8, 8)
    index = torch.tensor([7, 123_456, 0, 59_999, 7_000_001])
    together = index_noise(index, shape, seed=3)
    for b, i in enumerate(index.tolist()):
        alone = index_noise(torch.tensor([i]), shape, seed=3)
        assert torch.equal(together[b], alone[0])
    reversed_batch = index_noise(index.flip(0), shape, seed=3)
    assert torch.equal(reversed_batch.flip(0), together)
    # The set it sits in does not matter either: index 7 in a batch of 1,000 others.
    crowd = torch.cat([torch.arange(1000, 2000), torch.tensor([7])])
    assert torch.equal(index_noise(crowd, shape, seed=3)[-1], together[0])
    # Another seed is other noise, everywhere.
    other = index_noise(index, shape, seed=4)
    assert (other == together).double().mean() < 1e-3


def test_dequantize_is_x_plus_u_over_256_exactly():
    # Hand-picked (x, u) with y = (x + u) / 256 as an exact fraction: every one is a float32 (no rounding),
    # so y must be exactly that. A bin width of 1/255 or a range of [-1/2, 1/2) for u fails here.
    cases = [(0, 0.0), (0, 0.5), (1, 0.25), (127, 0.75), (128, 2.0**-16), (254, 0.5), (255, 0.0), (255, 0.5),
             (255, 0.99609375)]
    x = torch.tensor([c[0] for c in cases], dtype=torch.uint8).view(1, 1, 1, -1)
    u = torch.tensor([c[1] for c in cases], dtype=torch.float32).view(1, 1, 1, -1)
    y = dequantize(x, u).view(-1).tolist()
    expected = [float((Fraction(xi) + Fraction(ui)) / 256) for xi, ui in cases]
    assert y == expected


def test_dequantized_pixels_stay_in_their_bin_and_in_0_1_for_every_pixel_value():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(4, 1, 1, 256)
    u = torch.tensor([0.0, 2.0**-24, 0.5, BELOW_ONE]).view(4, 1, 1, 1).expand(4, 1, 1, 256)
    y = dequantize(x, u).double().view(4, 256)
    assert (y >= 0).all() and (y < 1).all()
    lower, upper = torch.arange(256) / 256, torch.arange(1, 257) / 256
    assert torch.equal(y[0], lower.double())  # u = 0: the bin's left edge
    assert ((y >= lower) & (y <= upper)).all()  # never outside [x/256, (x+1)/256] (float32 may reach its right edge)


def test_a_pixel_of_255_with_the_largest_noise_stays_below_1():
    """float32 rounds 255 + u up to 256 for u >= 1 - 2**-17: y was exactly 1.0, outside [0, 1), where a
    logit step gives inf. It must be the largest float32 below 1 instead; float64 needs no clamp."""
    x = torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)
    u = torch.tensor([BELOW_ONE, 1 - 2.0**-17, 1 - 2.0**-16]).view(1, 1, 1, 3)
    y = dequantize(x, u)
    assert y.dtype == torch.float32 and (y < 1).all()
    assert y.view(-1).tolist() == [BELOW_ONE, BELOW_ONE, BELOW_ONE]  # 1 - 2**-16 + 255: rounds to 256 - 2**-16
    # index_noise reaches its largest value: index 12522 (seed 0) at position 80 of a 10x10 image.
    noise = index_noise(torch.tensor([12522]), (1, 10, 10), seed=0)
    assert noise.view(-1)[80].item() == BELOW_ONE
    assert dequantize(torch.full((1, 1, 10, 10), 255, dtype=torch.uint8), noise).max() < 1
    # In float64 the same noise gives (256 - 2**-24) / 256 exactly: not clamped, not moved.
    assert dequantize(x, u.double()).view(-1).tolist() == [float((255 + Fraction(v)) / 256) for v in u.view(-1).tolist()]


def test_training_noise_keeps_every_pixel_in_its_bin_and_below_1():
    # 2M fresh draws at pixel 255: torch.rand gives u >= 1 - 2**-17 about 16 times (probability 2**-17 each).
    torch.manual_seed(0)
    x = torch.full((2, 1, 1024, 1024), 255, dtype=torch.uint8)
    y = dequantize(x)
    assert y.max() < 1 and y.min() >= 255 / 256
    u = dequantize(torch.zeros(1, 3, 256, 256, dtype=torch.uint8)).double() * 256  # u itself, exactly
    assert abs(u.mean().item() - 0.5) < 5 * np.sqrt(1 / 12 / u.numel())
    assert u.min() >= 0 and u.max() < 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_of_either_dtype_keeps_its_dtype(dtype):
    y = dequantize(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.full((1, 1, 2, 2), 0.5, dtype=dtype))
    assert y.dtype == dtype and torch.equal(y, torch.full((1, 1, 2, 2), 0.5 / 256, dtype=dtype))
