"""Scores of an ensemble of independently trained models (the runs of one setup with different seeds),
from the members' log p(x) of the same images (`companions.py`):

- `ensemble_likelihood`: the ensemble's density, log of the mean of the members' p(x),
      log p_ens(x) = logmeanexp_m log p_m(x),
  in bits/dim (OOD score = -log p_ens / (D ln 2), larger = more OOD). Nalisnick et al. (ICLR 2019,
  Section 3) found that an ensemble of Glows assigns SVHN a higher likelihood just like one model.
- `waic` (Choi & Jang 2018, "WAIC, but Why? Generative Ensembles for Robust Anomaly Detection"):
      WAIC(x) = E_m[log p_m(x)] - Var_m[log p_m(x)]
  in nats, the variance over the members with divisor M (the members as the distribution of models);
  OOD score = -WAIC: the members disagree more on inputs unlike their training data.
Nothing is fitted. D is the frame's `attrs["bpd_dims"]` (runner/statistics.py sets it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from oodbench.scores.base import Score
from oodbench.scores.companions import member_columns
from oodbench.units import bits_per_dim

MIN_MEMBERS = 2


def member_log_px(stats: pd.DataFrame) -> np.ndarray:
    """(images, members) log p in nats."""
    return stats[member_columns(stats.columns)].to_numpy(dtype=np.float64)


def log_mean_exp(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """log (1/M) sum_m exp(values[..., m]), without overflow."""
    return logsumexp(values, axis=axis) - np.log(values.shape[axis])


def waic(log_px: np.ndarray) -> np.ndarray:
    """Mean minus variance (divisor M) over the members (last axis) of log p."""
    return log_px.mean(axis=-1) - log_px.var(axis=-1)


class _EnsembleScore(Score):
    needs_companions = True
    missing_hint = ("{name} needs an ensemble: 2 or more runs of the same setup with different seeds (pass "
                    "--member-run DIR for each other seed; a sweep whose profile lists several seeds does it)")

    def missing(self, columns: set[str]) -> list[str]:
        found = len(member_columns(columns))
        return [] if found >= MIN_MEMBERS else [f"member_log_px_{i}" for i in range(found, MIN_MEMBERS)]

    def unusable(self, family: str, columns: set[str]) -> str | None:
        reason = super().unusable(family, columns)
        return reason.format(name=self.name) if reason else None


@dataclass(frozen=True)
class EnsembleLikelihood(_EnsembleScore):
    name = "ensemble_likelihood"
    paper = "Nalisnick et al., ICLR 2019 (ensembles of Glows)"

    @property
    def short(self) -> str:
        return "ens BPD"

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return bits_per_dim(log_mean_exp(member_log_px(stats)), stats.attrs["bpd_dims"])


@dataclass(frozen=True)
class WAIC(_EnsembleScore):
    name = "waic"
    paper = "Choi & Jang 2018"

    @property
    def short(self) -> str:
        return "WAIC"

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return -waic(member_log_px(stats))
