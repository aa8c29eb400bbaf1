"""Bits/dim: the one formula, and a uniform model at exactly 8.0 bits/dim."""

import math

import numpy as np
import torch

from oodbench.data.quantize import index_noise
from oodbench.models.base import DequantizedFlow
from oodbench.scores import bits_per_dim, likelihood_score


class UniformOnUnitCube(DequantizedFlow):
    """p(y) = 1 on [0,1)^D: the identity flow with a flat prior."""

    def flow_log_density(self, y):
        zeros = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        return zeros, zeros


def test_uniform_model_is_exactly_8_bits_per_dim():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    log_px = UniformOnUnitCube().log_prob(x, index_noise(torch.arange(5), (3, 32, 32), seed=0))
    bpd = bits_per_dim(log_px.double(), 3 * 32 * 32)
    assert torch.allclose(bpd, torch.full((5,), 8.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_bits_per_dim_formula():
    assert bits_per_dim(-math.log(2) * 10, 10) == 1.0
    assert np.allclose(bits_per_dim(np.array([-3072 * math.log(256)]), 3072), [8.0])


def test_likelihood_score_is_larger_for_less_likely():
    bpd = np.array([2.0, 3.5])
    assert np.array_equal(likelihood_score(bpd), bpd)
    assert likelihood_score(bpd) is not bpd
