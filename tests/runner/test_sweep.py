"""The sweep: deterministic cells, shards that partition them, skips for missing data, and a kill
at any moment followed by the same command giving the same results as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from oodbench.config import Profile, load_profile
from oodbench.errors import OodbenchError
from oodbench.runner.sweep import cells, parse_only, parse_shard, plan_cell

PROFILE = Profile(name="t", models={"glow": {}, "cv-glow": {}},
                  pairs=("cifar10:svhn@train", "cifar10:noise", "fashionmnist:mnist"), seeds=(1, 0))

TINY_YAML = """
profiles:
  tiny:
    data_root: demo
    train: {epochs: 4, batch_size: 32, limit_train: 1280, val_size: 32, warmup_steps: 2}
    eval: {batch_size: 50, train_sample: 40, limit: 60}
    models:
      glow: {levels: 2, steps: 2, hidden_channels: 16}
    pairs: [fashionmnist:mnist]
    seeds: [0]
"""


def test_cells_are_deterministic_and_grouped_by_in_dataset():
    got = cells(PROFILE)
    assert [c.name for c in got] == [
        "cv-glow-cifar10-seed0", "cv-glow-cifar10-seed1", "cv-glow-fashionmnist-seed0", "cv-glow-fashionmnist-seed1",
        "glow-cifar10-seed0", "glow-cifar10-seed1", "glow-fashionmnist-seed0", "glow-fashionmnist-seed1"]
    assert got[0].pairs == ("cifar10:svhn@train", "cifar10:noise")


def test_shards_partition_the_cells():
    everything = [c.name for c in cells(PROFILE)]
    shards = [[c.name for c in cells(PROFILE, shard=(i, 3))] for i in range(3)]
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


def sweep_command(config: Path, runs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "oodbench", "sweep", "--config", str(config), "--profile", "tiny",
            "--runs-dir", str(runs), "--out", str(out), "--quiet"]


@pytest.mark.slow
def test_killed_sweep_resumes_to_identical_results(tmp_path):
    config = tmp_path / "benchmarks.yaml"
    config.write_text(TINY_YAML)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    straight = subprocess.run(sweep_command(config, tmp_path / "a", tmp_path / "ra"), env=env,
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    # Kill the same sweep as soon as the first epoch's checkpoint exists, then run it again.
    runs_b = tmp_path / "b"
    process = subprocess.Popen(sweep_command(config, runs_b, tmp_path / "rb"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = runs_b / "glow-fashionmnist-seed0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (runs_b / "glow-fashionmnist-seed0" / "trained.json").exists(), "killed too late to test resuming"
    again = subprocess.run(sweep_command(config, runs_b, tmp_path / "rb"), env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr

    pair = Path("glow-fashionmnist-seed0/eval/fashionmnist_vs_mnist/scores.csv")
    a, b = pd.read_csv(tmp_path / "a" / pair), pd.read_csv(runs_b / pair)
    pd.testing.assert_frame_equal(a, b)
    ra, rb = pd.read_csv(tmp_path / "ra" / "results.csv"), pd.read_csv(tmp_path / "rb" / "results.csv")
    columns = [c for c in ra.columns if c != "run"]
    pd.testing.assert_frame_equal(ra[columns], rb[columns])

    # A third run finds everything done and changes nothing.
    third = subprocess.run(sweep_command(config, runs_b, tmp_path / "rb") + ["--dry-run"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "done" in third.stdout


def test_repository_profiles_plan(staged_root):
    for name in ("demo", "quick", "paper"):
        profile = load_profile(name, Path(__file__).resolve().parents[2] / "benchmarks.yaml")
        assert cells(profile)
        if name != "demo":  # the matrix: every family on every pair
            assert set(profile.models) == {"glow", "cv-glow", "pixelcnn", "vae"}
            assert {c.model for c in cells(profile)} == set(profile.models)
