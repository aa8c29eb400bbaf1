"""`oodbench report`: merge the evaluations of some runs into `results.csv`, `summary.csv`, `results.md`,
`results.tex` (latex.py) and one bits/dim histogram per result, in a report folder that holds exactly what the report covers.

Which runs: the run folders directly inside each `--runs` folder (or `--runs` itself when it is a run
folder), never folders further down: `runs/` and `runs/demo/` are different benchmarks, and merging
them would count unrelated runs as seeds of one experiment. Seeds are grouped by `setup` (a hash of
every setting but the seed; `schema.RunRecord.setup`), so runs of different settings never merge.

`results.csv` has exactly the columns of `schema.RESULT_COLUMNS`, in that order (README.md explains
each): one row per (run, pair, score variant). The report folder's `report.json` lists the files this report wrote; files that a previous
report listed and this one does not (figures of runs no longer reported) are removed, and files
oodbench did not write are left alone.
"""

from __future__ import annotations

import json
from typing import Any
from pathlib import Path

import pandas as pd

from oodbench.atomic import check_writable, write_json, write_text, write_with
from oodbench.errors import OodbenchError
from oodbench.locks import hold
from oodbench.ticker import track
from oodbench.report.analyses import gather_analyses
from oodbench.report.figures import bpd_histogram, roc_curves
from oodbench.report.findings import finding
from oodbench.report.latex import latex
from oodbench.report.lid_figures import lid_scatter
from oodbench.report.published import PUBLISHED
from oodbench.report.remedies import ensemble_markdown, remedies_markdown
from oodbench.report.summary import summarize
from oodbench.schema import RESULT_COLUMNS
from oodbench.scores import short_label

MANIFEST = "report.json"


def run_folders(runs_dirs: list[Path]) -> list[Path]:
    """The run folders a report covers: each --runs folder's children that are runs, or itself if it is one."""
    runs: set[Path] = set()
    for root in map(Path, runs_dirs):
        if not root.is_dir():
            raise OodbenchError(f"runs folder {root} does not exist; pass --runs DIR (where `oodbench train` wrote runs)")
        if (root / "config.yaml").is_file():
            runs.add(root)
        else:
            runs.update(child for child in root.iterdir() if (child / "config.yaml").is_file())
    return sorted(runs)


def metric_files(runs_dirs: list[Path]) -> list[Path]:
    """Every `eval/<pair>/metrics.json` of the covered runs (several --runs folders merge shards)."""
    return sorted(path for run in run_folders(runs_dirs) for path in run.glob("eval/*/metrics.json"))


def collect_results(runs_dirs: list[Path]) -> pd.DataFrame:
    """Every results row of the covered runs, one per (evaluation, score variant), with the `_folder` it
    came from and the score's `short` heading."""
    rows = []
    for path in metric_files(runs_dirs):
        try:
            content = json.loads(path.read_text())
            file_rows = content["rows"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise OodbenchError(f"{path} is not a metrics file of this oodbench; re-run `oodbench evaluate` for it, "
                                "or leave its run out of --runs") from None
        for row in file_rows:
            missing = [c for c in RESULT_COLUMNS if c not in row]
            if missing:
                raise OodbenchError(f"{path} was written by an older oodbench (no {missing[0]!r}); re-run "
                                    "`oodbench evaluate` for it, or leave its run out of --runs")
            rows.append({**row, "_folder": str(path.parent), "short": short_label(row["score"], row["score_params"])})
    if not rows:
        looked = ", ".join(map(str, runs_dirs))
        raise OodbenchError(f"no evaluation results in the run folders of {looked} (runs of a sweep are one level "
                            "further down, e.g. --runs runs/quick); run `oodbench evaluate --pair IN:OUT` first")
    frame = pd.DataFrame(rows)
    frame["_order"] = frame.groupby("_folder").cumcount()  # the scores in registry order within an evaluation
    keys = ["model", "in_dataset", "out_dataset", "out_split", "seed", "setup", "_order"]
    return frame.sort_values(keys).drop(columns="_order").reset_index(drop=True)


def likelihood_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: its raw-likelihood row (bits/dim per set, the paper's score)."""
    return frame[frame["score"] == "likelihood"].reset_index(drop=True)


def _with_interval(row: pd.Series, metric: str) -> str:
    mean, lo, hi = row[f"{metric}_mean"], row[f"{metric}_lo"], row[f"{metric}_hi"]
    return f"{mean:.3f}" if pd.isna(lo) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_markdown(summary: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "model": summary["model"], "pair (in:out)": summary["pair"], "score": summary["short"],
        "bound": summary["bound"], "seeds": summary["n_seeds"],
        **{label: summary.apply(_with_interval, axis=1, metric=metric) for label, metric in (
            ("BPD in-test", "bpd_in_test_mean"), ("BPD OOD-test", "bpd_out_test_mean"), ("AUROC", "auroc"),
            ("FPR@95%TPR", "fpr_at_95_tpr"), ("FPR@80%TPR", "fpr_at_80_tpr"))},
        "OOD gets lower BPD": summary["ood_lower_bpd"],
    })
    return table.to_markdown(index=False)


def glance_markdown(summary: pd.DataFrame) -> str:
    """One row per family, one column per pair: the likelihood's mean AUROC, marked "OOD lower" where the
    OOD test set gets lower mean bits/dim than the in-distribution test set (the paper's failure)."""
    summary = summary[summary["score"] == "likelihood"]
    cells = summary.assign(cell=[f"{auroc:.2f} OOD lower" if lower else f"{auroc:.2f}"
                                 for auroc, lower in zip(summary["auroc_mean"], summary["ood_lower_bpd"], strict=True)])
    table = cells.pivot_table(index="model", columns="pair", values="cell", aggfunc="first", sort=True).fillna("-")
    return table.reset_index().rename(columns={"model": "family"}).to_markdown(index=False)


def _ordered_shorts(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(summary["short"]))


def score_by_pair_markdown(summary: pd.DataFrame, family: str) -> str:
    """One family: one row per score, one column per pair, the mean AUROC over seeds."""
    rows = summary[summary["model"] == family]
    table = rows.pivot_table(index="short", columns="pair", values="auroc_mean", aggfunc="first", sort=False)
    table = table.reindex(_ordered_shorts(rows))
    return table.reset_index().rename(columns={"short": "score"}).to_markdown(index=False, floatfmt=".2f")


def family_by_pair_markdown(summary: pd.DataFrame, short: str) -> str:
    """One score: one row per family, one column per pair, the mean AUROC over seeds."""
    rows = summary[summary["short"] == short]
    table = rows.pivot_table(index="model", columns="pair", values="auroc_mean", aggfunc="first", sort=True)
    return table.reset_index().rename(columns={"model": "family"}).to_markdown(index=False, floatfmt=".2f")


def published_markdown(summary: pd.DataFrame) -> str:
    """Each published AUROC beside ours for the same score, family and pair (every variant of the score)."""
    lines = []
    for ref in PUBLISHED:
        family = summary["model"] == ref.family if ref.family is not None else True  # None: every family of ours
        ours = summary[(summary["score"] == ref.score) & family
                       & (summary["in_dataset"] == ref.in_dataset) & (summary["out_dataset"] == ref.out_dataset)]
        for row in ours.to_dict("records") or [None]:
            lines.append({
                "score": ref.score,
                "family": ref.family or ("not stated" if row is None else f"not stated (ours: {row['model']})"),
                "pair": f"{ref.in_dataset}:{ref.out_dataset}",
                "published AUROC": f"{ref.auroc:.3f}", "source": ref.source,
                "ours": "not run" if row is None else f"{row['auroc_mean']:.3f} ({row['short']}, {row['n_seeds']} seed(s))",
                "our model": "" if row is None else (
                    f"{row['n_params_mean'] / 1e6:.2f}M parameters, " + (
                        f"imported: trained elsewhere on {row['n_train_mean']:,.0f} images"
                        if pd.isna(row["epochs_mean"]) else f"{row['epochs_mean']:.0f} epochs on {row['n_train_mean']:,.0f} images")),
            })
    return pd.DataFrame(lines).to_markdown(index=False)


def cost_markdown(frame: pd.DataFrame) -> str:
    """Per pair, every family and score with its AUROC (mean over seeds) beside what it costs per image
    (runner/costs.py): networks, passes, measured seconds per 1,000 images and where; cheapest first."""
    if frame["cost_seconds_per_1000"].isna().all():
        return ("(no cost measured: the statistics were cached by an older oodbench; `oodbench evaluate "
                "--recompute-statistics` measures it)")
    rows = (frame.groupby(["pair", "model", "short"], sort=False)
            .agg(auroc=("auroc", "mean"), seconds=("cost_seconds_per_1000", "mean"),
                 networks=("cost_networks", "first"), passes=("cost_passes", "first"), machine=("cost_machine", "first"))
            .reset_index().sort_values(["pair", "seconds", "model"], na_position="last"))
    table = pd.DataFrame({
        "pair (in:out)": rows["pair"], "model": rows["model"], "score": rows["short"], "AUROC": rows["auroc"],
        "s / 1,000 images": rows["seconds"], "networks": rows["networks"], "passes per image": rows["passes"],
        "measured on": rows["machine"],
    })
    return table.to_markdown(index=False, floatfmt=".3f")


def trained_text(epochs: Any, seconds: Any) -> str:
    """How a row's model was trained: "12 ep, 3.4 min", or "imported" for a released checkpoint (no epochs:
    trained elsewhere, on the whole training split; runner/importing.py)."""
    if epochs is None or pd.isna(epochs):
        return "imported"
    return f"{epochs:.0f} ep, {seconds / 60:.1f} min" if seconds is not None and pd.notna(seconds) else f"{epochs:.0f} ep, ?"


def per_run_markdown(frame: pd.DataFrame) -> str:
    table = pd.DataFrame({
        "model": frame["model"], "pair (in:out)": frame["pair"], "seed": frame["seed"],
        "trained": [trained_text(e, s) for e, s in zip(frame["epochs"], frame["train_seconds"], strict=True)],
        "images trained on": frame["n_train"],
        "images in-train / in-test / OOD": [f"{a} / {b} / {c}" for a, b, c in
                                             zip(frame["n_in_train"], frame["n_in_test"], frame["n_out_test"], strict=True)],
        "BPD in-train": frame["bpd_in_train_mean"], "BPD in-test": frame["bpd_in_test_mean"],
        "BPD OOD-test": frame["bpd_out_test_mean"], "AUROC": frame["auroc"], "FPR@80%TPR": frame["fpr_at_80_tpr"],
        "OOD gets lower BPD": frame["ood_lower_bpd"],
    })
    return table.to_markdown(index=False, floatfmt=".3f")


def markdown(frame: pd.DataFrame, summary: pd.DataFrame, figures: dict[int, str], rocs: dict[int, str],
             analyses: list[str] = (), scatters: dict[int, str] | None = None) -> str:
    likelihood = likelihood_rows(frame)
    dims = ", ".join(f"{d:,}" for d in sorted(frame["bpd_dims"].unique()))
    per_family = [part for family in sorted(summary["model"].unique())
                  for part in (f"### {family}", "", score_by_pair_markdown(summary, family), "")]
    per_score = [part for short in _ordered_shorts(summary)
                 for part in (f"### {short}", "", family_by_pair_markdown(summary, short), "")]
    lines = [
        "# oodbench results",
        "",
        "Bits per dimension (lower = more likely) of each model on its training data, its test set and an",
        "out-of-distribution test set, and how well the BPD score flags the OOD set (OOD = positive class;",
        "AUROC 0.5 = chance, below 0.5 = the OOD set looks *more* in-distribution). Nalisnick et al. (2019)",
        "found the OOD set getting lower BPD for FashionMNIST -> MNIST and CIFAR-10 -> SVHN.",
        "",
        "## Findings",
        "",
        *(f"- {row['model']} (seed {row['seed']}): {finding(row)}" for row in likelihood.to_dict("records")),
        "",
        "## At a glance: likelihood AUROC per family and pair (\"OOD lower\": the OOD set gets lower mean BPD)",
        "",
        glance_markdown(summary),
        "",
        "## Every score, per family: AUROC per score and pair (mean over seeds)",
        "",
        "BPD: the likelihood (Nalisnick et al. 2019); IC png / IC j2k: input complexity with PNG / lossless JPEG 2000",
        "(Serra et al. 2020); typ M=k: the typicality test on batches of k images (Nalisnick et al. 2019b); DoSE:",
        "density of states, KDE-sum (Morningstar et al. 2021); LLR, ens BPD, WAIC, regret: below. Fitted scores are",
        "fitted on the run's validation hold-out (training-distribution images it was not trained on).",
        "LID dual, LID dual (LIDL): Kamkari et al. (2024)'s dual threshold on the likelihood and the flow's local intrinsic",
        "dimension (the paper's count of singular values, or the LIDL rate), on the images given one (lid_fraction).",
        "DiffPath-1D, DiffPath-6D: a diffusion model's DDIM path from the image to noise (Heng et al. 2024), a KDE on",
        "the rate of change of its noise prediction or a Gaussian mixture on six path sums; MSMA: a Gaussian mixture on",
        "the norms of the score at 10 noise levels (Mahmood et al. 2021). Diffusion models only; fitted on the hold-out.",
        "",
        *per_family,
        "## Every family, per score: AUROC per family and pair (mean over seeds)",
        "",
        *per_score,
        "## Remedies that need more than one model: AUROC per family and pair (published in brackets)",
        "",
        "LLR: likelihood ratio against a background model trained on perturbed images (Ren et al. 2019); ensemble",
        "BPD: log of the members' mean p(x) (Nalisnick et al. 2019); WAIC: mean minus variance of the members' log",
        "p(x) (Choi & Jang 2018); regret: the VAE's likelihood regret with each image's posterior refitted (Xiao et al.",
        "2020, batched variant). The ensemble's members are the setup's seeds.",
        "",
        remedies_markdown(summary),
        "",
        "### Each ensemble beside its members",
        "",
        ensemble_markdown(frame),
        "",
        "## AUROC against cost, per pair",
        "",
        "What each score costs per image, so that methods are compared at equal budgets: the networks that score",
        "each image, their passes (forward, backward, refits) and the measured seconds per 1,000 images of the",
        "statistics the score reads, where they were computed (cached statistics keep the figure of the machine",
        "that computed them). Fitting a score (a KDE, a threshold) is not counted: it is done once per run.",
        "",
        cost_markdown(frame),
        "",
        "## Published AUROCs beside ours",
        "",
        "Quoted from PAPER.md, to be checked against the papers; the published models are the papers' sizes.",
        "",
        published_markdown(summary),
        "",
        "## Per family, pair and score (mean over seeds, 95% bootstrap interval where there are several)",
        "",
        summary_markdown(summary),
        "",
        "## Per run (likelihood)",
        "",
        per_run_markdown(likelihood),
        "",
        f"Bits/dim is per dimension of the training dataset's own image ({dims} dimensions; 28x28 grey sets are "
        "padded to 32x32 for the models, and the padding is not counted). FPR@95%TPR: the fraction of OOD images "
        "accepted at the threshold that accepts 95% of the in-distribution test images (classifier benchmarks' "
        "convention); FPR@80%TPR: the fraction of in-distribution test images flagged at the threshold that flags "
        "80% of the OOD images (Ren et al. 2019).",
        "",
        f"Discretization: {'; '.join(sorted(frame['discretization'].unique()))}.",
        "",
        *analyses,
    ]
    for i, name in sorted(figures.items()):
        title = f"{likelihood.loc[i, 'model']} {likelihood.loc[i, 'pair']} seed {likelihood.loc[i, 'seed']}"
        lines.append(f"![{title}: bits/dim]({name}) ![{title}: ROC curves]({rocs[i]})"
                     + (f" ![{title}: log-likelihood against LID]({scatters[i]})" if i in (scatters or {}) else ""))
    return "\n".join(lines) + "\n"


def _remove_stale(out_dir: Path, written: list[str]) -> None:
    """Delete what the previous report in `out_dir` wrote and this one did not."""
    try:
        previous = json.loads((out_dir / MANIFEST).read_text()).get("files", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return
    for name in set(previous) - set(written):
        if "/" not in name and name != MANIFEST:  # only plain names in the folder itself
            (out_dir / name).unlink(missing_ok=True)


def write_report(runs_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Write results.csv, summary.csv (mean and 95% bootstrap interval over seeds), results.md and one
    bits/dim histogram per evaluation; return the per-run table (with the `_folder` it came from)."""
    frame = collect_results(runs_dirs)
    out_dir = check_writable(out_dir, "--out")
    # One writer at a time (two sweeps of one matrix end together); the other waits: writing takes seconds.
    with hold(out_dir, label=f"report folder {out_dir}", wait=True):
        return _write_report(frame, runs_dirs, out_dir)


def _write_report(frame: pd.DataFrame, runs_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    figures, rocs, scatters = {}, {}, {}
    rows = likelihood_rows(frame)
    for i, row in track(rows.iterrows(), total=len(rows), what="drawing the report's figures"):  # 2 per evaluation
        stem = f"{row['model']}_{Path(row['_folder']).name}_seed{row['seed']}_{row['setup'][:6]}.png"
        bpd_histogram(Path(row["_folder"]) / "scores.csv", out_dir / f"hist_{stem}", row=row.to_dict())
        roc_curves(Path(row["_folder"]) / "scores.csv", out_dir / f"roc_{stem}", row=row.to_dict())
        figures[i], rocs[i] = f"hist_{stem}", f"roc_{stem}"
        # Kamkari et al.'s likelihood-LID scatter, where the evaluation computed LIDs (the dual threshold)
        if lid_scatter(Path(row["_folder"]) / "scores.csv", out_dir / f"lid_{stem}", row=row.to_dict()) is not None:
            scatters[i] = f"lid_{stem}"
    write_with(out_dir / "results.csv", lambda tmp: frame[list(RESULT_COLUMNS)].to_csv(tmp, index=False,
                                                                                       float_format="%.6f"))
    summary = summarize(frame)
    write_with(out_dir / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False, float_format="%.6f"))
    analyses = gather_analyses(run_folders(runs_dirs), out_dir)
    write_text(out_dir / "results.md", markdown(frame, summary, figures, rocs, analyses.markdown, scatters))
    write_text(out_dir / "results.tex", latex(summary))
    written = ["results.csv", "summary.csv", "results.md", "results.tex", *figures.values(), *rocs.values(),
               *scatters.values(), *analyses.files]
    _remove_stale(out_dir, written)
    write_json(out_dir / MANIFEST, {"runs": sorted({str(Path(f).parent.parent) for f in frame["_folder"]}),
                                    "files": written})
    return frame
