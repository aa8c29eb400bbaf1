"""The report's figures, from an evaluation's scores.csv:
- histograms of per-sample bits/dim in the style of Nalisnick et al. (2019), Figure 1: in-distribution
  train, in-distribution test and OOD test on one axis, each named by its dataset, split, role and
  number of images, under a title naming the model, the pair and the AUROC;
- ROC curves of every per-sample score of the evaluation (OOD positive), AUROC in the legend, under a
  title naming the model, seed, pair and image counts."""

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
from oodbench.metrics import ood_metrics, roc_points  # noqa: E402
from oodbench.schema import SCORE_PREFIX, SET_ROLES  # noqa: E402
from oodbench.scores import short_label  # noqa: E402

# The paper's three sets (Figure 1); the validation hold-out, which fitted scores are fitted on, is left out.
COLOURS = {"in_train": "#1f77b4", "in_test": "#2ca02c", "out_test": "#d62728"}


def _figure_file(draw, scores_csv: Path, out_png: Path, row: dict[str, Any], usecols: list[str] | None = None) -> Path:
    """`draw(scores, row)` of an evaluation's scores.csv, written atomically to `out_png`."""
    try:
        scores = pd.read_csv(scores_csv, usecols=usecols)
    except (OSError, ValueError):
        raise OodbenchError(f"{scores_csv} is missing or unreadable; re-run `oodbench evaluate` for it") from None
    return save_figure(draw(scores, row), out_png)


def save_figure(fig: plt.Figure, out_png: Path) -> Path:
    """Write `fig` to `out_png` as a PNG, atomically (a reader never sees half a file), and close it."""
    try:
        write_with(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return Path(out_png)


def bpd_histogram(scores_csv: Path, out_png: Path, *, row: dict[str, Any]) -> Path:
    """The histogram figure of one results row (`schema.RESULT_COLUMNS`), from that evaluation's scores.csv."""
    return _figure_file(histogram_figure, scores_csv, out_png, row, usecols=["set", "dataset", "split", "bpd"])


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


def _short(column: str) -> str:
    """"score:typicality(batch=1,seed=0)" -> "typ M=1"."""
    label = column.removeprefix(SCORE_PREFIX)
    name, _, params = label.partition("(")
    return short_label(name, params.removesuffix(")"))


def roc_figure(scores: pd.DataFrame, row: dict[str, Any]) -> plt.Figure:
    """ROC curves (in-test vs out-test) of every per-sample score column of one evaluation's scores."""
    inside, outside = scores[scores["set"] == "in_test"], scores[scores["set"] == "out_test"]
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    for column in (c for c in scores.columns if c.startswith(SCORE_PREFIX)):
        fpr, tpr = roc_points(inside[column], outside[column])
        auroc = ood_metrics(inside[column], outside[column]).auroc
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{_short(column)} (AUROC {auroc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_title(f"{row['model']} trained on {row['in_dataset']} (seed {row['seed']}): {row['pair']}\n"
                 f"in-test n={len(inside):,}, OOD n={len(outside):,}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def roc_curves(scores_csv: Path, out_png: Path, *, row: dict[str, Any]) -> Path:
    """The ROC figure of one evaluation, from its scores.csv."""
    return _figure_file(roc_figure, scores_csv, out_png, row)
