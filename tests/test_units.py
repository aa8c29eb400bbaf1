"""Bits/dim: the one formula, and a uniform model at exactly 8.0 bits/dim."""

import math

import numpy as np
import torch

from oodbench.data.quantize import index_noise
from oodbench.models.base import DequantizedFlow
from oodbench.units import bits_per_dim


class UniformOnUnitCube(DequantizedFlow):
    """p(y) = 1 on [0,1)^D: the identity flow with a flat prior."""

    def flow_parts(self, y):
        zeros = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        return {"log_pz": zeros, "logdet": zeros}


def test_uniform_model_is_exactly_8_bits_per_dim():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    log_px = UniformOnUnitCube().log_prob(x, index_noise(torch.arange(5), (3, 32, 32), seed=0))
    bpd = bits_per_dim(log_px.double(), 3 * 32 * 32)
    assert torch.allclose(bpd, torch.full((5,), 8.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_bits_per_dim_formula():
    assert bits_per_dim(-math.log(2) * 10, 10) == 1.0
    assert np.allclose(bits_per_dim(np.array([-3072 * math.log(256)]), 3072), [8.0])
    # A 28x28 image padded to 32x32 and coded in 1,024 x 8 bits is 8 x 1024 / 784 bits per dimension of its own.
    assert np.allclose(bits_per_dim(np.array([-1024 * math.log(256)]), 784), [8 * 1024 / 784])
