"""Histograms of per-sample bits/dim in the style of Nalisnick et al. (2019), Figure 1:
in-distribution train, in-distribution test and OOD test on one axis, each named by its dataset,
split, role and number of images, under a title naming the model, the pair and the AUROC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from oodbench.atomic import write_with  # noqa: E402
from oodbench.errors import OodbenchError  # noqa: E402
from oodbench.schema import SET_ROLES  # noqa: E402

# The paper's three sets (Figure 1); the validation hold-out, which fitted scores are fitted on, is left out.
COLOURS = {"in_train": "#1f77b4", "in_test": "#2ca02c", "out_test": "#d62728"}


def bpd_histogram(scores_csv: Path, out_png: Path, *, row: dict[str, Any]) -> Path:
    """The figure of one results row (`schema.RESULT_COLUMNS`), from that evaluation's scores.csv."""
    try:
        scores = pd.read_csv(scores_csv, usecols=["set", "dataset", "split", "bpd"])
    except (OSError, ValueError):
        raise OodbenchError(f"{scores_csv} is missing or unreadable; re-run `oodbench evaluate` for it") from None
    fig = histogram_figure(scores, row)
    write_with(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out_png


def histogram_figure(scores: pd.DataFrame, row: dict[str, Any]) -> plt.Figure:
    """The histograms of one evaluation's scores (columns set, dataset, split, bpd) and its results row."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    bins = np.histogram_bin_edges(scores.loc[scores["set"].isin(list(COLOURS)), "bpd"], bins=60)
    for name in COLOURS:
        subset = scores[scores["set"] == name]
        if len(subset):
            label = f"{subset['dataset'].iloc[0]} {subset['split'].iloc[0]} ({SET_ROLES[name]}, n={len(subset):,})"
            ax.hist(subset["bpd"], bins=bins, density=True, alpha=0.45, color=COLOURS[name], label=label)
    ax.set_xlabel("bits per dimension")
    ax.set_ylabel("density")
    ax.set_title(f"{row['model']} trained on {row['in_dataset']} (seed {row['seed']}): {row['pair']}\n"
                 f"AUROC {row['auroc']:.3f} (OOD positive), FPR@80%TPR {row['fpr_at_80_tpr']:.3f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
