"""Two processes never work on one run at once (runner/locking.py), on real commands.

The first process is frozen while it holds its locks: the failpoint `train-batch:1:STOP` makes it send
itself SIGSTOP inside its first training batch (oodbench.failpoints), so the second always finds the run
held, however fast or slow the machine; SIGCONT lets the first finish, SIGKILL kills it holding them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from oodbench.schema import measured_columns

from tests.runner.test_kill_resume import TINY_YAML, environment

TRAIN = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--epochs", "2",
         "--limit-train", "128", "--batch-size", "32", "--quiet", "--set", "levels=2", "--set", "steps=1",
         "--set", "hidden_channels=8"]
RUN = "runs/glow-fashionmnist-seed0"
FREEZE = {"OODBENCH_KILL_AT": "train-batch:1:STOP"}


def start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "oodbench", *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=environment(**env))


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodbench", *args], cwd=cwd, capture_output=True, text=True,
                          env=environment(), timeout=300)


def frozen(process: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `process` has stopped itself (state T in /proc), holding what it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.2)
    raise AssertionError("the first process never reached its failpoint")


def finish(process: subprocess.Popen) -> tuple[str, str]:
    os.kill(process.pid, signal.SIGCONT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out, err


def refused(done: subprocess.CompletedProcess, holder: int, what: str) -> None:
    """One line, exit 2, naming what is held, by which process and command, and what to do."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert what in lines[0] and f"process {holder} on " in lines[0] and "`oodbench train" in lines[0], lines[0]
    assert "rerun this command" in lines[0] and "Traceback" not in done.stderr


def epochs(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "logs" / "metrics.csv")[["epoch", "step", "train_bpd", "val_bpd"]]


@pytest.mark.slow
def test_a_second_process_on_a_training_run_is_refused_and_the_first_is_unchanged(tmp_path):
    (tmp_path / "alone").mkdir()
    assert run(TRAIN, tmp_path / "alone").returncode == 0

    first = start(TRAIN, tmp_path, **FREEZE)
    frozen(first)
    refused(run(TRAIN, tmp_path), first.pid, f"run folder {RUN}")
    refused(run(["evaluate", "--run", RUN, "--pair", "fashionmnist:mnist", "--limit", "20"], tmp_path), first.pid,
            f"run folder {RUN}")
    refused(run(["score", "--run", RUN, "--images", "mnist", "--data-root", "demo"], tmp_path), first.pid,
            f"run folder {RUN}")
    refused(run(["analyze", "--run", RUN, "--what", "curve"], tmp_path), first.pid, f"run folder {RUN}")
    refused(run([*TRAIN, "--overwrite"], tmp_path), first.pid, f"run folder {RUN}")  # deletes nothing
    finish(first)

    pd.testing.assert_frame_equal(epochs(tmp_path / RUN), epochs(tmp_path / "alone" / RUN))
    assert not list((tmp_path / RUN).glob(".lock.*")), "the holder file outlived its process"


@pytest.mark.slow
def test_a_killed_holder_blocks_nothing(tmp_path):
    first = start(TRAIN, tmp_path, **FREEZE)
    frozen(first)
    first.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock with the process
    first.communicate()
    again = run(TRAIN, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "trained glow on fashionmnist: 2 epochs" in again.stdout
    assert not list((tmp_path / RUN).glob(".lock.*")), "the dead holder's file was not cleared"


def sweep_args(tmp: Path, runs: str) -> list[str]:
    return ["sweep", "--config", str(tmp / "benchmarks.yaml"), "--profile", "tiny", "--runs-dir", str(tmp / runs),
            "--out", str(tmp / f"results-{runs}")]


@pytest.mark.slow
def test_two_sweeps_on_one_folder_share_the_cells_and_equal_one_sweep(tmp_path):
    # Two seeds: a background model first (the likelihood ratio), then seeds 0 and 1, the last one's
    # evaluation reading the others (the ensemble): the cells depend on each other.
    (tmp_path / "benchmarks.yaml").write_text(TINY_YAML.replace("seeds: [0]", "seeds: [0, 1]"))
    alone = run([*sweep_args(tmp_path, "alone"), "--quiet"], tmp_path)
    assert alone.returncode == 0, alone.stderr

    first = start([*sweep_args(tmp_path, "shared"), "--quiet"], tmp_path, **FREEZE)
    frozen(first)  # inside the first cell's training: the background model's
    second = start([*sweep_args(tmp_path, "shared"), "--quiet"], tmp_path)
    time.sleep(15)  # the second finds every cell held or waiting for the background model, and waits
    assert second.poll() is None, second.communicate()[1][-3000:]
    out_first, _ = finish(first)
    out_second, err_second = second.communicate(timeout=600)
    (tmp_path / "first.out").write_text(out_first)
    (tmp_path / "second.out").write_text(out_second + err_second)
    assert second.returncode == 0, err_second[-3000:]
    assert "putting off glow-fashionmnist-seed0-bg" in out_second and f"process {first.pid} on" in out_second

    started = re.findall(r"^(?:train|resume) (\S+)", out_first + out_second, flags=re.MULTILINE)
    cells = ["glow-fashionmnist-seed0-bg0.2", "glow-fashionmnist-seed0", "glow-fashionmnist-seed1"]
    assert sorted(started) == sorted(cells), started  # each cell trained once, by one of the two
    for cell in cells:
        assert epochs(tmp_path / "shared" / cell)["epoch"].tolist() == [1, 2, 3]
        pd.testing.assert_frame_equal(epochs(tmp_path / "shared" / cell), epochs(tmp_path / "alone" / cell))
    reference = pd.read_csv(tmp_path / "results-alone" / "results.csv")
    same = [c for c in reference.columns if c not in ("run", "background_run", "members", *measured_columns(reference.columns))]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results-shared" / "results.csv")[same], reference[same])
