"""`likelihood_ratio` (Ren et al., NeurIPS 2019, "Likelihood Ratios for Out-of-Distribution Detection"):

    LLR(x) = log p_foreground(x) - log p_background(x),

where the background model is the same family trained on the same images perturbed so that their
semantic content is destroyed (`data/perturb.py`; `oodbench train --background 0.2`). Both models
explain the population-level background statistics that dominate the likelihood (the fraction of
zeros, the smoothness), so the ratio keeps what the foreground learnt of the semantics. OOD score =
-LLR, here in bits/dim: bpd_foreground(x) - bpd_background(x) = -LLR(x) / (D ln 2), a constant
multiple, so the AUROC is that of -LLR. Nothing is fitted; no model is loaded: the background's
statistics of the same images are joined on first (`companions.py`).
Published: Fashion-MNIST -> MNIST with PixelCNN++ AUROC 0.994 (likelihood 0.089), Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from oodbench.scores.base import Score
from oodbench.scores.companions import BACKGROUND


@dataclass(frozen=True)
class LikelihoodRatio(Score):
    name = "likelihood_ratio"
    paper = "Ren et al., NeurIPS 2019"
    needs = ("bpd", BACKGROUND + "bpd")
    needs_companions = True
    missing_hint = ("likelihood_ratio needs a background model of the same family and data: train one with "
                    "`oodbench train ... --background 0.2` and pass it with --background-run (sweeps do both)")

    @property
    def short(self) -> str:
        return "LLR"

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return stats["bpd"].to_numpy() - stats[BACKGROUND + "bpd"].to_numpy()
