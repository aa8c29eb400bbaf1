"""Gradient scores: how hard an image pulls on the trained model's parameters. An in-distribution image
is one the model has already learnt from, so the gradient of its log p(x) is small; an OOD image's is
larger or differently spread over the layers. All three read the per-image gradient statistic
(`models/gradients.py`, computed only when one of them is asked for): per layer l (one parameter tensor
of n_l entries) the squared norm ||g_l(x)||^2 of g(x) = d log p(x) / d theta, and the whole norm ||g(x)||.

- `score_statistic` (Bergamin, Mattei, Havtorn, Senetaire, Schmutz, Maaloe, Hauberg & Frellsen, AISTATS
  2022, "Model-agnostic out-of-distribution detection using combined statistical tests"): Rao's score
  test, S(x) = || F^(-1/2) g(x) || with F the diagonal of the Fisher information. Their code
  (federicobergamin/model-agnostic-ood, pixelcnn++/ and flows/compute_statistics.py) estimates each
  parameter's F_j as the mean of g_j^2 over training images, adds 1e-8, and takes
  norm(sqrt(1 / F) * g). Per-parameter diagonals are not kept here (only per-layer norms are), so F is
  constant within a layer, F_l = mean over the fit set of ||g_l||^2 / n_l, and
      S(x)^2 = sum_l ||g_l(x)||^2 / (F_l + 1e-8)                     (fisher="layer")
  which is theirs wherever a layer's entries carry equal Fisher information. fisher="identity" is the
  plain gradient norm S(x) = ||g(x)||. Larger = more OOD: their p-value, 1 - ECDF(S), falls as S rises,
  so S ranks images as it does (up to its ties).
- `fisher_combined` (Bergamin et al.): the score test and the typicality test of one image combined by
  Fisher's method, as their code does it: T(x) = |log p(x) - mean log p|, one-sided empirical p-values
  p_T = 1 - ECDF(T(x)), p_S = 1 - ECDF(S(x)) (statsmodels' ECDF: the share of reference values <= the
  value), and
      score(x) = -2 (log(p_T + 1e-8) + log(p_S + 1e-8)),
  S with the per-layer Fisher above. They estimate the mean and F on training images and the ECDFs on a
  held-out split; here all four come from the fit set (the run's validation hold-out). Larger = more OOD.
- `layer_gradients` (Dauncey, Holmes, Williams & Falck, TMLR 2024, "Approximations to the Fisher
  information metric of deep generative models for out-of-distribution detection"): the features are
  log ||g_l(x)||^2, one per layer; a Gaussian is fitted to each on the fit set (mean, standard deviation
  with n - 1), the layers independent, and
      score(x) = - sum_l log N(log ||g_l(x)||^2; mu_l, sigma_l).
  Their code (SamD770/Generative-Models-Knowledge, anomaly_methods/gradients/L2_norms/__init__.py,
  `DiagonalGaussianL2Norm`, the "gradients_L2_norms_gaussian" of their tables): the same, a layer whose
  squared norm is the same for every fit image left out, their score the log-density (larger =
  in-distribution), ours its negative. No hyperparameters.

The scale of log p(x) does not matter to any of them (nats or bits/dim): a constant factor on g shifts
every log-norm by one constant and scales S, which the fitted Gaussians, F and the ECDFs absorb.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from oodbench.scores.base import Score, fitted_state
from oodbench.schema import gradient_columns

STATISTIC = "gradients"  # the optional statistic these read (models/gradients.py)
GRADIENT_NORM = "grad_norm"
# Bergamin et al.'s code: 1e-8 added to each Fisher diagonal entry and to each p-value inside the log.
FISHER_FLOOR = 1e-8
P_FLOOR = 1e-8
# A squared norm of exactly 0 has no logarithm; Dauncey et al.'s code turns log 0 into the most negative
# float. Floored here at the smallest normal float64 instead, so the score stays finite (and very large).
TINY = np.finfo(np.float64).tiny


def upper_tail(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1 - ECDF_reference(values): for each value, the share of `reference` strictly above it."""
    ordered = np.sort(np.asarray(reference, dtype=np.float64))
    return 1.0 - np.searchsorted(ordered, np.asarray(values, dtype=np.float64), side="right") / len(ordered)


def fisher_method(*p_values: np.ndarray) -> np.ndarray:
    """Fisher's combination -2 sum_k log(p_k + 1e-8) of independent tests' p-values (larger = more OOD)."""
    return -2.0 * sum(np.log(np.asarray(p, dtype=np.float64) + P_FLOOR) for p in p_values)


def _layers(frame: pd.DataFrame) -> dict[str, int]:
    layers = gradient_columns(list(frame.columns))
    if not layers:
        raise ValueError("these statistics have no per-layer gradient columns (grad_sq:...)")
    return layers


@dataclass(frozen=True)
class _GradientScore(Score):
    """What the gradient scores share: the statistic they need and the message when it is missing."""

    needs = (GRADIENT_NORM,)
    extra_statistics = (STATISTIC,)
    missing_hint = ("the gradient scores need the per-image gradients of log p(x), which `oodbench evaluate` "
                    "computes when one of them is asked for; these statistics have none")


@dataclass(frozen=True)
class ScoreStatistic(_GradientScore):
    fisher: str = "layer"  # "layer": Bergamin et al.'s diagonal Fisher, constant per layer; "identity": ||g||
    layers: tuple[str, ...] | None = fitted_state()
    inverse_fisher: np.ndarray | None = fitted_state()  # 1 / (F_l + 1e-8), per layer
    name = "score_statistic"
    paper = "Bergamin et al., AISTATS 2022 (Rao's score test; Fisher diagonal per layer)"

    def __post_init__(self) -> None:
        if self.fisher not in ("layer", "identity"):
            raise ValueError(f"score_statistic's fisher is 'layer' or 'identity', not {self.fisher!r}")

    @property
    def short(self) -> str:
        return "score test" if self.fisher == "layer" else "grad norm"

    def fit(self, train: pd.DataFrame) -> ScoreStatistic:
        if self.fisher == "identity":
            return self
        layers = _layers(train)
        per_entry = np.array([train[column].to_numpy(dtype=np.float64).mean() / entries
                              for column, entries in layers.items()])
        return dataclasses.replace(self, layers=tuple(layers), inverse_fisher=1.0 / (per_entry + FISHER_FLOOR))

    def statistic(self, stats: pd.DataFrame) -> np.ndarray:
        """S(x) per image."""
        if self.fisher == "identity":
            return stats[GRADIENT_NORM].to_numpy(dtype=np.float64)
        if self.layers is None or self.inverse_fisher is None:
            raise ValueError("score_statistic must be fitted on held-out training statistics first")
        return np.sqrt(stats[list(self.layers)].to_numpy(dtype=np.float64) @ self.inverse_fisher)

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return self.statistic(stats)


@dataclass(frozen=True)
class FisherCombined(_GradientScore):
    test: ScoreStatistic | None = fitted_state()
    mean_log_px: float | None = fitted_state()
    fit_typicality: np.ndarray | None = fitted_state()  # T on the fit set, the reference of its ECDF
    fit_statistic: np.ndarray | None = fitted_state()  # S on the fit set
    name = "fisher_combined"
    paper = "Bergamin et al., AISTATS 2022 (score test + typicality test, Fisher's method)"
    needs = ("log_px", GRADIENT_NORM)

    @property
    def short(self) -> str:
        return "score+typ"

    def fit(self, train: pd.DataFrame) -> FisherCombined:
        test = ScoreStatistic("layer").fit(train)
        mean = float(train["log_px"].to_numpy(dtype=np.float64).mean())
        return dataclasses.replace(self, test=test, mean_log_px=mean, fit_statistic=test.statistic(train),
                                   fit_typicality=np.abs(train["log_px"].to_numpy(dtype=np.float64) - mean))

    def p_values(self, stats: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(p_T, p_S) per image: the typicality test's and the score test's empirical p-values."""
        if self.test is None or self.mean_log_px is None:
            raise ValueError("fisher_combined must be fitted on held-out training statistics first")
        typicality = np.abs(stats["log_px"].to_numpy(dtype=np.float64) - self.mean_log_px)
        return upper_tail(self.fit_typicality, typicality), upper_tail(self.fit_statistic, self.test.statistic(stats))

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return fisher_method(*self.p_values(stats))


@dataclass(frozen=True)
class LayerGradients(_GradientScore):
    layers: tuple[str, ...] | None = fitted_state()
    mean: np.ndarray | None = fitted_state()  # of log ||g_l||^2 over the fit set, per layer
    std: np.ndarray | None = fitted_state()
    name = "layer_gradients"
    paper = "Dauncey et al., TMLR 2024 (Gaussian per layer on log squared gradient norms)"

    @property
    def short(self) -> str:
        return "layer grads"

    def fit(self, train: pd.DataFrame) -> LayerGradients:
        if len(train) < 2:
            raise ValueError("layer_gradients needs at least 2 fit images to fit a standard deviation")
        # Dauncey et al.'s zero_keys: a layer whose squared norm does not vary tells nothing.
        layers = tuple(column for column in _layers(train) if np.std(train[column].to_numpy(dtype=np.float64)) > 0)
        if not layers:
            raise ValueError("layer_gradients: no layer's gradient norm varies over the fit images")
        logs = _log_norms(train, layers)
        return dataclasses.replace(self, layers=layers, mean=logs.mean(axis=0), std=logs.std(axis=0, ddof=1))

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        if self.layers is None or self.mean is None or self.std is None:
            raise ValueError("layer_gradients must be fitted on held-out training statistics first")
        return -norm.logpdf(_log_norms(stats, self.layers), loc=self.mean, scale=self.std).sum(axis=1)


def _log_norms(stats: pd.DataFrame, layers: tuple[str, ...]) -> np.ndarray:
    return np.log(np.maximum(stats[list(layers)].to_numpy(dtype=np.float64), TINY))
