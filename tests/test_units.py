"""Bits/dim: the one formula; and models of known density on [0,1)^D through the dequantization every flow
uses: a uniform model at exactly 8.0 bits/dim (and -inf if any y leaves [0, 1)), and p(y) = prod 2 y_i,
whose bits/dim is hand-computable for given (x, u) and whose mean over uniform u is known in closed form."""

import math

import numpy as np
import torch

from oodbench.data.quantize import index_noise
from oodbench.models.base import DequantizedFlow
from oodbench.units import bits_per_dim


def _inside_unit_cube(y: torch.Tensor) -> torch.Tensor:
    return ((y >= 0) & (y < 1)).flatten(1).all(dim=1)


class UniformOnUnitCube(DequantizedFlow):
    """p(y) = 1 on [0,1)^D and 0 outside: the identity flow with a flat prior on the unit cube. A y
    outside [0, 1) (a bin width of 1/255, noise centred on 0, y rounded up to 1.0) scores -inf."""

    def flow_parts(self, y):
        zeros = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        return {"log_pz": torch.where(_inside_unit_cube(y), zeros, -math.inf), "logdet": zeros}


class ProductOfTwoY(DequantizedFlow):
    """p(y) = prod_i 2 y_i on [0,1)^D (a density: each factor integrates to 1), 0 outside."""

    def flow_parts(self, y):
        log_pz = torch.log(2 * y).flatten(1).sum(dim=1)
        zeros = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        return {"log_pz": torch.where(_inside_unit_cube(y), log_pz, -math.inf), "logdet": zeros}


def test_uniform_model_is_exactly_8_bits_per_dim():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x[:, :, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)  # both ends of the pixel range, in every image
    log_px = UniformOnUnitCube().log_prob(x, index_noise(torch.arange(5), (3, 32, 32), seed=0))
    bpd = bits_per_dim(log_px.double(), 3 * 32 * 32)
    assert torch.allclose(bpd, torch.full((5,), 8.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_uniform_model_is_8_bits_per_dim_where_the_noise_is_largest():
    # Index 12522 (seed 0) draws index_noise's largest value, 1 - 2**-24, at position 80 of a 10x10
    # image; on a pixel of 255, float32 used to round y up to exactly 1.0, outside the cube: -inf.
    x = torch.full((1, 1, 10, 10), 255, dtype=torch.uint8)
    noise = index_noise(torch.tensor([12522]), (1, 10, 10), seed=0)
    assert noise.max().item() == 1 - 2.0**-24
    assert abs(bits_per_dim(UniformOnUnitCube().log_prob(x, noise).double().item(), 100) - 8.0) < 1e-6


def test_a_density_of_2y_gives_the_hand_computed_bits_per_dim():
    """log p(x) = sum_i log(2 (x_i + u_i) / 256) - D ln 256, so
    bits/dim = 8 - (1/D) sum_i log2(2 (x_i + u_i) / 256) = 15 - (1/D) sum_i log2(x_i + u_i).
    A bin width of 1/255 (or 1/257) moves it by log2(256/255) = 0.0056 bits/dim; u - 1/2 or u ignored
    moves it by far more."""
    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    u = torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64).view(1, 1, 1, 3)
    expected = 15 - (math.log2(0.5) + math.log2(127.25) + math.log2(255.75)) / 3  # 10.337...
    bpd = bits_per_dim(ProductOfTwoY().log_prob(x, u).item(), 3)
    assert abs(bpd - expected) < 1e-12


def test_a_density_of_2y_averaged_over_the_index_noise_matches_the_closed_form():
    """Over u ~ U[0, 1): E[ln(x + u)] = (x + 1) ln(x + 1) - x ln x - 1 (with 0 ln 0 = 0), so the mean
    bits/dim over images is 15 - (1/D) sum_x E[log2(x + u)]. Every image holds each pixel value 0..255
    once; 4,096 images of index-seeded noise put the mean within ~1e-4 of it (the x = 0 term dominates:
    sd of log2 u is 1/ln 2). Noise that is not uniform on [0, 1) (a constant 1/2: 0.0017 off) or a bin
    width of 1/257 (0.0056 off) fails."""
    n_images = 4096
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(n_images, 1, 16, 16)
    noise = index_noise(torch.arange(n_images), (1, 16, 16), seed=0).double()
    bpd = bits_per_dim(ProductOfTwoY().log_prob(x, noise), 256)
    levels = np.arange(256, dtype=np.float64)
    x_ln_x = np.where(levels > 0, levels * np.log(np.maximum(levels, 1)), 0.0)
    expected_ln = (levels + 1) * np.log(levels + 1) - x_ln_x - 1
    expected = 15 - float(np.mean(expected_ln)) / math.log(2)
    standard_error = bpd.std().item() / math.sqrt(n_images)
    assert standard_error < 2e-4
    assert abs(bpd.mean().item() - expected) < 5 * standard_error, (bpd.mean().item(), expected)


def test_bits_per_dim_formula():
    assert bits_per_dim(-math.log(2) * 10, 10) == 1.0
    assert np.allclose(bits_per_dim(np.array([-3072 * math.log(256)]), 3072), [8.0])
    # A 28x28 image padded to 32x32 and coded in 1,024 x 8 bits is 8 x 1024 / 784 bits per dimension of its own.
    assert np.allclose(bits_per_dim(np.array([-1024 * math.log(256)]), 784), [8 * 1024 / 784])
