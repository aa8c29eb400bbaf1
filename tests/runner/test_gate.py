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
