"""The CLI end to end on real staged data (tiny model, seconds), and every bad input's exit code 2
with a one-line message and nothing half-written."""

from __future__ import annotations

import json
import math
import re
import os

import numpy as np
import pandas as pd
import pytest
import torch

from cli_runs import run_cli
from evaluation_files import likelihood_row

from oodbench.cli import main
from oodbench.report import RESULT_COLUMNS

LN2, LN256 = math.log(2), math.log(256)

TINY = ["--set", "levels=2", "--set", "steps=2", "--set", "hidden_channels=16"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, staged_root):
    """A tiny Glow trained for one epoch on 256 real Fashion-MNIST images."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(runs)
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", str(staged_root),
                  "--epochs", "1", "--limit-train", "256", "--batch-size", "64", "--runs-dir", str(runs),
                  "--quiet", *TINY])
    assert exit_info.value.code == 0
    return runs / "glow-fashionmnist-seed0"


@pytest.mark.slow
def test_train_writes_a_complete_run_folder(trained_run):
    assert (trained_run / "config.yaml").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert (trained_run / "checkpoints" / "best.ckpt").is_file()
    log = pd.read_csv(trained_run / "logs" / "metrics.csv")
    assert "val_bpd" in log and log["val_bpd"].notna().any()
    assert not list(trained_run.rglob(".tmp-*"))


@pytest.mark.slow
def test_evaluate_then_report_end_to_end(trained_run, staged_root, tmp_path, capsys):
    code, out, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", trained_run, "--data-root",
                              staged_root, "--limit", "300", "--train-sample", "200", "--quiet"], capsys)
    assert code == 0, err
    folder = trained_run / "eval" / "fashionmnist_vs_mnist"
    scores = pd.read_csv(folder / "scores.csv")
    assert scores["set"].value_counts().to_dict() == {"in_train": 200, "in_val": 500, "in_test": 300, "out_test": 300}
    assert list(scores.columns[:8]) == ["set", "dataset", "split", "index", "log_px", "bpd", "log_pz", "logdet"]
    # The model sees the 28x28 images padded to 32x32: the flow's density is over 1,024 dimensions, so
    # log_px = log_pz + logdet - 1024 ln 256. Bits/dim is per dimension of the image itself: 784.
    assert (scores["log_pz"] + scores["logdet"] - 1024 * LN256 - scores["log_px"]).abs().max() < 1e-2
    assert (scores["bpd"] + scores["log_px"] / (784 * LN2)).abs().max() < 1e-5
    assert scores.groupby("set")["index"].apply(lambda s: s.is_monotonic_increasing).all()
    metrics = likelihood_row(folder)
    assert metrics["bpd_dims"] == 784 and metrics["n_out_test"] == 300 and metrics["n_train"] == 256
    assert metrics["out_dataset"] == "mnist" and metrics["out_split"] == "test" and metrics["epochs"] == 1
    assert metrics["bpd_out_test_mean"] == pytest.approx(scores.loc[scores["set"] == "out_test", "bpd"].mean(), abs=1e-5)
    # The sentence follows the AUROC's interval: below 0.5 lets MNIST through, holding 0.5 is chance.
    verdict = ("let them through" if metrics["auroc_high"] < 0.5 else "flags them" if metrics["auroc_low"] > 0.5
               else "at chance")
    said = " ".join(out.split())
    assert "AUROC" in out and "MNIST test images" in said and verdict in said and "Fashion-MNIST" in said, said

    results = tmp_path / "results"
    code, out, err = run_cli(["report", "--runs", trained_run.parent, "--out", results], capsys)
    assert code == 0, err
    table = pd.read_csv(results / "results.csv")
    assert tuple(table.columns) == RESULT_COLUMNS
    assert table.loc[0, "unit"] == "bits/dim" and table.loc[0, "pair"] == "fashionmnist:mnist"
    report_md = (results / "results.md").read_text()
    assert report_md.startswith("# oodbench results")
    assert verdict in " ".join(report_md.split("## Findings")[1].split("##")[0].split())
    glance = report_md.split("## At a glance")[1].split("##")[0]
    assert "| family " in glance and "fashionmnist:mnist" in glance and "| glow " in glance
    assert "200 / 300 / 300" in report_md.split("## Per run")[1]  # images per set
    pngs = list(results.glob("hist_*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
    assert "summary.csv" in out
    assert sorted(json.loads((results / "report.json").read_text())["files"]) == sorted(
        ["results.csv", "summary.csv", "results.md", "results.tex", pngs[0].name, "roc_" + pngs[0].name[len("hist_"):]])
    assert r"\begin{tabular}" in (results / "results.tex").read_text()


@pytest.mark.slow
def test_in_train_holds_only_images_the_run_trained_on(trained_run, staged_root, capsys):
    # The run trained on 256 images (--limit-train) of the 60,000; asking for 1,000 in-train images gets those
    # 256 and no others (before: the first 1,000 of the split, most never trained on).
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", trained_run, "--data-root", staged_root,
                            "--limit", "20", "--train-sample", "1000", "--quiet"], capsys)
    assert code == 0, err
    with np.load(trained_run / "splits.npz") as splits:
        trained, validated = splits["train_index"], splits["val_index"]
    assert len(trained) == 256 and len(validated) == 500 and not set(trained) & set(validated)
    scores = pd.read_csv(trained_run / "eval" / "fashionmnist_vs_mnist" / "scores.csv")
    in_train = scores.loc[scores["set"] == "in_train", "index"].to_numpy()
    assert sorted(in_train) == sorted(trained)
    metrics = likelihood_row(trained_run / "eval" / "fashionmnist_vs_mnist")
    assert metrics["n_in_train"] == 256 and metrics["n_train"] == 256
    # The trained images are a seeded random subset of the split, not its first 256.
    assert trained.max() > 1000


@pytest.mark.slow
def test_scores_do_not_depend_on_batch_size(trained_run, staged_root, capsys):
    def scores(batch):
        code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", trained_run, "--data-root",
                                staged_root, "--limit", "70", "--train-sample", "10", "--batch-size", batch, "--quiet"],
                               capsys)
        assert code == 0, err
        return pd.read_csv(trained_run / "eval" / "fashionmnist_vs_mnist" / "scores.csv")

    a, b = scores(7), scores(64)
    assert (a["bpd"] - b["bpd"]).abs().max() < 1e-5


@pytest.mark.slow
def test_vae_trains_and_is_scored_with_the_bound_it_names(tmp_path, staged_root, trained_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--model", "vae", "--dataset", "fashionmnist", "--data-root", staged_root,
                            "--epochs", "1", "--limit-train", "256", "--batch-size", "64", "--runs-dir", tmp_path,
                            "--quiet", "--set", "base_channels=8", "--set", "latent_dim=8"], capsys)
    assert code == 0, err
    run = tmp_path / "vae-fashionmnist-seed0"
    args = ["evaluate", "--pair", "fashionmnist:mnist", "--run", run, "--data-root", staged_root, "--limit", "40",
            "--train-sample", "10", "--quiet"]
    code, _, err = run_cli([*args, "--iw-samples", "4"], capsys)
    assert code == 0, err
    folder = run / "eval" / "fashionmnist_vs_mnist"
    assert likelihood_row(folder)["bound"] == "iwae-4"
    scores = pd.read_csv(folder / "scores.csv")
    assert {"elbo", "kl"} <= set(scores.columns) and (scores["log_px"] >= scores["elbo"] - 1e-3).all()
    code, _, err = run_cli([*args, "--iw-samples", "1"], capsys)
    assert code == 0, err
    assert likelihood_row(folder)["bound"] == "elbo"
    # importance samples mean nothing to a flow
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", trained_run, "--data-root", staged_root,
                            "--iw-samples", "4", "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "--iw-samples", "glow")


def assert_one_line_error(code, err, expected_code=2, *fragments):
    assert code == expected_code
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["train", "--model", "nosuch", "--dataset", "mnist"], ["unknown model 'nosuch'", "glow"]),
    (["train", "--model", "glow", "--dataset", "nosuch"], ["unknown dataset 'nosuch'", "mnist"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--epochs", "0"], ["--epochs"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--set", "levls=2"], ["unknown key 'levls'"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--set", "oops"], ["KEY=VALUE"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--profile", "nosuch"], ["unknown profile 'nosuch'"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--batch-size", "abc"], ["--batch-size"]),
    (["train", "--model", "glow"], ["--dataset"]),
    (["evaluate", "--pair", "cifar10"], ["malformed pair 'cifar10'"]),
    (["evaluate", "--pair", "cifar10:svhn:x:y", "--model", "glow"], ["pair"]),
    (["evaluate", "--pair", "fashionmnist:mnist", "--model", "glow"], ["no trained glow on fashionmnist"]),
    (["evaluate", "--pair", "fashionmnist:mnist"], ["--run", "--model"]),
    (["report", "--runs", "nonexistent-folder"], ["nonexistent-folder"]),
    (["bogus-command"], ["bogus-command"]),
    # A fixed setting given anyway names what the key accepts and where the other value lives.
    (["train", "--model", "glow", "--dataset", "mnist", "--set", "coupling=banana"],
     ["'banana'", "affine, additive", "glow always uses coupling='affine'", "cv-glow"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--set", "coupling=additive"], ["cv-glow"]),
    # A bad value names the key and what it accepts, not an internal class.
    (["train", "--model", "glow", "--dataset", "mnist", "--set", "hidden_channels=-5"],
     ["bad value -5 for 'hidden_channels'", "at least 1"]),
    (["train", "--model", "glow", "--dataset", "mnist", "--precision", "bf16-true"], ["--precision", "bf16-mixed"]),
    (["evaluate", "--pair", "fashionmnist:mnist", "--model", "glow", "--precision", "bf16-mixed"], ["--precision"]),
    (["evaluate", "--pair", "fashionmnist:mnist", "--model", "glow", "--scores", "likelihood,regret"],
     ["unknown score 'regret'", "valid names: diffpath, dose, ensemble_likelihood", "likelihood_regret"]),
])
def test_bad_input_exits_2_with_one_line(args, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, 2, *fragments)
    assert "Config." not in err  # GlowConfig.hidden_channels and friends are internal names


@pytest.mark.parametrize("command", ["train", "evaluate", "report", "sweep", "demo", "data list"])
def test_help_wraps_instead_of_cutting(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli([*command.split(), "--help"], capsys)
    assert code == 0 and "\u2026" not in out  # rich's ellipsis cut option help at 80 columns
    if command == "train":
        assert "runs/<model>-<dataset>-seed<seed>" in out and "KEY=VALUE" in out


def test_unwritable_folders_are_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--epochs",
                            "1", "--run-dir", blocker / "run", "--quiet"], capsys)
    assert_one_line_error(code, err, 2, str(blocker), "--run-dir")
    code, _, err = run_cli(["sweep", "--profile", "demo", "--runs-dir", blocker / "runs", "--quiet"], capsys)
    assert_one_line_error(code, err, 2, str(blocker), "--runs-dir")


def test_hardware_the_machine_lacks_is_bad_input_and_blocks_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--epochs", "1",
            "--limit-train", "64", "--batch-size", "32", "--quiet", *TINY]
    code, _, err = run_cli([*args, "--accelerator", "gpu"], capsys)
    assert_one_line_error(code, err, 2, "--accelerator gpu")
    run = tmp_path / "runs" / "glow-fashionmnist-seed0"
    assert not (run / "config.yaml").exists()
    code, _, err = run_cli(args, capsys)  # the next try is not blocked by what the failed one left
    assert code == 0, err


def test_a_folder_without_a_checkpoint_is_started_afresh_and_resume_needs_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "glow-fashionmnist-seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: fashionmnist\n")  # what a start killed before its first epoch left
    args = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--epochs", "1",
            "--limit-train", "64", "--batch-size", "32", "--quiet", *TINY]
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert_one_line_error(code, err, 2, "no checkpoint to resume")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "trained glow on fashionmnist: 1 epoch" in out
    code, out, err = run_cli(args, capsys)  # the same command again: nothing to do, and it says so
    assert code == 0 and "already trained" in out
    code, _, err = run_cli([*args, "--lr", "0.01"], capsys)
    assert_one_line_error(code, err, 2, "other settings", "lr", "--overwrite")


class RunsCode:
    """Pickles as a call to os.system: what a malicious checkpoint does on an unsafe load."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
def test_a_checkpoint_whose_pickle_would_run_code_is_refused(trained_run, staged_root, tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    crafted = tmp_path / "crafted"
    shutil.copytree(trained_run, crafted, ignore=shutil.ignore_patterns("eval"))
    marker = tmp_path / "code-ran"
    for ckpt in (crafted / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        state["extra"] = RunsCode(marker)
        torch.save(state, ckpt)
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", crafted, "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "could run code", "refusing")
    (crafted / "trained.json").unlink()  # an unfinished run resumes from its last.ckpt: refused the same way
    code, _, err = run_cli(["train", "--model", "glow", "--dataset", "fashionmnist", "--run-dir", crafted, "--epochs", "2",
                            "--data-root", staged_root, "--limit-train", "256", "--batch-size", "64", "--quiet", *TINY],
                           capsys)
    assert_one_line_error(code, err, 2, "could run code")
    assert not marker.exists()


@pytest.mark.slow
def test_data_list_counts_the_images_of_each_split(staged_root, capsys):
    code, out, err = run_cli(["data", "list", "--data-root", staged_root], capsys)
    assert code == 0, err
    cifar = next(line for line in out.splitlines() if line.strip().startswith("│ cifar10 ") or " cifar10 " in line[:20])
    assert "8,068 / 50,000" in cifar and "1,017 / 10,000" in cifar
    mnist = next(line for line in out.splitlines() if " mnist " in line[:12])
    assert "60,000" in mnist and "10,000" in mnist and "/ 60,000" not in mnist  # complete: no "of the full split"


@pytest.mark.slow
def test_report_covers_exactly_its_runs(trained_run, staged_root, tmp_path, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / trained_run.name)
    # A sweep's runs live one level down (runs/<profile>/<run>): another benchmark, not part of this report.
    shutil.copytree(trained_run, runs / "demo" / trained_run.name)
    run = runs / trained_run.name
    for pair in ("fashionmnist:mnist", "fashionmnist:kmnist"):
        code, _, err = run_cli(["evaluate", "--pair", pair, "--run", run, "--data-root", staged_root, "--limit", "50",
                                "--train-sample", "20", "--quiet"], capsys)
        assert code == 0, err
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    code, out, err = run_cli(["report", "--runs", runs, "--out", out_dir], capsys)
    assert code == 0, err
    table = pd.read_csv(out_dir / "results.csv")
    assert (table["score"] == "likelihood").sum() == 2 and set(table["run"]) == {str(run)}
    assert len(list(out_dir.glob("hist_*.png"))) == 2
    shutil.rmtree(run / "eval" / "fashionmnist_vs_kmnist")
    code, out, err = run_cli(["report", "--runs", runs, "--out", out_dir], capsys)
    assert code == 0, err
    assert set(pd.read_csv(out_dir / "results.csv")["out_dataset"]) == {"mnist"}
    figures = list(out_dir.glob("hist_*.png"))
    assert len(figures) == 1 and "kmnist" not in figures[0].name  # the stale figure went with its result
    assert (out_dir / "notes.txt").read_text() == "mine"  # what oodbench did not write stays
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["report", "--runs", runs, "--out", blocker / "results"], capsys)
    assert_one_line_error(code, err, 2, str(blocker), "--out")


def test_result_files_follow_the_umask(tmp_path):
    from oodbench.atomic import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.csv", "x")
        os.umask(0o077)
        write_text(tmp_path / "b.csv", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.csv").stat().st_mode & 0o777 == 0o600


def test_missing_data_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    code, _, err = run_cli(["train", "--model", "glow", "--dataset", "mnist", "--data-root", empty, "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "mnist", str(empty))
    assert not (tmp_path / "runs" / "glow-mnist-seed0" / "config.yaml").exists()


@pytest.mark.slow
def test_missing_and_corrupt_checkpoints(trained_run, staged_root, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns("eval"))
    for ckpt in (broken / "checkpoints").glob("*.ckpt"):
        ckpt.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", broken, "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "corrupt", "best.ckpt")
    assert not (broken / "eval").exists()

    shutil.rmtree(broken / "checkpoints")
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:mnist", "--run", broken, "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "no checkpoint")


@pytest.mark.slow
def test_pair_must_match_the_run_and_channels(trained_run, staged_root, capsys):
    code, _, err = run_cli(["evaluate", "--pair", "mnist:fashionmnist", "--run", trained_run, "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "trained on fashionmnist")
    code, _, err = run_cli(["evaluate", "--pair", "fashionmnist:cifar10", "--run", trained_run, "--data-root",
                            staged_root, "--limit", "10", "--train-sample", "10", "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "channels", "--match-channels")


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("train", "evaluate", "report", "demo", "data"):
        assert command in out


def test_piped_progress_is_one_line_per_epoch_and_a_time_budget_counts_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "glow", "--dataset", "fashionmnist", "--data-root", "demo", "--limit-train", "128",
            "--batch-size", "32", *TINY]
    code, out, err = run_cli([*args, "--epochs", "2"], capsys)  # stdout is not a terminal here
    assert code == 0, err
    ends = [line for line in out.splitlines() if " done in " in line]
    assert [line.split(" done")[0] for line in ends] == ["epoch 1/2", "epoch 2/2"]  # counted from 1, of 2
    assert all("train_bpd" in line and "val_bpd" in line and len(line) < 100 for line in ends)
    assert "2 epochs, 8 steps" in out
    # A time budget beside the default 10 epochs: the first that comes stops; a cut-short epoch is not counted.
    code, out, err = run_cli([*args, "--max-minutes", "0.0005", "--run-dir", tmp_path / "budget"], capsys)
    assert code == 0, err
    assert re.search(r"epoch 1/10 stopped after \d of 4 batches", out), out
    assert re.search(r"0 complete epochs and \d steps? of epoch 1 \(stopped by --max-minutes\)", out), out
