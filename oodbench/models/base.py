"""The one contract every likelihood model honours.

`log_prob_parts(x, noise)` takes uint8 images (B, C, H, W) and returns a dict of per-sample tensors [B]
in nats: always `log_px`, the log-probability of the 8-bit image (discretization term included), and
the named parts the family has (for flows: `log_pz`, the prior term of all levels, and `logdet`, the
total log-determinant, so that log_px = log_pz + logdet + discretization; Glow adds both per level).
These per-sample parts are the statistics the OOD scores are computed from (`oodbench/scores/`).

Continuous models (flows) subclass `DequantizedFlow`: they model y = (x + u)/256 on [0,1)^D and the
base class adds the -D ln 256 discretization term (PAPER.md, "Units"). Models with a discrete
likelihood subclass `LikelihoodModel` directly and ignore `noise`.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn

from oodbench.data.quantize import dequantize, discretization_nats, index_noise


class LikelihoodModel(nn.Module, abc.ABC):
    """A density over 8-bit images. Subclasses set `part_names` to the extra parts they report."""

    part_names: tuple[str, ...] = ()
    # Statistics computed only when a score asks for them, by name (the VAE's "regret"; every family's
    # "gradients", models/gradients.py): costlier than the likelihood, so not part of `log_prob_parts`.
    extra_statistics: tuple[str, ...] = ("gradients",)
    # How log_px relates to the probability of the 8-bit image; reported beside every result.
    discretization: str = "exact discrete likelihood"

    @abc.abstractmethod
    def log_prob_parts(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-sample `log_px` (nats, 8-bit scale) plus the parts named in `part_names`."""

    def log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_prob_parts(x, noise)["log_px"]

    def training_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample objective training maximises (nats); a VAE returns its ELBO here."""
        return self.log_prob(x)

    def validation_log_prob(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The per-sample quantity (nats) the "best" checkpoint is chosen by; a VAE uses its ELBO here."""
        return self.log_prob(x, noise)

    def extra_statistic(self, name: str, x: torch.Tensor, noise: torch.Tensor | None,
                        settings: dict[str, float]) -> dict[str, torch.Tensor]:
        """Per-sample tensors [B] of the optional statistic `name` (one of `extra_statistics`)."""
        if name == "gradients":  # per image, d validation_log_prob / d parameters (models/gradients.py)
            from oodbench.models.gradients import per_image_gradients

            return per_image_gradients(self, x, noise)
        raise ValueError(f"{type(self).__name__} computes no statistic {name!r}")

    def statistic_passes(self, name: str, settings: dict[str, float]) -> str:
        """The network passes per image that the statistic `name` ("likelihood" or one of
        `extra_statistics`) costs, in words, for the cost columns of results (runner/costs.py)."""
        if name == "likelihood":
            return "1 forward"
        if name == "gradients":
            return "1 forward + 1 backward, one image at a time"
        return name

    def eval_noise(self, x: torch.Tensor, index: torch.Tensor, seed: int) -> torch.Tensor | None:
        """The `noise` to score `x` with, a function of (seed, index) only, so that a sample's score
        does not depend on batch size, device or process count. None: the model needs no randomness."""
        return None

    @property
    def bound(self) -> str:
        """Which quantity `log_px` is: "exact", "dequantized", "elbo", "iwae-<k>"."""
        return "exact"


class DequantizedFlow(LikelihoodModel):
    """A normalizing flow on dequantized pixels y in [0,1)^D.

    Subclasses implement `flow_parts(y)`: per-sample tensors [B] in nats, at least `log_pz` (the
    prior's log-density of f(y)) and `logdet` (log|det df/dy|, including any fixed preprocessing), and
    any finer terms whose sums they are (Glow: each level's).
    """

    part_names = ("log_pz", "logdet")
    discretization = "uniform dequantization y=(x+u)/256, one index-seeded draw per sample, minus D ln 256"

    @abc.abstractmethod
    def flow_parts(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"log_pz", "logdet", ...} per sample for y in [0,1)^D."""

    def flow_log_density(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_pz, logdet) per sample for y in [0,1)^D."""
        parts = self.flow_parts(y)
        return parts["log_pz"], parts["logdet"]

    def eval_noise(self, x: torch.Tensor, index: torch.Tensor, seed: int) -> torch.Tensor:
        return index_noise(index, tuple(x.shape[1:]), seed, device=x.device)

    @property
    def bound(self) -> str:
        # E_u[log p(y)] - D ln 256 lower-bounds log P(x); one noise draw estimates it (PAPER.md, "Units").
        return "dequantized"

    def log_prob_parts(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        parts = self.flow_parts(dequantize(x, noise))
        log_px = parts["log_pz"] + parts["logdet"] + discretization_nats(math.prod(x.shape[1:]))
        return {"log_px": log_px, **parts}
