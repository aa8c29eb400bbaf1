"""The paper's analyses in the report: the tables `oodbench analyze` left in each run's `analysis/`
folder (runner/analyze.py) and the training's `logs/ood_curve.csv`, gathered, drawn and put into words.

- decomposition (Nalisnick et al. 2019, Figure 3): every run's `decomposition_<pair>.csv` into one
  `decomposition.csv`, a figure per (run, pair) from its evaluation's scores.csv, and one sentence each
  (analysis/decomposition.py's `decomposition_finding`);
- second order (Section 5): every `second_order_<pair>.csv` into `second_order.csv` and one figure of the
  predictions against the measured gaps, with a table saying where the signs agree and a paragraph reading
  its numbers (`second_order_reading`: which way each gap points, in bits/dim and nats, and how the
  predictions compare with the measured gap);
- the likelihood over training ("early stopping does not help"): a figure per run with a curve, and
  whether every OOD set stays below the in-distribution test set at every point (`early_stopping_finding`);
- the model's own samples (Kamkari et al., ICML 2024): every `samples_<pair>.csv` into `samples.csv`, a table
  of bits/dim and AUROCs per (run, pair) read in words (`samples_reading`), and per run its grid of samples
  and a figure of the bits/dim of its samples, test set and OOD sets.
`run_figures` draws the same figures into a run's own `analysis/` folder (`oodbench analyze`).
"""

from __future__ import annotations

import numbers
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oodbench.analysis.decomposition import PRIOR, TOTAL, VOLUME, decomposition_finding
from oodbench.atomic import write_with
from oodbench.errors import OodbenchError
from oodbench.report.analysis_figures import (
    PREDICTIONS,
    decomposition_figure,
    ood_curve_figure,
    samples_figure,
    second_order_figure,
)
from oodbench.data import parse_pair
from oodbench.data.refs import display_name
from oodbench.runner.analyze import evaluation_scores
from oodbench.runner.layout import RunPaths
from oodbench.runner.ood_curve import early_stopping_finding, read_curve
from oodbench.runner.samples import grid_file
from oodbench.schema import RunRecord

DECOMPOSITION, SECOND_ORDER, SAMPLES = "decomposition", "second_order", "samples"
# The second-order table's columns in results.md: (heading, column)
SECOND_ORDER_SHOWN = (("var diff per channel (paper's units, q - p*)", "var_diff_paper"),
                      ("closed form", "closed_form_bpd"), ("1/2 sum H_ii dvar_i", "diag_term_bpd"),
                      ("1/2 Tr{H dSigma}", "covariance_bpd"), ("measured", "measured_gap_bpd"))


@dataclass
class Analyses:
    """What the report gathered: files written into the report folder, and the results.md section."""

    files: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)


def _tables(run: Path, kind: str) -> list[Path]:
    return sorted((run / "analysis").glob(f"{kind}_*.csv"))


def _decomposition(runs: list[Path], out_dir: Path | None, found: Analyses) -> None:
    tables, lines = [], []
    for run in runs:
        for path in _tables(run, DECOMPOSITION):
            table = pd.read_csv(path)
            tables.append(table)
            first = table.iloc[0]
            finding = decomposition_finding(table)
            lines.append(f"- {first['model']} (seed {first['seed']}), {first['pair']}: {finding['summary']}")
            if out_dir is not None:
                name = f"decomposition_{run.name}_{path.stem.removeprefix(DECOMPOSITION + '_')}.png"
                decomposition_figure(*evaluation_scores(RunPaths(run), parse_pair(str(first["pair"]))), out_dir / name)
                found.files.append(name)
                lines.append(f"  ![{first['model']} {first['pair']} seed {first['seed']}: decomposition]({name})")
    if not tables:
        return
    if out_dir is not None:
        write_with(out_dir / "decomposition.csv",
                   lambda tmp: pd.concat(tables).to_csv(tmp, index=False, float_format="%.6f"))
        found.files.append("decomposition.csv")
    found.markdown += [
        "## The decomposition of a flow's likelihood (Nalisnick et al. 2019, Figure 3)",
        "",
        f"Bits/dim = prior term -log p(z)/(D ln 2) + volume term -log|det|/(D ln 2) + the dequantization constant "
        f"(`decomposition.csv`: mean and std per set, term ({PRIOR}, {VOLUME}, {TOTAL}) and level). The paper: for "
        "affine Glow on CIFAR-10 the volume term favours SVHN; for CV-Glow it is one constant and SVHN still wins.",
        "", *lines, ""]


def _sign(value: float) -> int:
    return int(np.sign(value)) if np.isfinite(value) else 0


def second_order_markdown(rows: pd.DataFrame) -> str:
    """One row per (run, pair): the variance terms, the predictions and the measured gap, in bits/dim of
    BPD(q) - BPD(p*), and whether each prediction's sign agrees with the measured one."""
    table = []
    for row in rows.to_dict("records"):
        entry = {"model": row["model"], "seed": row.get("seed"), "pair": row["pair"]}
        for heading, column in SECOND_ORDER_SHOWN:
            if column == "var_diff_paper":
                values = [row.get(f"var_diff_paper_c{c}", np.nan) for c in range(3)]
                entry[heading] = " / ".join(f"{v:.2f}" for v in values if np.isfinite(v))  # grey sets: one
            else:
                entry[heading] = row.get(column, np.nan)
        measured = _sign(row.get("measured_gap_bpd", np.nan))
        entry["signs agree (closed / diag / full)"] = " / ".join(
            "-" if _finite(row, c) is None else "yes" if _sign(row[c]) == measured else "no"
            for c in ("closed_form_bpd", "diag_term_bpd", "covariance_bpd"))  # "-": not computed for this row
        table.append(entry)
    return pd.DataFrame(table).to_markdown(index=False, floatfmt=".3f")


def _finite(row: dict, column: str) -> float | None:
    value = row.get(column, np.nan)
    return float(value) if isinstance(value, numbers.Real) and np.isfinite(value) else None


def _gap_words(bpd: float, row: dict, column: str) -> str:
    """"likelier by 0.95 bits/dim (+2,021 nats)": which way a BPD(q) - BPD(p*) gap points, its size, and
    the same gap as the paper's E_q[log p] - E_p*[log p] per image where the row has it in nats."""
    if bpd == 0:
        return "as likely (a gap of 0 bits/dim)"
    nats = _finite(row, column.removesuffix("_bpd") + "_nats")
    in_nats = "" if nats is None else f" ({nats:+,.0f} nats)" if 100 <= abs(nats) < 1e6 else f" ({nats:+.3g} nats)"
    return f"{'likelier' if bpd < 0 else 'less likely'} by {abs(bpd):.3g} bits/dim{in_nats}"


def second_order_reading(rows: pd.DataFrame) -> str:
    """The second-order table in words, from its numbers: the sign convention, then per (run, pair) which
    way the measured gap points and whether each prediction points the same way, and how large it is
    against the measured gap (the paper's Section 5 predicts the sign; a size orders of magnitude off is
    the closed form's assumptions failing on a trained model)."""
    sentences = [
        "Reading the table: a negative entry means q, the OOD set, gets fewer bits/dim than the training images "
        "p*, i.e. a higher likelihood (the paper's failure); in the paper's nats per image, "
        "E_q[log p] - E_p*[log p] = -D ln 2 x the entry, positive when q is likelier."]
    for row in rows.to_dict("records"):
        measured = _finite(row, "measured_gap_bpd")
        if measured is None:
            continue
        seed = f" (seed {row['seed']})" if _finite(row, "seed") is not None else ""
        q = display_name(str(row["q_set"])) if isinstance(row.get("q_set"), str) else "the OOD set"
        parts = []
        for column, (_, name, _, _) in PREDICTIONS.items():
            predicted = _finite(row, column)
            if predicted is None:
                continue
            agree = "the measured sign" if _sign(predicted) == _sign(measured) else "the opposite sign"
            if measured:
                size = abs(predicted) / abs(measured)
                agree += f", {size:.2f}x" if 0.01 <= size < 100 else f", {size:.0e}x"
                agree += " the measured size"
            parts.append(f"{name} predicts it {_gap_words(predicted, row, column)}: {agree}")
        predictions = f"; {'; '.join(parts)}" if parts else ""
        sentences.append(f"{row['model']}{seed}, {display_name(str(row['pair']))}: measured, {q} is "
                         f"{_gap_words(measured, row, 'measured_gap_bpd')}{predictions}.")
    return " ".join(sentences)


def _second_order(runs: list[Path], out_dir: Path | None, found: Analyses) -> None:
    tables = [pd.read_csv(path) for run in runs for path in _tables(run, SECOND_ORDER)]
    if not tables:
        return
    rows = pd.concat(tables, ignore_index=True)
    lines = []
    if out_dir is not None:
        write_with(out_dir / "second_order.csv", lambda tmp: rows.to_csv(tmp, index=False, float_format="%.6g"))
        second_order_figure(rows.to_dict("records"), out_dir / "second_order.png")
        found.files += ["second_order.csv", "second_order.png"]
        lines = ["", "![second-order predictions against the measured gaps](second_order.png)"]
    found.markdown += [
        "## The second-order explanation (Nalisnick et al. 2019, Section 5)",
        "",
        "E_q[log p] - E_p*[log p] ~ 1/2 Tr{H (Sigma_q - Sigma_p*)}, H the Hessian of log p at the training mean; for "
        "CV-Glow the paper's closed form -1/(2 sigma^2) sum_c alpha_c^2 sum_hw (var_q - var_p*). All in bits/dim of "
        "BPD(q) - BPD(p*) (negative: q rated likelier); the variance terms in the paper's units (pixels in [0, 1]; it "
        "reports CIFAR-10 vs SVHN as 12.3 / 6.5 / 14.5 for p* - q). `second_order.csv` has every term in nats too.",
        "", second_order_markdown(rows), "", second_order_reading(rows), *lines, ""]


def curve_sentence(curve: pd.DataFrame) -> str:
    """Each OOD set's points below the in-distribution test set, and the paper's check: did the OOD sets that
    end below it (the sets the likelihood fails on) stay below at every point of training?"""
    result = early_stopping_finding(curve)
    if not result["sets"]:
        return "no OOD set was scored"
    counts = "; ".join(f"{name} below the test set at {entry['ood_lower']}/{entry['points']} points"
                       for name, entry in result["sets"].items())
    last = int(curve["step"].max())
    final = curve[curve["step"] == last]
    in_test = final.loc[final["set"] == "in_test", "bpd_mean"]
    failing = [f"{row.dataset}@{row.split}" for row in final[final["set"] == "ood"].itertuples()
               if len(in_test) and row.bpd_mean < in_test.iloc[0]]
    if not failing:
        return f"{counts}; no OOD set ends below the test set, so there is no failure for early stopping to avoid"
    early = [f"{name} (not below at step {result['sets'][name]['first_not_lower']})" for name in failing
             if not result["sets"][name]["holds"]]
    verdict = (f"of the sets that end below it ({', '.join(failing)}), "
               + ("every one was below at every point: early stopping would not have helped (the paper's finding "
                  "holds)" if not early else f"{', '.join(early)} was not below throughout: stopping early could "
                  "have told it apart"))
    return f"{counts}; {verdict}"


def _curves(runs: list[Path], out_dir: Path | None, found: Analyses) -> None:
    lines = []
    for run in runs:
        paths = RunPaths(run)
        if not paths.ood_curve.is_file():
            continue
        curve = read_curve(paths.ood_curve)
        if curve.empty:
            continue
        record = RunRecord.read(paths.config)
        lines.append(f"- {record.model} on {record.dataset} (seed {record.seed}): {curve_sentence(curve)}")
        if out_dir is not None:
            name = f"curve_{run.name}.png"
            ood_curve_figure(curve, {"model": record.model, "dataset": record.dataset, "seed": record.seed},
                             out_dir / name)
            found.files.append(name)
            lines.append(f"  ![{record.model} {record.dataset} seed {record.seed}: bits/dim over training]({name})")
    if lines:
        found.markdown += [
            "## Likelihood over training (\"early stopping does not help\")",
            "",
            "Mean bits/dim of fixed subsets of the training images, the test set and each OOD set during training "
            "(`logs/ood_curve.csv`); the paper's finding holds where every OOD set stays below the in-distribution "
            "test set at every point after the first update.",
            "", *lines, ""]


def _bpd(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{mean:.3f}"


def samples_markdown(rows: pd.DataFrame) -> str:
    """One row per (run, pair): bits/dim (mean ± std) of the samples, the test set and the OOD set, and the
    likelihood's AUROCs (OOD positive) of test vs OOD, samples vs OOD (with its 95% interval) and test vs
    samples."""
    table = []
    for row in rows.to_dict("records"):
        temperature = row.get("temperature", np.nan)
        table.append({
            "model": row["model"], "seed": row["seed"], "pair": display_name(str(row["pair"])),
            "samples (T)": f"{int(row['n_samples'])}" + (f" (T={temperature:g})" if np.isfinite(temperature) else ""),
            "bits/dim samples": _bpd(row["bpd_samples_mean"], row["bpd_samples_std"]),
            "in-test": _bpd(row["bpd_in_test_mean"], row["bpd_in_test_std"]),
            "OOD": _bpd(row["bpd_ood_mean"], row["bpd_ood_std"]),
            "AUROC test vs OOD": f"{row['auroc_in_test_vs_ood']:.3f}",
            "AUROC samples vs OOD [95%]": f"{row['auroc_samples_vs_ood']:.3f} [{row['auroc_samples_vs_ood_low']:.2f}, "
                                          f"{row['auroc_samples_vs_ood_high']:.2f}]",
            "AUROC test vs samples": f"{row['auroc_in_test_vs_samples']:.3f}",
        })
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)  # the numbers as formatted here


def samples_reading(rows: pd.DataFrame) -> str:
    """The samples table in words: how often the OOD set is rated likelier than the model's own samples, and
    whether that goes with the failure on the test set (Kamkari et al.: it does)."""
    n = len(rows)
    ood_above_samples = rows["auroc_samples_vs_ood"] < 0.5
    ood_above_test = rows["auroc_in_test_vs_ood"] < 0.5
    both = int((ood_above_samples & ood_above_test).sum())
    samples_worse = int((rows["auroc_in_test_vs_samples"] > 0.5).sum())
    sentences = [
        "Reading the table: an AUROC below 0.5 means the second set gets fewer bits/dim (is rated likelier) than "
        "the first.",
        f"The OOD set is rated likelier than the model's own samples in {int(ood_above_samples.sum())} of {n} "
        f"(run, pair)s and likelier than the test set in {int(ood_above_test.sum())}"
        + (f"; in {both} both at once: the likelihood ranks the OOD images above what the model itself generates, "
           "the paradox Kamkari et al. explain by the OOD set's low intrinsic dimension." if both else "."),
        f"The samples get more bits/dim than the test images in {samples_worse} of {n}."]
    return " ".join(sentences)


def samples_sets(paths: RunPaths) -> list[tuple[str, str, np.ndarray]]:
    """(role, label, bits/dim) of a run's samples figure: its test set and its samples (those of its first
    evaluated pair) and the OOD set of every pair."""
    sets = []
    for path in _tables(paths.root, SAMPLES):
        row = pd.read_csv(path).iloc[0]
        scores, _ = evaluation_scores(paths, parse_pair(str(row["pair"])))
        if not sets:
            test = scores[scores["set"] == "in_test"]
            sets.append(("in_test", f"{display_name(test['dataset'].iloc[0])} {test['split'].iloc[0]} "
                                    f"(in-distribution test, n={len(test):,})", test["bpd"].to_numpy(float)))
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as archive:
                bpd = archive["bpd"].astype(float)
            how = f"T={row['temperature']:g}, " if np.isfinite(row.get("temperature", np.nan)) else ""
            sets.append(("samples", f"the model's own samples ({how}n={len(bpd):,})", bpd))
        out = scores[scores["set"] == "out_test"]
        sets.append(("ood", f"{display_name(out['dataset'].iloc[0])} {out['split'].iloc[0]} (OOD, n={len(out):,})",
                     out["bpd"].to_numpy(float)))
    return sets


def _samples(runs: list[Path], out_dir: Path | None, found: Analyses) -> None:
    tables, lines = [], []
    for run in runs:
        paths = RunPaths(run)
        rows = [pd.read_csv(path) for path in _tables(run, SAMPLES)]
        if not rows:
            continue
        tables += rows
        first = rows[0].iloc[0]
        shown = []
        if out_dir is not None and grid_file(paths).is_file():
            name = f"samples_{run.name}.png"
            write_with(out_dir / name, lambda tmp, grid=grid_file(paths): shutil.copyfile(grid, tmp))
            found.files.append(name)
            shown.append(f"![{first['model']} {first['in_dataset']} seed {first['seed']}: samples]({name})")
        if out_dir is not None:
            name = f"samples_bpd_{run.name}.png"
            try:
                samples_figure(samples_sets(paths), {"model": first["model"], "dataset": first["in_dataset"],
                                                     "seed": first["seed"]}, out_dir / name)
            except (OodbenchError, OSError, KeyError, IndexError):
                pass  # an evaluation or the samples' bits/dim since removed: the table row stays, the figure goes
            else:
                found.files.append(name)
                shown.append(f"![{first['model']} {first['in_dataset']} seed {first['seed']}: bits/dim of samples]"
                             f"({name})")
        if shown:
            lines.append(f"- {first['model']} on {display_name(str(first['in_dataset']))} (seed {first['seed']}): "
                         + " ".join(shown))
    if not tables:
        return
    rows = pd.concat(tables, ignore_index=True)
    if out_dir is not None:
        write_with(out_dir / "samples.csv", lambda tmp: rows.to_csv(tmp, index=False, float_format="%.6f"))
        found.files.append("samples.csv")
    found.markdown += [
        "## The model's own samples (Kamkari et al., ICML 2024)",
        "",
        "Each run draws samples from its model (Glow and CV-Glow at temperature T, PixelCNN++ pixel by pixel, the VAE "
        "through its decoder; seeded), scores them like any set with the pair's evaluation settings, and puts their "
        "bits/dim beside the test set's and the OOD set's (`samples.csv`). AUROCs are of the likelihood (bits/dim, "
        "larger = more OOD), the second-named set positive.",
        "", samples_markdown(rows), "", samples_reading(rows), "", *lines, ""]


def gather_analyses(runs: list[Path], out_dir: Path) -> Analyses:
    """The analyses of `runs`, written into the report folder `out_dir`, and their results.md section."""
    found = Analyses()
    for part in (_decomposition, _second_order, _curves, _samples):
        part(runs, out_dir, found)
    return found


def run_figures(paths: RunPaths) -> list[Path]:
    """The figures of one run's analyses, drawn into its own `analysis/` folder."""
    written = []
    for path in _tables(paths.root, DECOMPOSITION):
        pair = str(pd.read_csv(path, usecols=["pair"])["pair"].iloc[0])
        written.append(decomposition_figure(*evaluation_scores(paths, parse_pair(pair)), path.with_suffix(".png")))
    tables = [pd.read_csv(path) for path in _tables(paths.root, SECOND_ORDER)]
    if tables:
        written.append(second_order_figure(pd.concat(tables).to_dict("records"), paths.analysis / "second_order.png"))
    if paths.ood_curve.is_file():
        record = RunRecord.read(paths.config)
        written.append(ood_curve_figure(read_curve(paths.ood_curve), {"model": record.model, "dataset": record.dataset,
                                                                      "seed": record.seed},
                                        paths.analysis / "ood_curve.png"))
    if _tables(paths.root, SAMPLES):
        record = RunRecord.read(paths.config)
        written.append(samples_figure(samples_sets(paths), {"model": record.model, "dataset": record.dataset,
                                                            "seed": record.seed}, paths.analysis / "samples_bpd.png"))
    return written
