"""`likelihood`: the raw-likelihood OOD score of Bishop (1994) that Nalisnick et al. (ICLR 2019) found
failing: the bits/dim itself. Lower likelihood = more bits = more OOD, so the score is the BPD as is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from oodbench.scores.base import Score


@dataclass(frozen=True)
class Likelihood(Score):
    name = "likelihood"
    paper = "Nalisnick et al., ICLR 2019 (Bishop 1994)"
    needs = ("bpd",)
    fails_as_gate = ("deep generative models give some OOD sets higher likelihood than their own test images "
                     "(Nalisnick et al. 2019: SVHN under a CIFAR-10 model, MNIST under a Fashion-MNIST one)")

    @property
    def short(self) -> str:
        return "BPD"

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return stats["bpd"].to_numpy()
