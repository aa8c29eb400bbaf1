"""`oodbench report`: merge every evaluation's metrics row into `results.csv` and `results.md`.

`results.csv` has exactly the columns in `RESULT_COLUMNS`, in that order (documented in README.md):

| column | meaning |
|---|---|
| model, in_dataset, out_dataset, pair, seed | what was trained on what, scored against what |
| score | the OOD score the metrics are of (`likelihood`: the bits/dim, larger = more OOD) |
| unit | `bits/dim` = -log p(x) / (D ln 2) on 8-bit images |
| discretization | how log p(x) of the 8-bit image was obtained (dequantization or exact) |
| bound | which quantity log p(x) is: `exact`, `dequantized` (a one-draw estimate of the dequantization bound), `elbo`, `iwae-<k>` |
| n_in_train, n_in_test, n_out_test | number of images scored per set |
| bpd_<set>_mean, bpd_<set>_std | bits/dim mean and sample standard deviation per set |
| auroc, aupr_in, aupr_out, fpr_at_95_tpr, fpr_at_80_tpr | OOD metrics (OOD = positive class; see metrics.py) |
| ood_lower_bpd | True when the OOD test set gets *lower* mean bits/dim than the in-distribution test set |
| run, checkpoint | the run folder and checkpoint the row came from |
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from oodbench.atomic import write_text, write_with
from oodbench.errors import OodbenchError
from oodbench.report.figures import bpd_histogram
from oodbench.report.summary import summarize

SETS = ("in_train", "in_test", "out_test")
RESULT_COLUMNS = (
    "model", "in_dataset", "out_dataset", "pair", "seed", "score", "unit", "discretization", "bound",
    *(f"n_{s}" for s in SETS),
    *(f"bpd_{s}_{stat}" for s in SETS for stat in ("mean", "std")),
    "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "fpr_at_80_tpr", "ood_lower_bpd",
    "run", "checkpoint",
)


def metric_files(runs_dirs: list[Path]) -> list[Path]:
    """Every `eval/<pair>/metrics.json` below the given folders (several folders merge shards)."""
    files: set[Path] = set()
    for root in runs_dirs:
        if not Path(root).is_dir():
            raise OodbenchError(f"runs folder {root} does not exist; pass --runs DIR (where `oodbench train` wrote runs)")
        files.update(p for p in Path(root).rglob("metrics.json") if p.parent.parent.name == "eval")
    return sorted(files)


def collect_results(runs_dirs: list[Path]) -> pd.DataFrame:
    rows = []
    for path in metric_files(runs_dirs):
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise OodbenchError(f"{path} is not a readable metrics file; re-run `oodbench evaluate` for it") from None
        row["ood_lower_bpd"] = bool(row["bpd_out_test_mean"] < row["bpd_in_test_mean"])
        row["_folder"] = str(path.parent)
        rows.append(row)
    if not rows:
        raise OodbenchError(
            f"no evaluation results under {', '.join(map(str, runs_dirs))}; run `oodbench evaluate --pair IN:OUT` first"
        )
    frame = pd.DataFrame(rows)
    missing = [c for c in RESULT_COLUMNS if c not in frame]
    if missing:
        raise OodbenchError(f"metrics files under {runs_dirs[0]} lack columns {missing}; re-run `oodbench evaluate`")
    return frame.sort_values(["model", "in_dataset", "out_dataset", "seed"]).reset_index(drop=True)


def _with_interval(row: pd.Series, metric: str) -> str:
    mean, lo, hi = row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"]
    return f"{mean:.3f}" if pd.isna(lo) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_markdown(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "model": summary["model"], "pair (in:out)": summary["pair"], "bound": summary["bound"],
        "seeds": summary["n_seeds"],
        **{label: summary.apply(_with_interval, axis=1, metric=metric) for label, metric in (
            ("BPD in-test", "bpd_in_test_mean"), ("BPD OOD-test", "bpd_out_test_mean"), ("AUROC", "auroc"),
            ("FPR@80%TPR", "fpr_at_80_tpr"))},
        "OOD gets lower BPD": summary["ood_lower_bpd"],
    })
    return table.to_markdown(index=False)


def glance_markdown(summary: pd.DataFrame) -> str:
    """One row per family, one column per pair: the mean AUROC, marked "OOD lower" where the OOD test
    set gets lower mean bits/dim than the in-distribution test set (the paper's failure)."""
    cells = summary.assign(cell=[f"{auroc:.2f} OOD lower" if lower else f"{auroc:.2f}"
                                 for auroc, lower in zip(summary["auroc_mean"], summary["ood_lower_bpd"], strict=True)])
    table = cells.pivot_table(index="model", columns="pair", values="cell", aggfunc="first", sort=True).fillna("-")
    return table.reset_index().rename(columns={"model": "family"}).to_markdown(index=False)


def markdown(frame: pd.DataFrame, summary: pd.DataFrame, figures: dict[int, str]) -> str:
    table = frame[["model", "pair", "seed", "bpd_in_train_mean", "bpd_in_test_mean", "bpd_out_test_mean",
                   "auroc", "fpr_at_80_tpr", "ood_lower_bpd"]].copy()
    table.columns = ["model", "pair (in:out)", "seed", "BPD in-train", "BPD in-test", "BPD OOD-test",
                     "AUROC", "FPR@80%TPR", "OOD gets lower BPD"]
    lines = [
        "# oodbench results",
        "",
        "Bits per dimension (lower = more likely) of each model on its training data, its test set and an",
        "out-of-distribution test set, and how well the BPD score flags the OOD set (OOD = positive class;",
        "AUROC 0.5 = chance, below 0.5 = the OOD set looks *more* in-distribution). Nalisnick et al. (2019)",
        "found the OOD set getting lower BPD for FashionMNIST -> MNIST and CIFAR-10 -> SVHN.",
        "",
        "## At a glance: AUROC per family and pair (\"OOD lower\": the OOD set gets lower mean BPD)",
        "",
        glance_markdown(summary),
        "",
        "## Per family and pair (mean over seeds, 95% bootstrap interval where there are several)",
        "",
        summary_markdown(summary),
        "",
        "## Per run",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Discretization: {'; '.join(sorted(frame['discretization'].unique()))}.",
        "",
    ]
    for i, name in sorted(figures.items()):
        lines.append(f"![{frame.loc[i, 'model']} {frame.loc[i, 'pair']} seed {frame.loc[i, 'seed']}]({name})")
    return "\n".join(lines) + "\n"


def write_report(runs_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Write results.csv, summary.csv (mean and 95% bootstrap interval over seeds), results.md and one
    bits/dim histogram per result row; return the per-run table."""
    frame = collect_results(runs_dirs)
    out_dir = Path(out_dir)
    figures = {}
    for i, row in frame.iterrows():
        name = f"hist_{row['model']}_{Path(row['_folder']).name}_seed{row['seed']}.png"
        bpd_histogram(Path(row["_folder"]) / "scores.csv", out_dir / name,
                      title=f"{row['model']} trained on {row['in_dataset']}")
        figures[i] = name
    table = frame[list(RESULT_COLUMNS)]
    write_with(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    summary = summarize(frame)
    write_with(out_dir / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False, float_format="%.6f"))
    write_text(out_dir / "results.md", markdown(frame, summary, figures))
    return table
