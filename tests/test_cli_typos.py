"""A typo answers at once: a misspelt name, a malformed pair or a bad option value exits 2 with one line
naming the bad value and what is valid, before torch, Lightning or pandas are imported (those imports
alone take ~5 s). Each case runs the CLI in a fresh process that reports which heavy modules it imported:
a property that holds on any machine, where a time limit would be flaky."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning_fabric", "pandas", "scipy", "matplotlib")

# Runs the CLI, then prints which of HEAVY it imported as the last line of stdout (the exit code is kept).
RUNNER = f"""
import sys

from oodbench.cli import main

try:
    main(sys.argv[1:])
finally:
    print("imported:", *[name for name in {HEAVY!r} if name in sys.modules])
"""


def run_fresh(args: list[str], cwd) -> tuple[int, list[str], list[str]]:
    """Exit code, the heavy modules imported, and stderr's non-blank lines of `oodbench ARGS` in a new process."""
    done = subprocess.run([sys.executable, "-c", RUNNER, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("imported:"), done.stdout + done.stderr
    return done.returncode, last.split()[1:], [line for line in done.stderr.splitlines() if line.strip()]


TRAIN = ["train", "--model", "glow", "--dataset", "mnist"]
EVALUATE = ["evaluate", "--pair", "cifar10:svhn", "--model", "glow"]

CASES = [
    # names
    (["train", "--model", "glwo", "--dataset", "cifar10", "--epochs", "1"],
     ["unknown model 'glwo'", "cv-glow, diffusion, glow, pixelcnn, vae"]),
    (["train", "--model", "glow", "--dataset", "cifar01"], ["unknown dataset 'cifar01'", "cifar10, cifar100"]),
    (["train", "--model", "glow", "--dataset", "svhn@tset"], ["no split 'tset'", "train, test, extra"]),
    (["train", "--model", "glow", "--dataset", "gray:mnist"], ["'gray:mnist'", "already greyscale"]),
    (["train", "--model", "glow", "--dataset", "folder:/no/such/folder"], ["/no/such/folder is not a folder"]),
    (["evaluate", "--pair", "cifar10:npz:/no/such.npz", "--model", "glow"], ["/no/such.npz is not a file"]),
    ([*TRAIN, "--curve-ood", "kmnist,mnits"], ["unknown dataset 'mnits'", "kmnist"]),
    ([*TRAIN, "--profile", "nope"], ["unknown profile 'nope'", "demo, paper, quick"]),
    (["evaluate", "--pair", "cifar10-svhn", "--model", "glow"], ["malformed pair 'cifar10-svhn'", "IN:OUT"]),
    (["evaluate", "--pair", "cifar10:svnh", "--model", "glow"], ["unknown dataset 'svnh'", "svhn"]),
    (["evaluate", "--pair", "cifar10:svhn", "--model", "glwo"], ["unknown model 'glwo'", "cv-glow, diffusion, glow"]),
    ([*EVALUATE, "--scores", "likelihood,typicalty"], ["unknown score 'typicalty'", "typicality"]),
    (["sweep", "--profile", "nope"], ["unknown profile 'nope'", "demo, paper, quick"]),
    (["score", "--run", "runs/x", "--images", "svhn", "--scores", "dos"], ["unknown score 'dos'", "dose"]),
    (["analyze", "--run", "runs/x", "--what", "decompositon"], ["--what", "decomposition, second-order, curve"]),
    # option values
    ([*TRAIN, "--precision", "64-true"], ["'64-true' for --precision", "bf16-mixed"]),
    ([*TRAIN, "--accelerator", "gpux"], ["'gpux' for --accelerator", "auto, cpu, cuda, gpu, mps, tpu"]),
    ([*TRAIN, "--logger", "tensorbord"], ["'tensorbord' for --logger", "tensorboard"]),
    ([*TRAIN, "--epochs", "0"], ["0 for --epochs", "at least 1"]),
    ([*TRAIN, "--epochs", "one"], ["'--epochs'", "integer"]),  # click's own message
    ([*TRAIN, "--set", "levels"], ["'levels'", "KEY=VALUE"]),
    ([*EVALUATE, "--accelerator", "gpux"], ["'gpux' for --accelerator", "cuda"]),
    ([*EVALUATE, "--batch-size", "0"], ["0 for --batch-size", "at least 1"]),
    (["sweep", "--profile", "demo", "--precision", "bf16-true", "--dry-run"], ["'bf16-true' for --precision"]),
    (["sweep", "--profile", "demo", "--accelerator", "gpux", "--dry-run"], ["'gpux' for --accelerator"]),
]


@pytest.mark.parametrize("args, fragments", CASES, ids=[" ".join(args) for args, _ in CASES])
def test_a_typo_answers_before_the_heavy_imports(args, fragments, tmp_path):
    code, imported, lines = run_fresh(args, tmp_path)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert imported == [], f"{args} imported {imported} before answering"
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_runner_sees_heavy_imports(tmp_path):
    # The control: a command that gets past its checks imports torch, and run_fresh says so (an error that
    # only the runner can find: there is no trained run).
    code, imported, lines = run_fresh(EVALUATE, tmp_path)
    assert code == 2 and "no trained glow on cifar10" in lines[0]
    assert "torch" in imported and "pytorch_lightning" in imported


def test_model_help_lists_the_registered_families(capsys, monkeypatch):
    from cli_runs import run_cli

    from oodbench.models import FAMILIES

    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0
    assert f"Model family: {', '.join(FAMILIES.registered())}." in " ".join(out.split())
