"""`typicality` (Nalisnick, Matsukawa, Teh & Lakshminarayanan 2019, "Detecting out-of-distribution inputs
to deep generative models using typicality", arXiv 1906.02994): is a *batch* of M test images typical
of the training distribution?

    score(batch) = | mean bits/dim of the batch - mean bits/dim of held-out training images |

(bits/dim is log p scaled by a constant, so this is their log-likelihood statistic). The test rejects
a batch as OOD when its score exceeds epsilon, the 99% quantile of the same statistic over bootstrap
batches of M held-out training images (`threshold`; alpha = 0.01, 1,000 resamples). A test set of n
images gives floor(n / M) batches, drawn without replacement in a seeded order; M = 1 is a
per-sample score (the distance of an image's bits/dim from the typical set's). Larger = more OOD:
unlike the raw likelihood, a batch that is *too* likely is flagged too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oodbench.scores.base import Score, fitted_state

BATCH_SIZES = (1, 2, 5, 10, 25)  # the M the results show, to see detection approach perfect as M grows
ALPHA = 0.01
BOOTSTRAP_RESAMPLES = 1000


def batch_means(values: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """Means of floor(n / batch) disjoint batches of `values`, in a seeded random order; for batch = 1,
    `values` in their own order (a per-sample score must stay beside its image in scores.csv and the gate)."""
    n_batches = len(values) // batch
    if n_batches == 0:
        raise ValueError(f"a set of {len(values)} images has no batch of {batch}")
    if batch == 1:
        return values.astype(np.float64, copy=True)
    order = np.random.default_rng(seed).permutation(len(values))
    return values[order[:n_batches * batch]].reshape(n_batches, batch).mean(axis=1)


@dataclass(frozen=True)
class Typicality(Score):
    batch: int = 1
    seed: int = 0
    train_mean: float | None = fitted_state()
    threshold: float | None = fitted_state()
    name = "typicality"
    paper = "Nalisnick et al. 2019, arXiv 1906.02994"
    needs = ("bpd",)

    @property
    def short(self) -> str:
        return f"typ M={self.batch}"

    @property
    def per_sample(self) -> bool:  # type: ignore[override]
        return self.batch == 1

    def fit(self, train: pd.DataFrame) -> Typicality:
        bpd = train["bpd"].to_numpy()
        mean = float(bpd.mean())
        rng = np.random.default_rng(self.seed)
        resampled = rng.choice(bpd, size=(BOOTSTRAP_RESAMPLES, self.batch), replace=True).mean(axis=1)
        epsilon = float(np.quantile(np.abs(resampled - mean), 1 - ALPHA))
        return dataclasses.replace(self, train_mean=mean, threshold=epsilon)

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        if self.train_mean is None:
            raise ValueError("typicality must be fitted on held-out training statistics first")
        return np.abs(batch_means(stats["bpd"].to_numpy(), self.batch, self.seed) - self.train_mean)
