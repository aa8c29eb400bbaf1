"""The model's own samples of a run (runner/samples.py): drawn once per checkpoint and settings, their grid,
and end to end on a tiny trained VAE (a family the flows' analyses do not apply to): `analyze --what
samples` scores them like any set, `report` shows them, a sweep plans and writes them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import oodbench.runner.samples as samples_module
from cli_runs import run_cli
from fake_runs import fake_run
from oodbench.cli import main
from oodbench.config import AnalysisConfig, EvalConfig, Profile
from oodbench.runner import RunPaths
from oodbench.runner.run_loading import load_module
from oodbench.runner.samples import grid_file, run_samples, samples_file
from oodbench.schema import RunRecord
from oodbench.runner.sweep import CellPlan, SweepSettings, cells, plan_cell, run_cell
from oodbench.units import bits_per_dim

PAIR = "fashionmnist:mnist"


@pytest.fixture
def counted_draws(monkeypatch):
    """Every draw `run_samples` makes, by its (n, temperature)."""
    draws = []
    real = samples_module.draw_samples

    def draw(model, n, **kwargs):
        draws.append((n, kwargs["temperature"]))
        return real(model, n, **kwargs)

    monkeypatch.setattr(samples_module, "draw_samples", draw)
    return draws


def test_samples_are_drawn_once_per_checkpoint_count_and_temperature(tmp_path, staged_root, counted_draws):
    paths = fake_run(tmp_path / "run", staged_root)
    settings = AnalysisConfig(n_samples=6)
    first = run_samples(paths, settings, device="cpu")
    assert first.images.images.shape == (6, 1, 32, 32) and first.temperature == 1.0
    assert (first.images.name, first.images.split) == ("samples", "model") and first.draw_seconds is not None
    again = run_samples(paths, settings, device="cpu")
    assert counted_draws == [(6, 1.0)] and again.draw_seconds is None  # read back from analysis/samples.npz
    assert torch.equal(again.images.images, first.images.images) and again.images.source == first.images.source
    run_samples(paths, AnalysisConfig(n_samples=6, sample_temperature=0.7), device="cpu")
    run_samples(paths, AnalysisConfig(n_samples=5, sample_temperature=0.7), device="cpu")
    assert counted_draws[1:] == [(6, 0.7), (5, 0.7)]
    samples_file(paths).unlink()  # drawn again: the same seed, the same samples
    assert torch.equal(run_samples(paths, settings, device="cpu").images.images, first.images.images)
    # a retrained checkpoint (other bytes) draws anew, and its samples are another set for the statistics cache
    checkpoint = torch.load(paths.best, weights_only=True)
    name = next(key for key in checkpoint["state_dict"] if key.endswith("top_prior.mean"))
    checkpoint["state_dict"][name] += 0.5
    torch.save(checkpoint, paths.best)
    redrawn = run_samples(paths, settings, device="cpu")
    assert len(counted_draws) == 5 and redrawn.images.source != first.images.source
    assert not torch.equal(redrawn.images.images, first.images.images)


def test_the_grid_holds_every_sample(tmp_path, staged_root):
    paths = fake_run(tmp_path / "run", staged_root, model="vae")
    drawn = run_samples(paths, AnalysisConfig(n_samples=7), device="cpu")
    assert drawn.temperature is None  # only Glow's prior has one
    grid = np.asarray(Image.open(grid_file(paths)))
    # ceil(sqrt(7)) = 3 per row, 3 rows, 32-pixel images with 2-pixel gaps
    assert grid.shape[:2] == (3 * 34 + 2, 3 * 34 + 2)
    images = drawn.images.images[:, 0].numpy()
    assert np.array_equal(grid[2:34, 2:34, 0], images[0]) and np.array_equal(grid[36:68, 2:34, 0], images[3])
    assert np.array_equal(grid[70:102, 2:34, 0], images[6]) and (grid[70:102, 36:, 0] == 255).all()  # no 8th


# --- end to end on a tiny trained VAE ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sampled(tmp_path_factory, staged_root):
    runs = tmp_path_factory.mktemp("runs")
    for args in (["train", "--model", "vae", "--dataset", "fashionmnist", "--data-root", staged_root, "--epochs", 1,
                  "--limit-train", 128, "--batch-size", 64, "--runs-dir", runs, "--quiet", "--set", "base_channels=4",
                  "--set", "latent_dim=3"],
                 ["evaluate", "--run", runs / "vae-fashionmnist-seed0", "--pair", PAIR, "--scores", "likelihood",
                  "--limit", 100, "--train-sample", 50, "--iw-samples", 2, "--quiet"],
                 ["analyze", "--run", runs / "vae-fashionmnist-seed0", "--pair", PAIR, "--what", "samples"]):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        assert exit_info.value.code == 0
    return runs, RunPaths(runs / "vae-fashionmnist-seed0")


@pytest.mark.slow
def test_analyze_scores_the_samples_like_any_set(sampled):
    _, paths = sampled
    row = pd.read_csv(paths.analysis_file("samples", "fashionmnist", "mnist")).iloc[0]
    with np.load(paths.analysis_file("samples", "fashionmnist", "mnist", ".npz")) as archive:
        bpd = archive["bpd"]
    assert row["n_samples"] == len(bpd) == 64 and math.isnan(row["temperature"])
    # the samples' bits/dim: the model's own bound on them, with the evaluation's k and index-seeded noise
    module, _ = load_module(paths.best)
    module.model.iw_samples = 2
    with np.load(samples_file(paths)) as archive:
        x = torch.from_numpy(archive["images"])
    index = torch.arange(len(x))
    with torch.no_grad():
        log_px = module.model.log_prob_parts(x, module.model.eval_noise(x, index, 0))["log_px"]
    assert np.allclose(bpd, bits_per_dim(log_px.double().numpy(), RunRecord.read(paths.config).bpd_dims), atol=1e-4)
    scores = pd.read_csv(paths.eval_dir("fashionmnist", "mnist") / "scores.csv")
    test, ood = (scores.loc[scores["set"] == name, "bpd"].to_numpy() for name in ("in_test", "out_test"))
    assert row["bpd_in_test_mean"] == pytest.approx(test.mean(), abs=1e-6) and row["n_ood"] == len(ood) == 100
    assert row["auroc_samples_vs_ood"] == pytest.approx(
        roc_auc_score(np.r_[np.zeros(len(bpd)), np.ones(len(ood))], np.r_[bpd, ood]), abs=1e-6)


@pytest.mark.slow
def test_report_shows_the_samples(sampled, tmp_path, capsys):
    runs, _ = sampled
    code, out, err = run_cli(["report", "--runs", runs, "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    text = (tmp_path / "report" / "results.md").read_text()
    assert "## The model's own samples (Kamkari et al., ICML 2024)" in text
    assert "(samples_vae-fashionmnist-seed0.png)" in text and "(samples_bpd_vae-fashionmnist-seed0.png)" in text
    assert (tmp_path / "report" / "samples_vae-fashionmnist-seed0.png").is_file()
    table = pd.read_csv(tmp_path / "report" / "samples.csv")
    assert list(table["pair"]) == [PAIR] and list(table["model"]) == ["vae"]
    section = text.split("## The model's own samples")[1]
    line = next(line for line in section.splitlines() if line.startswith("| vae"))
    assert f"{table['auroc_samples_vs_ood'].iloc[0]:.3f} [" in line


@pytest.mark.slow
def test_the_sweep_draws_the_samples_of_a_vae(sampled, staged_root):
    runs, paths = sampled
    profile = Profile(name="t", models={"vae": {}}, eval=EvalConfig(scores=("likelihood",), iw_samples=2),
                      pairs=(PAIR,), analysis=AnalysisConfig(n_samples=64))
    vae = next(c for c in cells(profile) if c.model == "vae")
    assert vae.analyze and vae.curve_ood == ()
    flows_only = Profile(name="t", models={"vae": {}}, pairs=(PAIR,), analysis=AnalysisConfig(what=("decomposition",)))
    assert not next(iter(cells(flows_only))).analyze
    plan = plan_cell(vae, runs, str(staged_root), download=False, scores=("likelihood",), analysis=profile.analysis)
    assert plan.action == "done"  # a VAE has no decomposition or second order to wait for
    table = paths.analysis_file("samples", "fashionmnist", "mnist")
    table.unlink()
    plan = plan_cell(vae, runs, str(staged_root), download=False, scores=("likelihood",), analysis=profile.analysis)
    assert plan.action == "analyze" and plan.analyses == (PAIR,)
    messages = []
    run_cell(CellPlan(cell=vae, action="analyze", analyses=(PAIR,)),
             SweepSettings(profile=profile, runs_dir=runs, data_root=str(staged_root), quiet=True), messages.append)
    assert messages == [] and table.is_file()  # nothing skipped: the flows' analyses are not even asked


@pytest.mark.slow
def test_analyze_without_a_pair_draws_the_grid_alone(sampled, capsys):
    _, paths = sampled
    code, out, err = run_cli(["analyze", "--run", paths.root, "--what", "samples"], capsys)
    assert code == 0, err
    assert "samples.png" in out and "samples_fashionmnist" not in out
