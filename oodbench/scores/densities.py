"""Densities fitted to the fit set's feature vectors, for the scores that model several statistics of an
in-distribution image jointly (scores/diffpath.py, scores/msma.py): scikit-learn's, set up as the authors'
code sets them up, with the randomness pinned so that a score does not change between runs.

- `gaussian_mixture`: a Gaussian mixture on standardised features (a `StandardScaler` then a
  `GaussianMixture` in one `Pipeline`), its number of components and covariance type chosen by
  `GridSearchCV` with K-fold cross-validation on the held-out folds' mean log-likelihood (the pipeline's own
  `score`), then refitted on every fit image. This is both DiffPath-6D's (clear-nus/diffpath eval_6d.py) and
  MSMA's (ahsanMah/msma ood_detection_helper.py `train_gmm`) recipe, with 10 folds; only their grids
  differ. A mixture cannot have more components than the images it is fitted on: candidates above the
  smallest training fold are dropped (the grids were written for 50,000 training images; the fit set here
  may be 50), and if none is left, the largest possible count is tried instead.
- `gaussian_kde`: scikit-learn's `KernelDensity` with a Gaussian kernel and a fixed bandwidth (DiffPath-1D).

Both return the fitted estimator; its `score_samples` is the log-density of each row (larger =
more in-distribution; the scores negate it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

FOLDS = 10  # both authors' GridSearchCV(cv=10)
SEED = 0  # the mixtures' k-means initialisation (the authors' is unseeded)


def gaussian_mixture(features: np.ndarray, *, components: Iterable[int], covariance_types: Iterable[str],
                     max_iter: int = 100, folds: int = FOLDS, seed: int = SEED) -> Pipeline:
    """Scaler + Gaussian mixture fitted to `features` (n, d), the component count and covariance type chosen
    by `folds`-fold cross-validation from the grid (module docstring)."""
    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    if n < folds:
        raise ValueError(f"a Gaussian mixture chosen by {folds}-fold cross-validation needs at least {folds} fit "
                         f"images; the fit set has {n}")
    smallest_fold = n - math.ceil(n / folds)  # KFold's smallest training part
    counts = sorted({k for k in components if k <= smallest_fold}) or [smallest_fold]
    pipeline = Pipeline([("scaler", StandardScaler()),
                         ("gmm", GaussianMixture(max_iter=max_iter, random_state=seed))])
    grid = GridSearchCV(pipeline, {"gmm__n_components": counts, "gmm__covariance_type": list(covariance_types)},
                        cv=folds)
    # One BLAS/OpenMP thread: the matrices are tiny (a few hundred rows, <= 10 columns), and with 2 threads on
    # a loaded 2-core machine the 100 fits of MSMA's grid took 20 s instead of 1.6 s (measured).
    with warnings.catch_warnings(), threadpool_limits(1):
        # a mixture stopped at max_iter is still a density: the authors' runs keep it too
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(features)
    return grid.best_estimator_


def gaussian_kde(values: np.ndarray, *, bandwidth: float) -> KernelDensity:
    """A Gaussian kernel density estimate of `values` (n, d) with a fixed `bandwidth`."""
    return KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(np.asarray(values, dtype=np.float64))
