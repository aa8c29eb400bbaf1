"""The figures of the paper's analyses (Nalisnick et al. 2019), from result files only:
- the decomposition of a flow's bits/dim into its prior and volume terms (Figure 3): histograms of
  -log p(z) / (D ln 2) and -log|det| / (D ln 2) for in-train, in-test and OOD test images
  (`analysis/decomposition.py`); a volume term that is one constant for every input (CV-Glow) is a
  vertical line with a note, not a one-bin histogram;
- the second-order prediction (Section 5) against the measured gap, one marker per (run, pair) and
  prediction, with y = x and the zero axes: a marker in the top-right or bottom-left quadrant has the
  measured gap's sign (`runner/analyze.py::second_order` rows);
- bits/dim over training of in-train, in-test and each OOD set (`logs/ood_curve.csv`): the paper's
  "early stopping does not help";
- bits/dim of the model's own samples beside its test set and each OOD set, as histograms
  (`runner/samples.py`; Kamkari et al., ICML 2024).

Each `*_plot` returns the matplotlib figure (titles, labels and legends can be checked); each
`*_figure` draws it and writes it atomically with `figures.save_figure`. Every figure names the model,
seed and pair or dataset, what is plotted and its units, and the number of images of every set;
line styles and markers differ, not only colours, so a grey print reads. Names are `display_name`s (a
folder dataset by its last path component) and `figures.layout` rewraps a title or legend wider than the
figure, so none is clipped at its edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from oodbench.analysis.decomposition import CONSTANT_STD_BPD, PRIOR, VOLUME, term_contributions  # noqa: E402
from oodbench.data.refs import display_name  # noqa: E402
from oodbench.errors import OodbenchError  # noqa: E402
from oodbench.report.figures import COLOURS, layout, save_figure  # noqa: E402
from oodbench.schema import SET_ROLES, ood_gets_lower_bpd  # noqa: E402

LINESTYLES = {"in_train": "-", "in_test": "--", "out_test": ":"}
FONT = 8  # the smallest text any of these figures has
CURVE_ROLES = {"in_train": SET_ROLES["in_train"], "in_test": SET_ROLES["in_test"], "ood": SET_ROLES["out_test"]}
OOD_COLOURS = (COLOURS["out_test"], "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
OOD_STYLES = (":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# The second-order rows' predictions, in bits/dim of BPD(q) - BPD(p*), drawn where a row has them:
# (legend, short name, marker, face colour).
PREDICTIONS = {
    "closed_form_bpd": ("closed form -1/(2 sigma^2) sum_c alpha_c^2 sum_hw dvar", "the closed form", "s", "none"),
    "diag_term_bpd": ("1/2 sum_i H_ii dvar_i (autograd Hessian diagonal)", "the diagonal term", "o", "#7f7f7f"),
    "covariance_bpd": ("1/2 Tr{H (Sigma_q - Sigma_p*)} (full covariance)", "the covariance term", "^", "white"),
}
SYMLOG_RANGE = 100.0  # values spanning more than this factor get symmetric-log axes


def _title(row: dict[str, Any], dataset_key: str = "in_dataset") -> str:
    return f"{row['model']} trained on {display_name(row[dataset_key])} (seed {row['seed']})"


# --- the decomposition (Figure 3) -----------------------------------------------------------------------

def decomposition_plot(scores: pd.DataFrame, row: dict[str, Any]) -> plt.Figure:
    """Two panels, the prior and the volume term's contributions to bits/dim, each with histograms of
    in_train, in_test and out_test; `row` is the evaluation's results row (model, in_dataset, seed,
    pair, bpd_dims)."""
    parts = term_contributions(scores, int(row["bpd_dims"]))
    sets = [s for s in COLOURS if (parts["set"] == s).any()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    panels = ((PRIOR, "prior term: -log p(z) / (D ln 2)"), (VOLUME, "volume term: -log|det df/dy| / (D ln 2)"))
    for ax, (term, what) in zip(axes, panels, strict=True):
        values = parts.loc[parts["set"].isin(sets), term].to_numpy()
        values = values[np.isfinite(values)]
        constant = len(values) > 0 and float(values.max() - values.min()) < CONSTANT_STD_BPD
        bins = None if constant or len(values) == 0 else np.histogram_bin_edges(values, bins=50)
        handles, labels = [], []
        for name in sets:
            subset = parts[parts["set"] == name]
            labels.append(f"{display_name(subset['dataset'].iloc[0])} {subset['split'].iloc[0]} ({SET_ROLES[name]}, "
                          f"n={len(subset):,}; mean {subset[term].mean():.3f})")
            style = {"color": COLOURS[name], "linestyle": LINESTYLES[name]}
            # a line, not a patch, in the legend: it shows the line style, so a grey print tells sets apart
            handles.append(Line2D([], [], linewidth=2.0 if constant else 1.6, **style))
            if constant:
                ax.axvline(subset[term].iloc[0], linewidth=2.0, **style)
            else:
                ax.hist(subset[term], bins=bins, density=True, histtype="stepfilled", alpha=0.15, color=COLOURS[name])
                ax.hist(subset[term], bins=bins, density=True, histtype="step", linewidth=1.6, **style)
        if constant:
            ax.set_xlim(values[0] - 1.0, values[0] + 1.0)
            ax.set_yticks([])
            ax.text(0.5, 0.55, f"the same for every input\n({values[0]:.4f} bits/dim):\nvolume-preserving, as CV-Glow",
                    transform=ax.transAxes, ha="center", fontsize=FONT + 1,
                    bbox={"facecolor": "white", "edgecolor": "grey"})
        else:
            ax.set_ylabel("density", fontsize=FONT + 1)
        ax.set_title(what, fontsize=FONT + 2)
        ax.set_xlabel(f"contribution to bits/dim (D = {int(row['bpd_dims']):,}; lower = likelier)", fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
        ax.legend(handles, labels, fontsize=FONT, loc="upper left" if constant else "best")
    fig.suptitle(f"{_title(row)}: {display_name(row['pair'])}\nbits/dim = prior term + volume term + dequantization "
                 f"constant (Nalisnick et al. 2019, Fig. 3)", fontsize=FONT + 2)
    return layout(fig)


def decomposition_figure(scores: pd.DataFrame, row: dict[str, Any], out_png: Path) -> Path:
    """`decomposition_plot`, written atomically to `out_png`."""
    return save_figure(decomposition_plot(scores, row), out_png)


# --- the second-order prediction against the measured gap (Section 5) -----------------------------------

def _point_label(row: dict[str, Any]) -> str:
    seed = f", seed {row['seed']}" if "seed" in row else ""
    return f"{display_name(row['pair'])} ({row['model']}{seed})"


def _axis(values: np.ndarray) -> tuple[float, float | None]:
    """(half-width, linthresh) of a symmetric axis around 0 for `values`; linthresh None: linear, else
    symmetric-log, when the nonzero |values| span more than `SYMLOG_RANGE`."""
    nonzero = np.abs(values[values != 0])
    if len(nonzero) == 0:
        return 1.0, None
    if nonzero.max() / nonzero.min() > SYMLOG_RANGE:
        return float(nonzero.max()) * 4.0, float(nonzero.min())
    return float(nonzero.max()) * 1.25, None


def _diagonal(limit: float, smallest: float) -> np.ndarray:
    """Points of y = x on [-limit, limit], dense enough to draw straight on linear and symlog axes."""
    side = np.geomspace(min(smallest, limit) / 10, limit, 300)
    return np.unique(np.concatenate([np.linspace(-limit, limit, 401), side, -side]))


def second_order_plot(rows: Sequence[dict[str, Any]]) -> plt.Figure:
    """Predicted (closed form, the autograd diagonal term; the full covariance term where rows have
    it) against measured BPD(q) - BPD(p*), bits/dim, one marker per row and prediction. An axis whose
    values span more than `SYMLOG_RANGE` (a closed form ~1e6 off on trained models) is symmetric-log,
    and the title says which prediction is how far off."""
    rows = [r for r in rows if np.isfinite(r.get("measured_gap_bpd", np.nan))]
    if not rows:
        raise OodbenchError("no second-order rows with a measured gap to plot; run `oodbench analyze second-order` first")
    keys = [k for k in PREDICTIONS if any(np.isfinite(r.get(k, np.nan)) for r in rows)]
    measured = np.array([r["measured_gap_bpd"] for r in rows], dtype=float)
    predicted = {k: np.array([r[k] for r in rows if np.isfinite(r.get(k, np.nan))], dtype=float) for k in keys}
    x_limit, x_thresh = _axis(measured)
    y_limit, y_thresh = _axis(np.concatenate([measured, *predicted.values()]))
    fig, ax = plt.subplots(figsize=(7.2, 6.0), dpi=120)
    for key in keys:
        label, _, marker, face = PREDICTIONS[key]
        points = [(r["measured_gap_bpd"], r[key], _point_label(r)) for r in rows if np.isfinite(r.get(key, np.nan))]
        x, y, _ = zip(*points, strict=True)
        ax.scatter(x, y, marker=marker, s=42, facecolors=face, edgecolors="black", linewidths=1.0, zorder=3,
                   label=f"{label} (n={len(points)})")
        for xi, yi, name in points:
            ax.annotate(name, (xi, yi), xytext=(5, 3), textcoords="offset points", fontsize=FONT)
    smallest = min(t for t in (x_thresh, y_thresh, x_limit, y_limit) if t is not None)
    line = _diagonal(max(x_limit, y_limit), smallest)
    ax.plot(line, line, color="grey", linestyle="--", linewidth=1.0, label="prediction = measured")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    if x_thresh is not None:
        ax.set_xscale("symlog", linthresh=x_thresh)
    if y_thresh is not None:
        ax.set_yscale("symlog", linthresh=y_thresh)
    ax.set_xlim(-x_limit, x_limit)
    ax.set_ylim(-y_limit, y_limit)
    for x, y, ha, va in ((0.98, 0.52, "right", "bottom"), (0.02, 0.48, "left", "top")):  # quadrants I and III
        ax.text(x, y, "signs agree", transform=ax.transAxes, ha=ha, va=va, fontsize=FONT, color="grey")
    ax.set_xlabel("measured BPD(q) - BPD(p*) [bits/dim]; < 0: q rated likelier", fontsize=FONT + 1)
    ax.set_ylabel("second-order prediction of the same gap [bits/dim]", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    scale = np.abs(measured).max()
    off = [f"{PREDICTIONS[k][1]} up to {np.abs(v).max() / scale:.0e}x the measured gap"
           for k, v in predicted.items() if scale > 0 and np.abs(v).max() / scale > SYMLOG_RANGE]
    scales = [name for name, t in (("x", x_thresh), ("y", y_thresh)) if t is not None]
    note = ""
    if scales:
        thresholds = ", ".join(f"{name} linear within +-{t:.2g}" for name, t in (("x", x_thresh), ("y", y_thresh))
                               if t is not None)
        note = f"\nsymmetric-log {' and '.join(scales)} axis ({thresholds})" + (
            f": orders of magnitude off,\n{'; '.join(off)}" if off else "")
    ax.set_title(f"Second-order expansion (Nalisnick et al. 2019, Sec. 5): {len(rows)} (run, pair) row(s)\n"
                 f"p* = training images, q = the pair's OOD images{note}", fontsize=FONT + 1)
    ax.legend(fontsize=FONT, loc="upper left", bbox_to_anchor=(0.0, 0.93))
    return layout(fig)


def second_order_figure(rows: Sequence[dict[str, Any]], out_png: Path) -> Path:
    """`second_order_plot`, written atomically to `out_png`."""
    return save_figure(second_order_plot(rows), out_png)


# --- the likelihood over training -----------------------------------------------------------------------

def ood_curve_plot(curve: pd.DataFrame, row_info: dict[str, Any]) -> plt.Figure:
    """Mean bits/dim against optimizer step of every set in `logs/ood_curve.csv` (in_train, in_test,
    each OOD set), bands of +-1 standard error; `row_info` names the run (model, dataset, seed)."""
    missing = [c for c in ("step", "set", "dataset", "split", "n", "bpd_mean", "bpd_std") if c not in curve.columns]
    if missing or curve.empty:
        raise OodbenchError(f"the likelihood curve is empty or lacks {', '.join(missing) or 'rows'}; "
                            "train with --curve-every and OOD sets")
    groups = [(key, frame.sort_values("step")) for key, frame in curve.groupby(["set", "dataset", "split"], sort=False)]
    order = {"in_train": 0, "in_test": 1, "ood": 2}
    groups.sort(key=lambda item: order.get(item[0][0], 3))
    in_test = next((frame for (role, _, _), frame in groups if role == "in_test"), None)
    fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    verdicts, n_ood = [], 0
    for i, ((role, dataset, split), frame) in enumerate(groups):
        if role == "ood":
            colour, style = OOD_COLOURS[n_ood % len(OOD_COLOURS)], OOD_STYLES[n_ood % len(OOD_STYLES)]
            n_ood += 1
        else:
            colour, style = COLOURS.get(role, "black"), LINESTYLES.get(role, "-")
        counts = sorted(set(frame["n"].astype(int)))
        n = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}-{counts[-1]:,}"
        label = f"{display_name(dataset)} {split} ({CURVE_ROLES.get(role, role)}, n={n})"
        step, mean = frame["step"].to_numpy(), frame["bpd_mean"].to_numpy(float)
        stderr = frame["bpd_std"].to_numpy(float) / np.sqrt(np.maximum(frame["n"].to_numpy(float), 1))
        ax.plot(step, mean, color=colour, linestyle=style, marker=MARKERS[i % len(MARKERS)], markersize=4,
                linewidth=1.5, label=label)
        ax.fill_between(step, mean - stderr, mean + stderr, color=colour, alpha=0.15, linewidth=0)
        if role == "ood" and in_test is not None:
            both = in_test.merge(frame, on="step", suffixes=("_in", "_out"))
            lower = sum(ood_gets_lower_bpd(a, b) for a, b in zip(both["bpd_mean_in"], both["bpd_mean_out"], strict=True))
            verdicts.append(f"{display_name(dataset)} {split} at {lower}/{len(both)} points")
    ax.set_xlabel("optimizer step", fontsize=FONT + 1)
    ax.set_ylabel("mean bits/dim (bands: +-1 s.e.)", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    # two OOD sets a line, so the title stays as wide as the axes
    lines = ["; ".join(verdicts[i:i + 2]) for i in range(0, len(verdicts), 2)]
    verdict = "".join(f"\n{line}" for line in ["OOD mean bits/dim below the in-distribution test set's:", *lines]) if lines else ""
    ax.set_title(f"{_title(row_info, 'dataset')}: bits/dim over training{verdict}", fontsize=FONT + 2)
    ax.legend(fontsize=FONT)
    return layout(fig)


def ood_curve_figure(curve: pd.DataFrame, row_info: dict[str, Any], out_png: Path) -> Path:
    """`ood_curve_plot`, written atomically to `out_png`."""
    return save_figure(ood_curve_plot(curve, row_info), out_png)


# --- the model's own samples (Kamkari et al., ICML 2024) --------------------------------------------------

SAMPLES_STYLE = {"color": "black", "linestyle": "-"}


def samples_plot(sets: Sequence[tuple[str, str, np.ndarray]], row_info: dict[str, Any]) -> plt.Figure:
    """Histograms of bits/dim of each (role, label, bpd) in `sets`, role "in_test", "samples" or "ood" (one
    per OOD set); `row_info` names the run (model, dataset, seed)."""
    finite = [bpd[np.isfinite(bpd)] for _, _, bpd in sets]
    if not sets or not all(len(values) for values in finite):
        raise OodbenchError("the samples figure needs the bits/dim of the samples and of the sets they are compared with")
    bins = np.histogram_bin_edges(np.concatenate(finite), bins=50)
    fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=120)
    handles, n_ood = [], 0
    for (role, _, _), values in zip(sets, finite, strict=True):
        if role == "ood":
            style = {"color": OOD_COLOURS[n_ood % len(OOD_COLOURS)], "linestyle": OOD_STYLES[n_ood % len(OOD_STYLES)]}
            n_ood += 1
        else:
            style = SAMPLES_STYLE if role == "samples" else {"color": COLOURS["in_test"], "linestyle": LINESTYLES["in_test"]}
        ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.12, color=style["color"])
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8 if role == "samples" else 1.4, **style)
        handles.append(Line2D([], [], linewidth=1.6, **style))
    ax.set_xlabel("bits per dimension (lower = likelier)", fontsize=FONT + 1)
    ax.set_ylabel("density", fontsize=FONT + 1)
    ax.tick_params(labelsize=FONT)
    ax.set_title(f"{_title(row_info, 'dataset')}: bits/dim of the model's own samples, its test set and the OOD "
                 "sets (Kamkari et al. 2024)", fontsize=FONT + 2)
    ax.legend(handles, [label for _, label, _ in sets], fontsize=FONT)
    return layout(fig)


def samples_figure(sets: Sequence[tuple[str, str, np.ndarray]], row_info: dict[str, Any], out_png: Path) -> Path:
    """`samples_plot`, written atomically to `out_png`."""
    return save_figure(samples_plot(sets, row_info), out_png)
