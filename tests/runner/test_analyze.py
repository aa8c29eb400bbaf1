"""`oodbench analyze` end to end on real staged data: a tiny Glow trained with the likelihood curve,
evaluated, analysed (decomposition, second order, curve), and gathered by `oodbench report`; and the
sweep's plan for a flow's analyses."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from cli_runs import run_cli
from oodbench.cli import main
from oodbench.config import AnalysisConfig, EvalConfig, Profile
from oodbench.runner.sweep import CellPlan, SweepSettings, cells, plan_cell, run_cell

pytestmark = pytest.mark.slow
TINY = ["--set", "levels=2", "--set", "steps=2", "--set", "hidden_channels=16"]
PAIR = "fashionmnist:mnist"


def _cli(args: list) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 0


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, staged_root):
    runs = tmp_path_factory.mktemp("runs")
    _cli(["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", staged_root, "--epochs", "2",
          "--limit-train", "256", "--batch-size", "64", "--runs-dir", runs, "--curve-ood", "mnist", "--curve-every",
          "2", "--quiet", *TINY])
    run = runs / "glow-fashionmnist-seed0"
    _cli(["evaluate", "--run", run, "--pair", PAIR, "--scores", "likelihood", "--limit", "200", "--train-sample", "100",
          "--quiet"])
    _cli(["analyze", "--run", run, "--pair", PAIR, "--n-images", "32", "--probes", "8"])
    return runs, run


def test_analyze_writes_the_tables_and_figures(analysed):
    _, run = analysed
    names = {path.name for path in (run / "analysis").iterdir()}
    assert {"decomposition_fashionmnist_vs_mnist.csv", "decomposition_fashionmnist_vs_mnist.png",
            "second_order_fashionmnist_vs_mnist.csv", "second_order.png", "ood_curve.png"} <= names
    table = pd.read_csv(run / "analysis" / "decomposition_fashionmnist_vs_mnist.csv")
    scores = pd.read_csv(run / "eval" / "fashionmnist_vs_mnist" / "scores.csv")
    test = scores[scores["set"] == "out_test"]
    row = table[(table["set"] == "out_test") & (table["term"] == "logdet")].iloc[0]
    # the volume term's mean contribution, from the evaluation's own per-image log|det| (784 dimensions)
    assert row["mean_bpd"] == pytest.approx(-(test["logdet"] / (784 * math.log(2))).mean(), abs=1e-5)
    assert row["n"] == len(test) == 200
    second = pd.read_csv(run / "analysis" / "second_order_fashionmnist_vs_mnist.csv").iloc[0]
    assert second["n_p"] == second["n_q"] == 32 and second["diag_method"] != "exact"
    # the variance terms are of the whole sets: every image trained on, every MNIST test image
    assert second["n_p_all"] == 256 and second["n_q_all"] == 10_000
    assert all(math.isfinite(second[c]) for c in ("closed_form_bpd", "diag_term_bpd", "covariance_bpd",
                                                   "measured_gap_bpd", "var_diff_paper_c0"))
    curve = pd.read_csv(run / "logs" / "ood_curve.csv")
    assert set(curve["set"]) == {"in_train", "in_test", "ood"} and curve["step"].min() == 0


def test_report_gathers_the_analyses(analysed, tmp_path, capsys):
    runs, _ = analysed
    code, out, err = run_cli(["report", "--runs", runs, "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    text = (tmp_path / "report" / "results.md").read_text()
    for heading in ("The decomposition of a flow's likelihood", "The second-order explanation",
                    "Likelihood over training"):
        assert heading in text
    assert "(second_order.png)" in text and "curve_glow-fashionmnist-seed0.png" in text
    assert (tmp_path / "report" / "decomposition.csv").is_file() and (tmp_path / "report" / "second_order.csv").is_file()


def test_analyses_that_do_not_apply_exit_2_with_one_line(analysed, capsys):
    _, run = analysed
    code, out, err = run_cli(["analyze", "--run", run, "--what", "decomposition"], capsys)  # no --pair
    assert code == 2 and "need --pair" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["analyze", "--run", run, "--what", "spectra", "--pair", PAIR], capsys)
    assert code == 2 and "expected a list of decomposition, second-order, curve" in err


def test_the_sweep_plans_a_flows_missing_analyses(analysed, staged_root):
    runs, _ = analysed
    profile = Profile(name="t", models={"glow": {}, "pixelcnn": {}}, eval=EvalConfig(scores=("likelihood",)),
                      pairs=(PAIR,), analysis=AnalysisConfig(n_images=32, probes=8))
    glow, pixelcnn = (next(c for c in cells(profile) if c.model == m) for m in ("glow", "pixelcnn"))
    # a PixelCNN++'s evaluations get the analyses that apply to any family (its own samples), and no curve
    assert glow.analyze and glow.curve_ood == ("mnist",) and pixelcnn.analyze and pixelcnn.curve_ood == ()
    done = plan_cell(glow, runs, str(staged_root), download=False, scores=("likelihood",), analysis=profile.analysis)
    assert done.action == "done" and done.analyses == ()
    (runs / glow.name / "analysis" / "second_order_fashionmnist_vs_mnist.csv").rename(runs / "moved.csv")
    try:
        todo = plan_cell(glow, runs, str(staged_root), download=False, scores=("likelihood",),
                         analysis=profile.analysis)
        assert todo.action == "analyze" and todo.analyses == (PAIR,)
    finally:
        (runs / "moved.csv").rename(runs / glow.name / "analysis" / "second_order_fashionmnist_vs_mnist.csv")


def test_the_sweep_reads_no_curve_of_a_seed_that_records_none(analysed, staged_root):
    """A (model, dataset)'s later seeds train without the curve: their analyses must not ask for it."""
    runs, _ = analysed
    profile = Profile(name="t", models={"glow": {}}, eval=EvalConfig(scores=("likelihood",)), pairs=(PAIR,),
                      analysis=AnalysisConfig(what=("decomposition", "curve"), n_images=32, probes=8))
    glow = next(c for c in cells(profile) if c.model == "glow")
    later_seed = dataclasses.replace(glow, curve_ood=())  # what `cells` gives a seed after the first
    curve = runs / glow.name / "logs" / "ood_curve.csv"
    curve.rename(runs / "curve.csv")
    messages = []
    try:
        plan = CellPlan(cell=later_seed, action="analyze", analyses=(PAIR,))
        run_cell(plan, SweepSettings(profile=profile, runs_dir=runs, data_root=str(staged_root), quiet=True),
                 messages.append)
    finally:
        (runs / "curve.csv").rename(curve)
    assert messages == []
    assert (runs / glow.name / "analysis" / "decomposition_fashionmnist_vs_mnist.csv").is_file()
