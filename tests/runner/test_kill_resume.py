"""A sweep killed at any moment, then run again, finishes with the results of an uninterrupted one;
SIGTERM and SIGINT stop a command within seconds, keep what is complete, exit 143 / 130 and say so.

The kills are SIGKILLs the process sends itself at named moments (`oodbench.failpoints`): at start-up,
mid-epoch, during validation, between an epoch's log row and its checkpoint, right after a resume,
during scoring and between two result files. One run folder goes through all of them in turn, each
rerun starting from what the previous kill left, as a user's would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from oodbench.schema import measured_columns

TINY_YAML = """
profiles:
  tiny:
    data_root: demo
    train: {epochs: 3, batch_size: 32, limit_train: 128, val_size: 32, warmup_steps: 2}
    eval: {batch_size: 20, train_sample: 20, limit: 40}
    models:
      glow: {levels: 2, steps: 1, hidden_channels: 8}
    pairs: [fashionmnist:mnist]
    seeds: [0]
"""
RUN = "glow-fashionmnist-seed0"
# In order; each is the N-th time this process reaches the moment (sanity check = validation 1).
KILLS = (
    "startup",  # nothing trained yet
    "train-batch:2",  # inside the first epoch
    "validation:2",  # the first epoch's validation
    "epoch-logged:1",  # epoch 1's row written, its checkpoint not
    "train-batch:6",  # inside epoch 2, epoch 1 checkpointed
    "resumed",  # right after resuming from epoch 1
    "validation:2",  # epoch 2's validation, in a resumed run
    "scoring:2",  # training done, scoring under way
    "scores-written",  # scores.csv written, metrics.json not
)


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def sweep(tmp: Path, runs: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "oodbench", "sweep", "--config", str(tmp / "benchmarks.yaml"), "--profile", "tiny",
               "--runs-dir", str(tmp / runs), "--out", str(tmp / f"results-{runs}"), "--quiet"]
    env = environment(**({"OODBENCH_KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_sweep_killed_at_every_moment_finishes_with_the_uninterrupted_results(tmp_path):
    (tmp_path / "benchmarks.yaml").write_text(TINY_YAML)
    straight = sweep(tmp_path, "a")
    assert straight.returncode == 0, straight.stderr

    for kill_at in KILLS:
        killed = sweep(tmp_path, "b", kill_at)
        assert killed.returncode == -signal.SIGKILL, f"{kill_at}: not killed (rc {killed.returncode}) {killed.stderr[-2000:]}"
    again = sweep(tmp_path, "b")
    assert again.returncode == 0, again.stderr
    assert "will be deleted" not in again.stderr and "Previous log" not in again.stderr

    a, b = tmp_path / "a" / RUN, tmp_path / "b" / RUN
    pair = Path("eval/fashionmnist_vs_mnist/scores.csv")
    scores_a, scores_b = pd.read_csv(a / pair), pd.read_csv(b / pair)
    computed = [c for c in scores_a.columns if c not in measured_columns(scores_a.columns)]
    assert any(c.startswith("seconds:") for c in scores_a.columns)  # the timings are there, and left out here
    pd.testing.assert_frame_equal(scores_a[computed], scores_b[computed])
    log_a, log_b = pd.read_csv(a / "logs/metrics.csv"), pd.read_csv(b / "logs/metrics.csv")
    assert log_b["epoch"].tolist() == [1, 2, 3]  # the epochs before every resume are kept
    pd.testing.assert_frame_equal(log_a[["epoch", "step", "train_bpd", "val_bpd"]], log_b[["epoch", "step", "train_bpd", "val_bpd"]])
    trained = pd.read_json(b / "trained.json", typ="series")
    assert trained["epochs"] == 3 and trained["seconds"] >= log_b["seconds"].max() > 0  # every session's time
    ra, rb = pd.read_csv(tmp_path / "results-a/results.csv"), pd.read_csv(tmp_path / "results-b/results.csv")
    same = [c for c in ra.columns if c not in ("run", "background_run", *measured_columns(ra.columns))]
    pd.testing.assert_frame_equal(ra[same], rb[same])
    assert not list((tmp_path / "b").rglob(".tmp-*"))

    third = sweep(tmp_path, "b")
    assert third.returncode == 0 and "done" in third.stdout


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "oodbench", *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environment(OODBENCH_PROGRESS_SECONDS="0"))


def stop_after(process: subprocess.Popen, line_starts: str, signum: int) -> tuple[float, str, str]:
    """Send `signum` once a stdout line starts with `line_starts`; (seconds to exit, stdout, stderr).
    The command must exit with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    seen = []
    for line in process.stdout:  # progress lines (stdout is a pipe: one line per step with 0 s between)
        seen.append(line)
        if line.startswith(line_starts):
            break
    assert process.poll() is None, "the command ended before the signal: " + "".join(seen) + process.stderr.read()
    sent = time.monotonic()
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, (process.returncode, err)
    return time.monotonic() - sent, "".join(seen) + out, err


TRAIN = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--epochs", "20",
         "--limit-train", "256", "--batch-size", "32", "--set", "levels=2", "--set", "steps=1", "--set", "hidden_channels=8"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_marks_nothing_trained_and_a_rerun_resumes(tmp_path, signum):
    seconds, out, err = stop_after(start(TRAIN, tmp_path), "epoch 2/20  batch 3/", signum)
    run = tmp_path / "runs" / RUN
    lines = [line for line in err.splitlines() if line.strip()]
    assert seconds < 10 and len(lines) == 1, err
    assert f"interrupted by {signal.Signals(signum).name}" in lines[0] and "1 complete epoch" in lines[0], lines[0]
    assert "rerun the same command" in lines[0]
    assert not (run / "trained.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    rerun = subprocess.run([sys.executable, "-m", "oodbench", *TRAIN, "--quiet"], cwd=tmp_path, capture_output=True,
                           text=True, env=environment(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stdout and "20 epochs" in rerun.stdout
    assert pd.read_csv(run / "logs" / "metrics.csv")["epoch"].tolist() == list(range(1, 21))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_long_vae_evaluation_within_seconds(tmp_path, signum):
    train = subprocess.run([sys.executable, "-m", "oodbench", "train", "--model", "vae", "--dataset", "fashionmnist",
                            "--data-root", "demo", "--epochs", "1", "--limit-train", "64", "--batch-size", "32", "--quiet",
                            "--set", "base_channels=8", "--set", "latent_dim=8"], cwd=tmp_path, capture_output=True,
                           text=True, env=environment(), timeout=300)
    assert train.returncode == 0, train.stderr
    # k=512 importance samples of 4,000 images: about ten minutes of work, stopped a moment after it starts.
    evaluate = ["evaluate", "--pair", "fashionmnist:mnist", "--model", "vae", "--iw-samples", "512", "--batch-size", "8"]
    seconds, out, err = stop_after(start(evaluate, tmp_path), "scoring set 1: batch 2/", signum)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"interrupted by {signal.Signals(signum).name}" in lines[0], err
    assert seconds < 5, f"took {seconds:.1f}s to stop"
    assert not (tmp_path / "runs" / "vae-fashionmnist-seed0" / "eval" / "fashionmnist_vs_mnist" / "metrics.json").exists()
