"""The user's path end to end on real staged images laid out as a user's folders: train on a folder,
evaluate against another folder, and the density gate (`oodbench score`) giving a verdict per image."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from PIL import Image

from cli_runs import run_cli
from oodbench.cli import main
from oodbench.data import load_images

pytestmark = pytest.mark.slow
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
