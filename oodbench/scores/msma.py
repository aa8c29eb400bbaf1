"""`msma` (Mahmood, Oliva & Styner, ICLR 2021, "Multiscale score matching for out-of-distribution
detection"), diffusion models only: the norms of the model's score at the clean image at L noise levels,
||sigma_l s(x, sigma_l)|| = ||eps(alpha_t x, t)||, one network pass per level (`msma_levels`, their 10,
geometric from sigma 1 down to 0.01 on [0, 1] pixels; models/diffusion/ood_statistics.py says how a level
meets the model's time). An in-distribution image sits where the learnt density is high and smooth, so the
score is small at every scale; an OOD image is pulled harder at some scales. The L norms of an image are
one point, and a density fitted on the fit set's points scores an image by its negative log-density,
larger = more OOD.

The density is the authors' Gaussian mixture (ahsanMah/msma @8012441, ood_detection_helper.py `train_gmm`,
the "GMM" rows of their notebooks): the L norms standardised (`StandardScaler`), a `GaussianMixture` with full
covariances and 2, 4, ..., 20 components chosen by 10-fold cross-validation on held-out log-likelihood,
refitted on every fit image (scores/densities.py; counts above a fold's size are dropped). Their two other
auxiliary models (a MADE flow and the distance to the 5th nearest neighbour) are not reproduced.

What differs from the paper: their network is a noise-conditional score network (RefineNet, NCSN) trained on
exactly those L levels; here the score comes from the run's diffusion model, trained on a continuum of
levels and read at the same ten. The mixture is fitted on the run's validation hold-out (`fit`), not on
the whole training split, and its k-means initialisation is seeded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from oodbench.schema import msma_column, msma_columns
from oodbench.scores.base import Score, fitted_state
from oodbench.scores.densities import gaussian_mixture

MIXTURE_COMPONENTS = tuple(range(2, 21, 2))  # train_gmm's components_range=range(2, 21, 2)
COVARIANCE_TYPES = ("full",)  # train_gmm: "Full always performs best"


@dataclass(frozen=True)
class MSMA(Score):
    columns: tuple[str, ...] | None = fitted_state()  # the levels' norm columns, largest noise first
    density: Any = fitted_state()  # Pipeline(StandardScaler, GaussianMixture)
    name = "msma"
    paper = "Mahmood et al., ICLR 2021 (score norms at 10 noise levels; Gaussian mixture)"
    families = ("diffusion",)
    needs = (msma_column(0),)  # the other levels' columns are found by their prefix (schema.msma_columns)
    extra_statistics = ("msma",)
    missing_hint = ("msma needs the norms of each image's score at several noise levels, which `oodbench evaluate` "
                    "computes for a diffusion model when the score is asked for (msma_levels network passes per "
                    "image); these statistics have none")

    @property
    def short(self) -> str:
        return "MSMA"

    def fit(self, train: pd.DataFrame) -> MSMA:
        columns = tuple(msma_columns(list(train.columns)))
        density = gaussian_mixture(train[list(columns)].to_numpy(dtype=np.float64), components=MIXTURE_COMPONENTS,
                                   covariance_types=COVARIANCE_TYPES)
        return dataclasses.replace(self, columns=columns, density=density)

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        if self.density is None or self.columns is None:
            raise ValueError("msma must be fitted on held-out training statistics first")
        return -self.density.score_samples(stats[list(self.columns)].to_numpy(dtype=np.float64))
