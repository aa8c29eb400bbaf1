"""Scores that need more than one run, end to end on real staged data: a background model trained on
perturbed images (Ren et al. 2019), an ensemble of seeds, both joined onto an evaluation; what a
background run's training actually sees."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from cli_runs import run_cli as cli

from oodbench.cli import main
from oodbench.models.module import LikelihoodModule

TINY = ["--set", "levels=2", "--set", "steps=1", "--set", "hidden_channels=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, staged_root):
    """Tiny Glows on 128 Fashion-MNIST images: seeds 0 and 1, and a background model (rate 0.2) of seed 0."""
    folder = tmp_path_factory.mktemp("runs")
    base = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", str(staged_root), "--epochs", "1",
            "--limit-train", "128", "--batch-size", "64", "--runs-dir", str(folder), "--quiet", *TINY]
    for extra in ([], ["--seed", "1"], ["--background", "0.2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(base + extra)
        assert exit_info.value.code == 0
    return folder


def test_a_background_run_says_what_it_is(runs):
    folder = runs / "glow-fashionmnist-seed0-bg0.2"
    record = yaml.safe_load((folder / "config.yaml").read_text())
    assert record["train"]["background"] == 0.2
    assert yaml.safe_load((runs / "glow-fashionmnist-seed0" / "config.yaml").read_text())["train"]["background"] is None


def test_background_training_sees_perturbed_batches(monkeypatch):
    seen = []
    module = LikelihoodModule(family="glow", model_settings={"levels": 2, "steps": 1, "hidden_channels": 8},
                              train_settings={"background": 0.3, "seed": 0}, bpd_dims=784)
    monkeypatch.setattr(module.model, "training_log_prob", lambda x: seen.append(x) or torch.zeros(x.shape[0]))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    x = torch.full((32, 1, 32, 32), 40, dtype=torch.uint8)
    torch.manual_seed(0)
    module.training_step((x, torch.arange(32)), 0)
    assert (seen[0] != x).double().mean().item() == pytest.approx(0.3 * 255 / 256, abs=0.01)
    clean = LikelihoodModule(family="glow", model_settings={"levels": 2, "steps": 1, "hidden_channels": 8},
                             train_settings={"seed": 0}, bpd_dims=784)
    monkeypatch.setattr(clean.model, "training_log_prob", lambda x: seen.append(x) or torch.zeros(x.shape[0]))
    monkeypatch.setattr(clean, "log", lambda *args, **kwargs: None)
    clean.training_step((x, torch.arange(32)), 0)
    assert torch.equal(seen[1], x)


@pytest.mark.slow
def test_ratio_and_ensemble_scores_join_the_other_runs(runs, staged_root, capsys):
    run, background, member = (runs / name for name in (
        "glow-fashionmnist-seed0", "glow-fashionmnist-seed0-bg0.2", "glow-fashionmnist-seed1"))
    common = ["--pair", "fashionmnist:mnist", "--data-root", staged_root, "--limit", "60", "--train-sample", "20",
              "--quiet"]
    code, _, err = cli(["evaluate", "--run", run, *common, "--background-run", background, "--member-run", member,
                        "--scores", "likelihood,likelihood_ratio,ensemble_likelihood,waic"], capsys)
    assert code == 0, err
    folder = run / "eval" / "fashionmnist_vs_mnist"
    content = json.loads((folder / "metrics.json").read_text())
    rows = {row["score"]: row for row in content["rows"]}
    assert set(rows) == {"likelihood", "likelihood_ratio", "ensemble_likelihood", "waic"}, content["skipped"]
    assert rows["waic"]["members"] == "0,1" and rows["likelihood"]["background_run"] == str(background)
    scores = pd.read_csv(folder / "scores.csv")
    # The independent reference: each companion evaluated as a run of its own gives the same numbers.
    for other, column in ((background, "background_bpd"), (member, None)):
        code, _, err = cli(["evaluate", "--run", other, *common, "--scores", "likelihood"], capsys)
        assert code == 0, err
        alone = pd.read_csv(other / "eval" / "fashionmnist_vs_mnist" / "scores.csv")
        for name in ("in_test", "out_test"):
            mine, theirs = scores[scores["set"] == name], alone[alone["set"] == name]
            assert np.array_equal(mine["index"], theirs["index"])
            if column:
                np.testing.assert_allclose(mine[column], theirs["bpd"], atol=2e-6)
            else:
                np.testing.assert_allclose(mine["member_log_px_1"], theirs["log_px"], rtol=1e-6)
    compared = scores[scores["set"].isin(["in_test", "out_test"])]
    np.testing.assert_allclose(compared["score:likelihood_ratio"], compared["bpd"] - compared["background_bpd"],
                               atol=1e-5)
    np.testing.assert_allclose(compared["member_log_px_0"], compared["log_px"], rtol=1e-6)
    # The companions score only the compared sets (no score here is fitted): nothing is computed for the others.
    others = scores[~scores["set"].isin(["in_test", "out_test"])]
    assert len(others) and others[["background_bpd", "score:likelihood_ratio", "score:waic"]].isna().all(axis=None)


@pytest.mark.slow
def test_companions_that_do_not_fit_are_one_line_errors(runs, staged_root, capsys):
    run = runs / "glow-fashionmnist-seed0"
    common = ["evaluate", "--run", run, "--pair", "fashionmnist:mnist", "--data-root", staged_root, "--limit", "20",
              "--quiet"]
    for extra, fragment in ((["--background-run", runs / "glow-fashionmnist-seed1"], "is not a background model"),
                            (["--member-run", runs / "glow-fashionmnist-seed0-bg0.2"], "not the same setup"),
                            (["--member-run", run], "is the run being evaluated")):
        code, _, err = cli([*common, *extra], capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    # without a background model the ratio is skipped with what to do, not an error
    code, out, err = cli([*common, "--scores", "likelihood_ratio"], capsys)
    assert code == 0, err
    skipped = json.loads((run / "eval" / "fashionmnist_vs_mnist" / "metrics.json").read_text())["skipped"]
    assert "--background 0.2" in skipped["likelihood_ratio"]
