"""The input perturbation of Ren et al. (NeurIPS 2019, "Likelihood Ratios for Out-of-Distribution
Detection", Section 3.1) that a *background* model is trained on.

Each sub-pixel of an 8-bit image is, independently with probability `rate` (mu; the paper uses
0.1-0.3), replaced by a value drawn uniformly from 0..255. The corruption destroys the semantic
structure of the images but keeps the population-level background statistics the likelihood is
dominated by, so log p_foreground(x) - log p_background(x) cancels those. A replaced value can equal
the original (1 in 256), so the measured fraction of *changed* values is rate x 255/256.
"""

from __future__ import annotations

import torch

from oodbench.units import N_LEVELS


def perturb(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images x with each value replaced, with probability `rate`, by a uniform draw from 0..255."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"perturbation rate {rate} is outside [0, 1]")
    if rate == 0.0:
        return x
    replace = torch.rand(x.shape, generator=generator, device=x.device) < rate
    values = torch.randint(0, N_LEVELS, x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.where(replace, values, x)
