"""The report's figures, from an evaluation's scores.csv:
- histograms of per-sample bits/dim in the style of Nalisnick et al. (2019), Figure 1: in-distribution
  train, in-distribution test and OOD test on one axis, each named by its dataset, split, role and
  number of images, under a title naming the model, the pair and the AUROC;
- ROC curves of every per-sample score of the evaluation (OOD positive), AUROC in the legend, under a
  title naming the model, seed, pair and image counts.
Names are shown as `data.refs.display_name` gives them (a folder dataset by its last path component), and
`layout` rewraps any title or legend that would still run past the figure's edge."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from oodbench.atomic import write_with  # noqa: E402
from oodbench.data.refs import display_name  # noqa: E402
from oodbench.errors import OodbenchError  # noqa: E402
from oodbench.metrics import ood_metrics, roc_points  # noqa: E402
from oodbench.schema import SCORE_PREFIX, SET_ROLES  # noqa: E402
from oodbench.scores import short_label  # noqa: E402

# The paper's three sets (Figure 1); the validation hold-out, which fitted scores are fitted on, is left out.
COLOURS = {"in_train": "#1f77b4", "in_test": "#2ca02c", "out_test": "#d62728"}
FIT_ROUNDS = 8  # rewrap-and-measure rounds of `layout`; each narrows an overflowing text by its excess


def _wrap(line: str, width: int) -> list[str]:
    """`line` in lines of at most `width` characters, broken at spaces; a longer word (a pair of folder
    datasets) after its last ':' that fits, else its last '/', else at `width`."""
    lines = []
    for piece in textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False) or [line]:
        while len(piece) > width:
            cut = next((at + 1 for at in (piece.rfind(":", 1, width), piece.rfind("/", 1, width)) if at > 0), width)
            lines.append(piece[:cut])
            piece = piece[cut:]
        lines.append(piece)
    return lines


def _rewrap(texts: list[Text], shrink: float, originals: dict[Text, str]) -> None:
    """Wrap every line of `texts` (a title, or a legend's labels), as first written (`originals`), to
    `shrink` of their longest line's characters now (`_wrap`): nothing is cut."""
    longest = max(len(line) for text in texts for line in text.get_text().split("\n"))
    width = max(8, min(longest - 1, int(longest * shrink)))
    for text in texts:
        original = originals.setdefault(text, text.get_text())
        text.set_text("\n".join(part for line in original.split("\n") for part in _wrap(line, width)))


def _excess(artist: Text | Legend, renderer: Any, fig: plt.Figure) -> float:
    """How many times too wide `artist` is for its room: a title, centred, has twice the distance from its
    centre to the nearer figure edge; a legend, the width of its axes. At most 1 when it fits."""
    box = artist.get_window_extent(renderer)
    if box.width <= 0:
        return 0.0
    if isinstance(artist, Legend):
        room = artist.axes.bbox.width
    else:
        centre = (box.x0 + box.x1) / 2
        room = 2 * min(centre - fig.bbox.x0, fig.bbox.x1 - centre)
    return box.width / max(room, 1.0)


def titles_and_legends(fig: plt.Figure) -> list[Text | Legend]:
    """The figure's title, each axes' title and each legend: the texts that hold dataset names."""
    found: list[Text | Legend] = [text for text in fig.texts if text.get_text()]  # the suptitle
    for ax in fig.axes:
        if ax.title.get_text():
            found.append(ax.title)
        if ax.get_legend() is not None:
            found.append(ax.get_legend())
    return found


def _overflowing(fig: plt.Figure) -> list[tuple[Text | Legend, float]]:
    """Each title or legend wider than its room, with how many times."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    return [(artist, excess) for artist in titles_and_legends(fig) if (excess := _excess(artist, renderer, fig)) > 0.98]


def layout(fig: plt.Figure) -> plt.Figure:
    """Rewrap every title or legend wider than its room (`_excess`), then `tight_layout`, and again until
    each fits inside the figure: matplotlib would clip a long name at the figure's edge (and tight_layout
    cannot make room for a title wider than the figure)."""
    laid_out, originals = False, {}
    for _ in range(FIT_ROUNDS):
        over = _overflowing(fig)
        if laid_out and not over:
            break
        for artist, excess in over:
            _rewrap(list(artist.get_texts()) if isinstance(artist, Legend) else [artist], 0.97 / excess, originals)
        if not over:
            fig.tight_layout()
        laid_out = not over
    if not laid_out:
        fig.tight_layout()
    return fig


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


def _run_title(row: dict[str, Any]) -> str:
    """"glow trained on cifar10 (seed 0): cifar10:svhn", a folder dataset by its last path component."""
    return f"{row['model']} trained on {display_name(row['in_dataset'])} (seed {row['seed']}): {display_name(row['pair'])}"


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
            label = f"{display_name(subset['dataset'].iloc[0])} {subset['split'].iloc[0]} ({SET_ROLES[name]}, n={len(subset):,})"
            ax.hist(subset["bpd"], bins=bins, density=True, alpha=0.45, color=COLOURS[name], label=label)
    ax.set_xlabel("bits per dimension")
    ax.set_ylabel("density")
    ax.set_title(f"{_run_title(row)}\nAUROC {row['auroc']:.3f} (OOD positive), FPR@80%TPR {row['fpr_at_80_tpr']:.3f}",
                 fontsize=10)
    ax.legend(fontsize=8)
    return layout(fig)


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
        # A score that reads an optional statistic has it on a seeded subsample only (EvalConfig.extra_images):
        # the other images are NaN in its column, and its curve is drawn on the images it scored.
        s_in, s_out = inside[column].dropna(), outside[column].dropna()
        if s_in.empty or s_out.empty:
            continue
        fpr, tpr = roc_points(s_in, s_out)
        auroc = ood_metrics(s_in, s_out).auroc
        subset = f", n={len(s_in):,}/{len(s_out):,}" if len(s_in) < len(inside) or len(s_out) < len(outside) else ""
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{_short(column)} (AUROC {auroc:.3f}{subset})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_title(f"{_run_title(row)}\nin-test n={len(inside):,}, OOD n={len(outside):,}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return layout(fig)


def roc_curves(scores_csv: Path, out_png: Path, *, row: dict[str, Any]) -> Path:
    """The ROC figure of one evaluation, from its scores.csv."""
    return _figure_file(roc_figure, scores_csv, out_png, row)
