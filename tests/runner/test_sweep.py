"""The sweep: deterministic cells, shards that partition them, skips for missing data (kills and
resumes: test_kill_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from oodbench.config import EvalConfig, Profile, load_profile
from oodbench.errors import OodbenchError
from oodbench.runner.sweep import cells, parse_only, parse_shard, plan_cell

PROFILE = Profile(name="t", models={"glow": {}, "cv-glow": {}}, eval=EvalConfig(scores=("likelihood",)),
                  pairs=("cifar10:svhn@train", "cifar10:noise", "fashionmnist:mnist"), seeds=(1, 0))


def test_cells_are_deterministic_and_grouped_by_in_dataset():
    got = cells(PROFILE)
    assert [c.name for c in got] == [
        "cv-glow-cifar10-seed0", "cv-glow-cifar10-seed1", "cv-glow-fashionmnist-seed0", "cv-glow-fashionmnist-seed1",
        "glow-cifar10-seed0", "glow-cifar10-seed1", "glow-fashionmnist-seed0", "glow-fashionmnist-seed1"]
    assert got[0].pairs == ("cifar10:svhn@train", "cifar10:noise")
    assert all(c.background is None and c.background_run is None and not c.members for c in got)


def test_background_models_and_ensembles_get_their_cells():
    profile = Profile(name="t", models={"vae": {}}, pairs=("cifar10:svhn", "fashionmnist:mnist"), seeds=(0,),
                      dataset_seeds={"cifar10": (2, 0, 1)}, background=0.3)
    got = cells(profile)  # every score: the likelihood ratio and the ensemble scores among them
    assert [c.name for c in got] == [
        "vae-cifar10-seed0-bg0.3", "vae-cifar10-seed0", "vae-cifar10-seed1", "vae-cifar10-seed2",
        "vae-fashionmnist-seed0-bg0.3", "vae-fashionmnist-seed0"]
    backgrounds = [c for c in got if c.background is not None]
    assert all(c.pairs == () and c.background == 0.3 for c in backgrounds)
    foreground = [c for c in got if c.background is None]
    # one background model per (model, dataset), used by every seed's likelihood ratio
    assert [c.background_run for c in foreground] == ["vae-cifar10-seed0-bg0.3"] * 3 + ["vae-fashionmnist-seed0-bg0.3"]
    # the last seed of a dataset with several scores the ensemble of all of them; one seed makes no ensemble
    assert [c.members for c in foreground] == [(), (), (0, 1, 2), ()]
    # a shard keeps a (model, dataset) group together
    assert [c.name for c in cells(profile, shard=(1, 2))] == ["vae-fashionmnist-seed0-bg0.3", "vae-fashionmnist-seed0"]
    only_likelihood = Profile(name="t", models={"vae": {}}, pairs=("cifar10:svhn",), seeds=(0, 1),
                              eval=EvalConfig(scores=("likelihood", "waic")))
    assert [(c.name, c.members) for c in cells(only_likelihood)] == [("vae-cifar10-seed0", ()),
                                                                    ("vae-cifar10-seed1", (0, 1))]


def test_shards_partition_the_cells():
    everything = [c.name for c in cells(PROFILE)]
    shards = [[c.name for c in cells(PROFILE, shard=(i, 3))] for i in range(3)]
    assert all(shards)
    assert sorted(sum(shards, [])) == sorted(everything)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1:])


def test_only_filters():
    got = cells(PROFILE, only=parse_only("model=glow,dataset=cifar10,seed=1"))
    assert [c.name for c in got] == ["glow-cifar10-seed1"]


@pytest.mark.parametrize("text", ["x", "1/1", "-1/2", "a/b", "2/2"])
def test_bad_shard(text):
    with pytest.raises(OodbenchError, match="--shard"):
        parse_shard(text)


@pytest.mark.parametrize("text", ["modle=glow", "model", "model="])
def test_bad_only(text):
    with pytest.raises(OodbenchError, match="--only"):
        parse_only(text)


def test_missing_data_skips_the_cell_or_the_pair(tmp_path, staged_root):
    cifar, fmnist = cells(PROFILE, only={"model": "glow", "seed": "0"})
    plan = plan_cell(cifar, tmp_path, str(staged_root), download=False)
    assert plan.action == "train" and plan.pairs == ("cifar10:svhn@train", "cifar10:noise")
    empty = tmp_path / "empty"
    empty.mkdir()
    plan = plan_cell(fmnist, tmp_path, str(empty), download=False)
    assert plan.action == "skip" and "fashionmnist train" in plan.reason


def test_repository_profiles_plan(staged_root):
    for name in ("demo", "quick", "paper"):
        profile = load_profile(name, Path(__file__).resolve().parents[2] / "benchmarks.yaml")
        assert cells(profile)
        if name != "demo":  # the matrix: every family on every pair
            assert set(profile.models) == {"glow", "cv-glow", "pixelcnn", "vae", "diffusion"}
            assert {c.model for c in cells(profile)} == set(profile.models)


@pytest.mark.slow
def test_a_failing_cell_does_not_stop_the_others(tmp_path, staged_root, capsys, monkeypatch):
    import pandas as pd

    from oodbench.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.yaml").write_text(
        "profiles:\n  two:\n    train: {epochs: 1, batch_size: 32, limit_train: 64, val_size: 16, warmup_steps: 2}\n"
        "    eval: {batch_size: 50, train_sample: 10, limit: 20, scores: [likelihood]}\n"
        "    models:\n      glow: {levels: 2, steps: 1, hidden_channels: 8}\n"
        # MNIST has one channel and CIFAR-10 three: without match_channels that evaluation fails.
        "    pairs: [fashionmnist:mnist, mnist:cifar10]\n")
    with pytest.raises(SystemExit) as done:
        main(["sweep", "--profile", "two", "--config", str(tmp_path / "benchmarks.yaml"), "--data-root",
              str(staged_root), "--quiet"])
    out, err = capsys.readouterr()
    assert done.value.code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "1 cell(s) failed (glow-mnist-seed0" in lines[0], err
    assert "cell glow-mnist-seed0 failed" in out and "--match-channels" in out
    results = pd.read_csv(tmp_path / "results" / "two" / "results.csv")
    assert set(results["pair"]) == {"fashionmnist:mnist"}  # the cell that worked is reported
