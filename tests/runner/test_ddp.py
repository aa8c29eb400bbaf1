"""Training and evaluation under DDP on 2 CPU processes (gloo): the gathered per-sample scores, in
dataset index order, equal a single-process evaluation of the same checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

TINY = ["--set", "levels=2", "--set", "steps=1", "--set", "hidden_channels=8"]


def oodbench(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    # A real command line: Lightning's DDP launcher re-runs it for the second process.
    done = subprocess.run([sys.executable, "-m", "oodbench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_ddp_train_and_evaluate_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    oodbench(["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--epochs", "1",
              "--limit-train", "256", "--batch-size", "32", "--quiet", *TINY, *ddp], tmp_path, env)
    run = tmp_path / "runs" / "glow-fashionmnist-seed0"
    assert (run / "trained.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    scores_csv = run / "eval" / "fashionmnist_vs_mnist" / "scores.csv"
    common = ["evaluate", "--pair", "fashionmnist:mnist", "--run", str(run), "--limit", "101", "--train-sample", "33",
              "--quiet"]
    oodbench([*common, "--batch-size", "16", *ddp], tmp_path, env)  # 101 images split unevenly over 2 processes
    distributed = pd.read_csv(scores_csv)
    oodbench([*common, "--batch-size", "64", "--accelerator", "cpu", "--devices", "1"], tmp_path, env)
    single = pd.read_csv(scores_csv)

    assert distributed["set"].value_counts().to_dict() == {"in_train": 33, "in_val": 500, "in_test": 101, "out_test": 101}
    pd.testing.assert_frame_equal(distributed[["set", "dataset", "split", "index"]],
                                  single[["set", "dataset", "split", "index"]])
    for column in ("log_px", "bpd", "log_pz", "logdet"):
        # Equal up to float32 rounding: convolution kernels differ with batch composition.
        np.testing.assert_allclose(distributed[column], single[column], rtol=1e-6, atol=1e-4)
