"""The CLI end to end on real staged data (tiny model, seconds), and every bad input's exit code 2
with a one-line message and nothing half-written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from oodbench.cli import main
from oodbench.report import RESULT_COLUMNS

TINY = ["--set", "levels=2", "--set", "steps=2", "--set", "hidden_channels=16"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


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
    assert scores["set"].value_counts().to_dict() == {"in_train": 200, "in_test": 300, "out_test": 300}
    assert list(scores.columns[:8]) == ["set", "dataset", "split", "index", "log_px", "bpd", "log_pz", "logdet"]
    # log_px = log_pz + logdet - D ln 256, and bits/dim follows from log_px (both rounded to 6 decimals).
    d = 32 * 32
    assert (scores["log_pz"] + scores["logdet"] - d * 5.545177444479562 - scores["log_px"]).abs().max() < 1e-2
    assert (scores["bpd"] + scores["log_px"] / (d * 0.6931471805599453)).abs().max() < 1e-5
    assert scores.groupby("set")["index"].apply(lambda s: s.is_monotonic_increasing).all()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["n_out_test"] == 300
    assert "AUROC" in out

    results = tmp_path / "results"
    code, out, err = run_cli(["report", "--runs", trained_run.parent, "--out", results], capsys)
    assert code == 0, err
    table = pd.read_csv(results / "results.csv")
    assert tuple(table.columns) == RESULT_COLUMNS
    assert table.loc[0, "unit"] == "bits/dim" and table.loc[0, "pair"] == "fashionmnist:mnist"
    report_md = (results / "results.md").read_text()
    assert report_md.startswith("# oodbench results")
    glance = report_md.split("## At a glance")[1].split("##")[0]
    assert "| family " in glance and "fashionmnist:mnist" in glance and "| glow " in glance
    pngs = list(results.glob("hist_*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"


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
    assert json.loads((folder / "metrics.json").read_text())["bound"] == "iwae-4"
    scores = pd.read_csv(folder / "scores.csv")
    assert {"elbo", "kl"} <= set(scores.columns) and (scores["log_px"] >= scores["elbo"] - 1e-3).all()
    code, _, err = run_cli([*args, "--iw-samples", "1"], capsys)
    assert code == 0, err
    assert json.loads((folder / "metrics.json").read_text())["bound"] == "elbo"
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
])
def test_bad_input_exits_2_with_one_line(args, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, 2, *fragments)


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


def test_existing_run_is_not_overwritten_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "glow-mnist-seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: mnist\n")
    code, _, err = run_cli(["train", "--model", "glow", "--dataset", "mnist", "--quiet"], capsys)
    assert_one_line_error(code, err, 2, "--resume", "--overwrite")


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("train", "evaluate", "report", "demo", "data"):
        assert command in out
