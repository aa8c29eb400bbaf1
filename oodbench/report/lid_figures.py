"""The report's likelihood-LID scatter of one evaluation (Kamkari et al., ICML 2024, their Figures 1 and 5; the
authors' `visualize_scatterplot` in dgm_geometry's ood_guide.ipynb): each in-distribution test and OOD image with
an LID (the subsample, EvalConfig.lid_fraction) at (log-likelihood, LID), read from scores.csv. The dual
threshold accepts the upper right; the title gives the authors' envelope AUROC over every pair of thresholds on
these images (`scores/dual_threshold.envelope_auroc`) beside the likelihood's own AUROC on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from oodbench.data.refs import display_name
from oodbench.errors import OodbenchError
from oodbench.metrics import ood_metrics
from oodbench.report.figures import COLOURS, _run_title, layout, plt, save_figure
from oodbench.schema import SET_ROLES
from oodbench.scores.dual_threshold import envelope_auroc

SETS = ("in_test", "out_test")  # the compared sets (the fit set has LIDs too, but is not compared)


def lid_scatter(scores_csv: Path, out_png: Path, *, row: dict[str, Any]) -> Path | None:
    """The scatter of one evaluation (its likelihood results row), or None when its scores.csv has no LID of
    both compared sets (the dual threshold was not evaluated, or lid_fraction was not set)."""
    try:
        if "lid" not in pd.read_csv(scores_csv, nrows=0).columns:
            return None
        scores = pd.read_csv(scores_csv, usecols=["set", "dataset", "split", "log_px", "lid"])
    except (OSError, ValueError):
        raise OodbenchError(f"{scores_csv} is missing or unreadable; re-run `oodbench evaluate` for it") from None
    scores = scores[scores["set"].isin(SETS) & np.isfinite(scores["lid"])]
    if not all((scores["set"] == name).any() for name in SETS):
        return None
    return save_figure(scatter_figure(scores, row, _delta(scores_csv.parent / "config.yaml")), out_png)


def _delta(config_yaml: Path) -> float | None:
    """The evaluation's lid_delta, from the config.yaml beside its scores.csv (None if unreadable)."""
    try:
        return float(yaml.safe_load(config_yaml.read_text())["eval"]["lid_delta"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def scatter_figure(scores: pd.DataFrame, row: dict[str, Any], delta: float | None = None) -> plt.Figure:
    """log-likelihood (nats) against LID, in-test and OOD; columns set, dataset, split, log_px, lid."""
    inside, outside = (scores[scores["set"] == name] for name in SETS)
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for name, subset in zip(SETS, (inside, outside), strict=True):
        label = (f"{display_name(subset['dataset'].iloc[0])} {subset['split'].iloc[0]} ({SET_ROLES[name]}, "
                 f"n={len(subset):,})")
        ax.scatter(subset["log_px"], subset["lid"], s=12, alpha=0.6, color=COLOURS[name], label=label)
    envelope = envelope_auroc(inside["log_px"].to_numpy(), inside["lid"].to_numpy(), outside["log_px"].to_numpy(),
                              outside["lid"].to_numpy())
    alone = ood_metrics(-inside["log_px"].to_numpy(), -outside["log_px"].to_numpy()).auroc
    ax.set_xlabel("log-likelihood log p(x) (nats)")
    ax.set_ylabel("LID (singular values above e^delta)" if delta is None else f"LID (singular values above e^{delta:g})")
    ax.set_title(f"{_run_title(row)}\ndual-threshold envelope AUROC {envelope:.3f}, likelihood alone {alone:.3f} "
                 "(Kamkari et al.'s protocol, these images)", fontsize=9)
    ax.legend(fontsize=8)
    return layout(fig)
