"""Glow's settings, as one frozen dataclass (Kingma & Dhariwal 2018, "Glow: Generative Flow with
Invertible 1x1 Convolutions"; the model of Nalisnick et al. 2019).

The defaults are a CPU-scale Glow (L=3, K=8, 64 hidden channels): on 2 CPU cores a Fashion-MNIST
model (1x32x32) trains at ~350-400 images/s and reaches ~3.4 bits/dim on held-out images in 3 minutes
(K=4/64 hidden and K=8/128 hidden both ended near 3.6 in the same time). `GlowConfig.paper()` gives
the published size (K=32, L=3, 512 hidden).
Nothing here depends on the image size: the same config serves 28x28, 32x32 or 64x64 inputs, as long
as height and width are divisible by 2**levels.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodbench.config import at_least, check_fields, one_of

COUPLINGS = ("affine", "additive")


@dataclass(frozen=True, kw_only=True)
class GlowConfig:
    """Architecture of a multi-scale Glow.

    in_channels: image channels (1 for Fashion-MNIST/MNIST, 3 for CIFAR-10/SVHN).
    levels: L, the number of squeeze -> K steps -> split stages.
    steps: K, flow steps (actnorm -> 1x1 conv -> coupling) per level.
    hidden_channels: width of the coupling networks.
    coupling: "affine" (Glow, non-volume-preserving) or "additive" (CV-Glow, translation only,
        log-det independent of the input; Nalisnick et al. 2019, Section 5).
    learn_top: the top level's prior has a learned per-channel mean and log-scale (else N(0, I)).
    actnorm_scale: the standard deviation actnorm's data-dependent initialisation aims for.
    """

    in_channels: int = at_least(1, 3)
    levels: int = at_least(1, 3)
    steps: int = at_least(1, 8)
    hidden_channels: int = at_least(1, 64)
    coupling: str = one_of(COUPLINGS, "affine")
    learn_top: bool = True
    actnorm_scale: float = at_least(0, 1.0, exclusive=True)

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def paper(cls, **overrides) -> GlowConfig:
        """The published size: K=32 steps, L=3 levels, 512 hidden channels, affine coupling."""
        return cls(**{"levels": 3, "steps": 32, "hidden_channels": 512, **overrides})

    @property
    def affine(self) -> bool:
        return self.coupling == "affine"
