"""Across seeds: the mean and a 95% bootstrap interval of every metric (`summary.csv`).

One row per setup (model, datasets and splits, every setting but the seed: `setup`) and score; for
each metric M the columns M_mean, M_lo and M_hi. The interval is scipy's percentile bootstrap over the
seeds; with a single seed there is no spread to resample, so lo and hi are left empty rather than
pretending to a zero-width interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap

from oodbench.schema import ood_gets_lower_bpd

SUMMARY_KEYS = ("model", "in_dataset", "in_split", "out_dataset", "out_split", "pair", "setup", "score",
                "score_params", "short", "bound")
SUMMARY_METRICS = ("bpd_in_train_mean", "bpd_in_test_mean", "bpd_out_test_mean", "auroc", "aupr_in", "aupr_out",
                   "fpr_at_95_tpr", "fpr_at_80_tpr", "n_params", "n_train", "epochs")
N_RESAMPLES = 2000


def mean_interval(values: np.ndarray, *, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) with a 95% percentile-bootstrap interval of the mean; lo/hi NaN for one value."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2 or np.all(values == values[0]):
        return mean, (mean if values.size > 1 else np.nan), (mean if values.size > 1 else np.nan)
    result = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=N_RESAMPLES, method="percentile",
                       random_state=np.random.default_rng(seed))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for keys, group in results.groupby(list(SUMMARY_KEYS), sort=False):
        row = dict(zip(SUMMARY_KEYS, keys, strict=True))
        row["n_seeds"] = int(group["seed"].nunique())
        for metric in SUMMARY_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"] = mean_interval(group[metric].to_numpy())
        row["ood_lower_bpd"] = ood_gets_lower_bpd(row["bpd_in_test_mean_mean"], row["bpd_out_test_mean_mean"])
        rows.append(row)
    return pd.DataFrame(rows)
