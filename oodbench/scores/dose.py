"""`dose` (Morningstar et al., AISTATS 2021, "Density of States Estimation for Out-of-Distribution
Detection"): a model's summary statistics of an image (Glow: the prior term and the log-determinant of
each level, and bits/dim; the VAE: ELBO, KL, reconstruction term, IWAE as bits/dim; PixelCNN++:
bits/dim) are themselves modelled: fit one density per statistic on held-out training images and
score an image by the negative sum of the log-densities of its statistics,

    score(x) = - sum_s log KDE_s(T_s(x)),

the paper's "KDE-sum" variant (each statistic's density on its own; not the one-class SVM or the joint
KDE). Each KDE is a Gaussian kernel density with Scott's rule for the bandwidth (scipy's
`gaussian_kde` default): n^(-1/5) times the statistic's standard deviation. A statistic that is the
same for every fit image (CV-Glow's log-determinant, constant by construction) carries no information
and is left out, and so are statistics of other runs and those computed only on request (schema.py).
Where a family gives per-level terms, their totals (sums of them) are left out too,
so no term counts twice. Larger = a less typical combination of statistics = more OOD.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import gaussian_kde

from oodbench.scores.base import Score, fitted_state
from oodbench.schema import COST_PREFIXES, JOINED_PREFIXES, MODEL_FREE_STATISTICS, OPTIONAL_PREFIXES, OPTIONAL_STATISTICS

_LEVEL = re.compile(r"^(?P<total>.+)_level\d+$")


def summary_statistics(columns: list[str]) -> list[str]:
    """The model statistics DoSE models: bits/dim and the family's parts, per-level terms instead of totals."""
    model = [c for c in columns if c not in ("index", "log_px", *MODEL_FREE_STATISTICS, *OPTIONAL_STATISTICS)
             and not c.startswith(JOINED_PREFIXES + COST_PREFIXES + OPTIONAL_PREFIXES)]
    totals = {match.group("total") for c in model if (match := _LEVEL.match(c))}
    return [c for c in model if c not in totals]


@dataclass(frozen=True)
class DoSE(Score):
    statistics: tuple[str, ...] | None = fitted_state()
    densities: tuple[gaussian_kde, ...] | None = fitted_state()
    name = "dose"
    paper = "Morningstar et al., AISTATS 2021 (KDE-sum)"
    needs = ("bpd",)

    @property
    def short(self) -> str:
        return "DoSE"

    def fit(self, train: pd.DataFrame) -> DoSE:
        chosen = [c for c in summary_statistics(list(train.columns)) if np.ptp(train[c].to_numpy()) > 0]
        densities = tuple(gaussian_kde(train[c].to_numpy(dtype=np.float64), bw_method="scott") for c in chosen)
        return dataclasses.replace(self, statistics=tuple(chosen), densities=densities)

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        if self.densities is None or self.statistics is None:
            raise ValueError("dose must be fitted on held-out training statistics first")
        log_density = sum(kde.logpdf(stats[c].to_numpy(dtype=np.float64))
                          for c, kde in zip(self.statistics, self.densities, strict=True))
        return -np.asarray(log_density)
