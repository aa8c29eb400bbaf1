"""Histograms of per-sample bits/dim in the style of Nalisnick et al. (2019), Figure 1:
in-distribution train, in-distribution test and OOD test, on one axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from oodbench.atomic import write_with  # noqa: E402
from oodbench.errors import OodbenchError  # noqa: E402

LABELS = {"in_train": "{name} train", "in_test": "{name} test", "out_test": "{name} test (OOD)"}
COLOURS = {"in_train": "#1f77b4", "in_test": "#2ca02c", "out_test": "#d62728"}


def bpd_histogram(scores_csv: Path, out_png: Path, *, title: str) -> Path:
    try:
        scores = pd.read_csv(scores_csv, usecols=["set", "dataset", "bpd"])
    except (OSError, ValueError):
        raise OodbenchError(f"{scores_csv} is missing or unreadable; re-run `oodbench evaluate` for it") from None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    bins = np.histogram_bin_edges(scores["bpd"], bins=60)
    for name, label in LABELS.items():
        subset = scores[scores["set"] == name]
        if len(subset):
            ax.hist(subset["bpd"], bins=bins, density=True, alpha=0.45, color=COLOURS[name],
                    label=label.format(name=subset["dataset"].iloc[0]))
    ax.set_xlabel("bits per dimension")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    write_with(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out_png
