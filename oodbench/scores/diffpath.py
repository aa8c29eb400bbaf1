"""`diffpath` (Heng, Thiery & Soh, NeurIPS 2024, "Out-of-distribution detection with a single unconditional
diffusion model"), diffusion models only: how fast, and how unevenly, the model's noise prediction changes
along the deterministic (DDIM) path from the image to noise. An image unlike the training data is carried
along a path of a different rate of change and curvature. The statistics (six sums over the path's noise
predictions eps_i and their finite-difference rate of change N (eps_{i+1} - eps_i), N = `diffpath_steps`
network passes) are computed by `models/diffusion/ood_statistics.py`, which says exactly what each is; a
density fitted on the fit set's statistics scores an image by its negative log-density, larger = more OOD.
The two variants are the authors' two (clear-nus/diffpath @6f92000):

- `dims=1`, DiffPath-1D (eval_1d.py): the one statistic sqrt(sum of (d eps / dt)^2) (`deps_dt_sq_sqrt`),
  a Gaussian kernel density estimate with bandwidth 5 (`KernelDensity(kernel="gaussian", bandwidth=5)`, in
  the statistic's own units, not standardised);
- `dims=6`, DiffPath-6D (eval_6d.py): the six sums (eps, eps^2, eps^3, d eps/dt, (d eps/dt)^2, (d eps/dt)^3,
  in their column order), standardised, and a Gaussian mixture chosen by 10-fold cross-validation over
  covariance types full, tied, diag, spherical and component counts (their grid: 50, 100), max_iter 200
  (scores/densities.py). The fit set here has tens to a few thousand images, not their 50,000, so the grid
  also offers 1, 2, 5, 10 and 20 components (a 50-component mixture cannot be fitted to 45 images);
  cross-validation still chooses, and with a large fit set it can choose theirs.

What differs from the paper: the model is the run's own, trained on the in-distribution images, not one
model (CelebA or ImageNet) for every task; its schedule is the run's continuous-time one, evaluated at
t = i/N where theirs is an improved-diffusion cosine schedule of 4,000 steps respaced to N; and the density
is fitted on the run's validation hold-out (`fit`), not on the whole training split.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from oodbench.schema import DIFFPATH_STATISTICS, diffpath_column
from oodbench.scores.base import Score, fitted_state
from oodbench.scores.densities import gaussian_kde, gaussian_mixture

KDE_BANDWIDTH = 5.0  # eval_1d.py: kde_bandwith = 5
# eval_6d.py's grid: GMM__n_components [50, 100], every covariance type, max_iter 200; smaller counts added here
MIXTURE_COMPONENTS = (1, 2, 5, 10, 20, 50, 100)
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
MIXTURE_MAX_ITER = 200
VARIANTS = (1, 6)


@dataclass(frozen=True)
class DiffPath(Score):
    dims: int = 6  # 1: DiffPath-1D (KDE on one statistic); 6: DiffPath-6D (Gaussian mixture on six)
    density: Any = fitted_state()  # the fitted KernelDensity or Pipeline(StandardScaler, GaussianMixture)
    name = "diffpath"
    paper = "Heng et al., NeurIPS 2024 (DDIM path of the diffusion model; 1D: KDE, 6D: Gaussian mixture)"
    families = ("diffusion",)
    extra_statistics = ("diffpath",)
    missing_hint = ("diffpath needs the statistics of each image's DDIM path to noise, which `oodbench evaluate` "
                    "computes for a diffusion model when the score is asked for (diffpath_steps network passes per "
                    "image); these statistics have none")

    def __post_init__(self) -> None:
        if self.dims not in VARIANTS:
            raise ValueError(f"diffpath's dims is 1 (DiffPath-1D) or 6 (DiffPath-6D), not {self.dims!r}")

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return (diffpath_column("deps_dt_sq"),) if self.dims == 1 else tuple(map(diffpath_column, DIFFPATH_STATISTICS))

    @property
    def short(self) -> str:
        return f"DiffPath-{self.dims}D"

    def features(self, stats: pd.DataFrame) -> np.ndarray:
        """The rows the density is fitted on and scores (n, dims)."""
        values = stats[list(self.needs)].to_numpy(dtype=np.float64)
        return np.sqrt(values) if self.dims == 1 else values  # 1D: deps_dt_sq_sqrt

    def fit(self, train: pd.DataFrame) -> DiffPath:
        features = self.features(train)
        if self.dims == 1:
            density = gaussian_kde(features, bandwidth=KDE_BANDWIDTH)
        else:
            density = gaussian_mixture(features, components=MIXTURE_COMPONENTS, covariance_types=COVARIANCE_TYPES,
                                       max_iter=MIXTURE_MAX_ITER)
        return dataclasses.replace(self, density=density)

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        if self.density is None:
            raise ValueError("diffpath must be fitted on held-out training statistics first")
        return -self.density.score_samples(self.features(stats))
