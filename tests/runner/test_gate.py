"""The density gate (`oodbench score`): what its scores are fitted on and its threshold set on, with
hand-made statistics; and the user's path end to end on real staged images laid out as a user's folders
(slow): train on a folder, evaluate against another folder, a verdict per image."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from fake_runs import bpd_frame, fake_run, statistics_by_set
from PIL import Image

from cli_runs import run_cli
from oodbench.cli import main
from oodbench.config import EvalConfig
from oodbench.data import ImageSet, load_images
from oodbench.runner import gate as gate_module
from oodbench.runner.gate import GateRequest, gate

TINY = ["--set", "levels=2", "--set", "steps=2", "--set", "hidden_channels=16"]


def _folder(images, folder) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0, 2:30, 2:30].numpy()).save(folder / f"{i:04d}.png")  # the 28x28 originals


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, staged_root):
    """Fashion-MNIST as a user's folder (train/ and test/ subfolders), MNIST as a flat folder of PNGs, and
    a tiny Glow trained for one epoch on the first."""
    root = tmp_path_factory.mktemp("user")
    _folder(load_images("fashionmnist", "train", data_root=staged_root, limit=300).images, root / "clothes" / "train")
    _folder(load_images("fashionmnist", "test", data_root=staged_root, limit=120).images, root / "clothes" / "test")
    _folder(load_images("mnist", "test", data_root=staged_root, limit=80).images, root / "digits")
    runs = root / "runs"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "glow", "--dataset", f"folder:{root / 'clothes'}", "--epochs", "1", "--batch-size",
              "64", "--runs-dir", str(runs), "--quiet", *TINY])
    assert exit_info.value.code == 0
    (run,) = runs.iterdir()
    return root, run


@pytest.mark.slow
def test_the_gate_accepts_the_stated_share_of_in_distribution_images(user_run, capsys):
    root, run = user_run
    out_csv = root / "gate-test.csv"
    code, out, err = run_cli(["score", "--run", run, "--images", root / "clothes" / "test", "--accept", "0.9",
                              "--out", out_csv, "--quiet"], capsys)
    assert code == 0, err
    stated = re.search(r"accepts (\S+)% of the run's 120 in-distribution test images", out)
    assert stated, out
    table = pd.read_csv(out_csv)
    # The same images the threshold was set on (same index-seeded noise): exactly the stated share passes.
    assert len(table) == 120 and table["file"].iloc[0] == "0000.png"
    assert (table["verdict"] == "in-distribution").mean() == pytest.approx(float(stated.group(1)) / 100)
    assert float(stated.group(1)) >= 90.0
    assert {"bpd", "likelihood", "input_complexity(codec=png)", "verdict"} <= set(table.columns)


@pytest.mark.slow
def test_score_a_folder_and_evaluate_a_pair_of_folders(user_run, capsys):
    root, run = user_run
    code, out, err = run_cli(["score", "--run", run, "--images", root / "digits", "--out", root / "digits.csv",
                              "--quiet"], capsys)
    assert code == 0, err
    table = pd.read_csv(root / "digits.csv")
    assert len(table) == 80 and set(table["verdict"]) <= {"in-distribution", "OOD"}
    code, out, err = run_cli(["evaluate", "--run", run, "--pair", f"folder:{root / 'clothes'}:folder:{root / 'digits'}",
                              "--scores", "likelihood", "--quiet"], capsys)
    assert code == 0, err
    assert "120 / 80" in out  # in-distribution test / OOD images


@pytest.mark.slow
@pytest.mark.parametrize("images, message", [
    ("nowhere/at/all", "no such file or folder"),
    ("empty", "holds no image files"),
])
def test_bad_image_paths_exit_2_with_one_line(user_run, capsys, images, message):
    root, run = user_run
    (root / "empty").mkdir(exist_ok=True)
    code, out, err = run_cli(["score", "--run", run, "--images", root / images, "--out", root / "x.csv", "--quiet"],
                             capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (root / "x.csv").exists()


def test_the_gate_fits_on_the_hold_out_and_sets_its_threshold_on_in_test(tmp_path, staged_root, monkeypatch):
    """The hold-out (mean 3.0) is what typicality is fitted on: each new image scores |bpd - 3.0|, in its
    own row. The in-distribution test set (mean 3.08, scores 0.02, 0.06, 0.10, 0.14 from that fit) is what
    the threshold accepts: all of it at accept=1.0, so the threshold is 0.14. Fitted on in-test instead,
    the images would score 0.92, 1.18, 0.58, 0.04 and the threshold be 0.06; set on the hold-out's scores
    (all 0.2), the threshold would be 0.2; on in-train's fit (mean 1.1), the scores 2.9, 0.8, 1.4, 2.02."""
    run = fake_run(tmp_path / "run", staged_root)
    frames = {"in_train": bpd_frame([1.0, 1.2] * 10), "in_val": bpd_frame([2.8, 3.2] * 10),
              "in_test": bpd_frame([3.02, 3.06, 3.10, 3.14]), "images": bpd_frame([4.0, 1.9, 2.5, 3.12])}
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(gate_module, "set_statistics", statistics_by_set(frames, asked))
    images = ImageSet(name="mine", split="test", images=torch.zeros(4, 1, 32, 32, dtype=torch.uint8),
                      index=torch.arange(4), source="a test")
    result = gate(GateRequest(run=run, images="mine", scores=("likelihood", "typicality"), by="typicality",
                              accept=1.0, eval=EvalConfig(limit=10)), images)
    assert asked == [("in_val", "in_test", "images")]
    table = result.table
    assert np.allclose(table["typicality(batch=1,seed=0)"], [1.0, 1.1, 0.5, 0.12], rtol=0, atol=1e-12)
    assert np.array_equal(table["likelihood"], [4.0, 1.9, 2.5, 3.12])
    assert result.by == "typicality(batch=1,seed=0)"
    assert result.threshold == pytest.approx(0.14, abs=1e-12) and result.accepted_in == 1.0
    assert list(table["verdict"]) == ["OOD", "OOD", "OOD", "in-distribution"]


def _gate_folder(root, staged_root):
    """Four Fashion-MNIST test images as PNGs and one file that is not an image."""
    folder = root / "mine"
    _folder(load_images("fashionmnist", "test", data_root=staged_root, limit=4).images, folder)
    (folder / "9999.png").write_bytes(b"not a png at all")
    return folder


@pytest.mark.slow
def test_the_gate_keeps_a_row_for_every_unreadable_file_and_says_how_many(tmp_path, staged_root, capsys):
    run = fake_run(tmp_path / "run", staged_root)
    folder, out_csv = _gate_folder(tmp_path, staged_root), tmp_path / "gate.csv"
    common = ["score", "--run", run.root, "--images", folder, "--out", out_csv, "--batch-size", "512", "--quiet",
              "--scores", "likelihood"]
    code, out, err = run_cli(common, capsys)
    assert code == 2 and "1 file(s)" in err and "9999.png" in err and "--skip-unreadable" in err, err
    code, out, err = run_cli([*common, "--skip-unreadable"], capsys)
    assert code == 0, err
    table = pd.read_csv(out_csv)
    assert table["file"].tolist() == ["0000.png", "0001.png", "0002.png", "0003.png", "9999.png"]
    assert table["verdict"].iloc[4] == "unreadable" and np.isnan(table["bpd"].iloc[4])
    assert set(table["verdict"].iloc[:4]) <= {"in-distribution", "OOD"} and table["bpd"].iloc[:4].notna().all()
    said = " ".join(out.split())
    assert "1 file(s) could not be read and were left out" in said and "9999.png" in said, out
    assert re.search(r"flagged OOD", said) and " of 4 images flagged OOD" in said, out


@pytest.mark.slow
def test_the_gate_warns_that_the_likelihood_is_a_poor_gate(tmp_path, staged_root, capsys):
    run = fake_run(tmp_path / "run", staged_root)
    images = ["score", "--run", run.root, "--images", "mnist", "--data-root", staged_root, "--match-channels",
              "--out", tmp_path / "g.csv", "--batch-size", "512", "--quiet", "--scores", "likelihood,input_complexity"]
    code, out, err = run_cli(images, capsys)
    assert code == 0, err
    said = " ".join(out.split())
    assert "warning: --by likelihood: a poor gate, known to fail" in said and "Nalisnick" in said, out
    code, out, err = run_cli([*images, "--by", "input_complexity"], capsys)
    assert code == 0 and "warning" not in out, out


@pytest.mark.slow
def test_the_gate_scores_the_likelihood_ratio_with_a_background_run(tmp_path, staged_root, capsys):
    run = fake_run(tmp_path / "run", staged_root)
    background = fake_run(tmp_path / "bg", staged_root, seed=1, background=0.2)
    folder = _gate_folder(tmp_path, staged_root)
    (folder / "9999.png").unlink()
    common = ["--images", folder, "--batch-size", "512", "--quiet", "--scores", "likelihood,likelihood_ratio"]
    code, out, err = run_cli(["score", "--run", run.root, *common, "--out", tmp_path / "without.csv"], capsys)
    assert code == 0 and "no per-image likelihood_ratio" in " ".join(out.split()) and "--background-run" in out, out
    code, out, err = run_cli(["score", "--run", run.root, *common, "--background-run", background.root, "--by",
                              "likelihood_ratio", "--out", tmp_path / "with.csv"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["score", "--run", background.root, *common, "--out", tmp_path / "bg.csv"], capsys)
    assert code == 0, err
    ratio, alone = pd.read_csv(tmp_path / "with.csv"), pd.read_csv(tmp_path / "bg.csv")
    # Ren et al.'s -LLR in bits/dim: the run's bits/dim minus the background model's, image by image.
    np.testing.assert_allclose(ratio["likelihood_ratio"], ratio["bpd"] - alone["bpd"], atol=2e-6)
    assert "warning" not in out
