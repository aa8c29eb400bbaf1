"""The background model's input perturbation (Ren et al. 2019): its rate measured on a batch, and
seeded draws."""

from __future__ import annotations

import pytest
import torch

from oodbench.data.perturb import perturb


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3])
def test_the_rate_is_measured_on_a_batch(rate):
    x = torch.full((64, 3, 32, 32), 17, dtype=torch.uint8)
    out = perturb(x, rate, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = (out != x).double().mean().item()
    # A replaced value equals the original with probability 1/256; 196,608 values: sd ~0.001.
    assert changed == pytest.approx(rate * 255 / 256, abs=0.005)
    replaced = out[out != x]
    assert replaced.min() >= 0 and replaced.max() <= 255
    # the replacements are uniform over 0..255: mean 127.5 (excluding the original's value)
    assert replaced.double().mean().item() == pytest.approx(127.5, abs=2.0)


def test_draws_are_seeded_and_differ_between_seeds():
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a = perturb(x, 0.2, torch.Generator().manual_seed(5))
    assert torch.equal(a, perturb(x, 0.2, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, perturb(x, 0.2, torch.Generator().manual_seed(6)))
    assert torch.equal(perturb(x, 0.0), x)
    with pytest.raises(ValueError, match="outside"):
        perturb(x, 1.5)
