"""`likelihood_regret` (Xiao, Yan & Amit, NeurIPS 2020, "Likelihood Regret: An Out-of-Distribution
Detection Score for Variational Auto-encoder"), VAE only: how much an image's ELBO rises when its
posterior is refitted to that image alone,

    regret(x) = ELBO(x; refitted posterior) - ELBO(x; the encoder's q(z|x))   (nats, >= 0).

An encoder trained on in-distribution images already gives them a near-optimal posterior; for OOD
images a per-image refit gains more. Larger = more OOD. The refit is the fast batched variant: each
image's posterior mean and log-std are optimised directly (not the encoder's weights, as the paper
does at batch size 1); `models/vae/regret.py` computes it and says exactly what it optimises; it is a
statistic computed only when this score is asked for. Published: Fashion-MNIST -> MNIST AUROC 0.988,
CIFAR-10 -> SVHN 0.875 (Xiao et al., Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from oodbench.scores.base import Score


@dataclass(frozen=True)
class LikelihoodRegret(Score):
    # What the refit optimised, so that every results row says it (`score_params` "refit=posterior"):
    # each image's posterior mean and log-std, not the encoder's weights (the paper's variant).
    refit: str = "posterior"
    name = "likelihood_regret"
    paper = "Xiao et al., NeurIPS 2020 (posterior refit, batched)"
    families = ("vae",)
    needs = ("regret",)
    extra_statistics = ("regret",)

    @property
    def short(self) -> str:
        return "regret"

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return stats["regret"].to_numpy()
