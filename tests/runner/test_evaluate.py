"""What `evaluate` fits and compares: hand-made statistics of the four sets, chosen so that a score fitted
on the validation hold-out and compared on in-test vs out-test has one known AUROC, threshold and share
flagged, and fitting on any other set, or comparing any other pair of sets (in and out swapped, the
hold-out in place of the test set), gives another. Through `score_rows` directly, and through
`evaluate` on a run folder whose statistics are these frames."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
from fake_runs import bpd_frame, fake_run, statistics_by_set

from oodbench.config import EvalConfig
from oodbench.runner import EvalRequest, evaluate
from oodbench.runner.evaluate import score_rows
from oodbench.schema import SETS
from oodbench.scores.likelihood import Likelihood
from oodbench.scores.typicality import Typicality

evaluate_module = importlib.import_module("oodbench.runner.evaluate")  # the package exports its function `evaluate`

# The hold-out has mean 3.0 and every |bpd - mean| = 0.2, so typicality (M = 1) fitted on it has
# train_mean 3.0 and threshold 0.2 exactly. The other sets' means differ from it and from each other.
FRAMES = {
    "in_train": bpd_frame([1.0, 1.2] * 10),  # mean 1.1: a model fits what it trained on better
    "in_val": bpd_frame([2.8, 3.2] * 10),  # mean 3.0
    "in_test": bpd_frame([3.02, 3.06, 3.10, 3.14]),  # mean 3.08
    "out_test": bpd_frame([4.0, 1.9, 2.5, 3.12]),  # mean 2.88
}
# Typicality (M = 1) fitted on in_val: in_test scores 0.02, 0.06, 0.10, 0.14 and out_test 1.0, 1.1, 0.5,
# 0.12. Of the 16 (out, in) pairs the out score is larger in 4 + 4 + 4 + 3: AUROC 15/16. Above the 0.2
# threshold: no in_test image, 3 of 4 out_test images. Had it been
#   fitted on in_test (mean 3.08):       out 0.92, 1.18, 0.58, 0.04 vs in 0.06, 0.02, 0.02, 0.06: 14/16, threshold 0.06
#   fitted on in_train (mean 1.1):       out 2.9, 0.8, 1.4, 2.02 vs in 1.92, 1.96, 2.0, 2.04: 7/16, threshold 0.1
#   fitted on out_test (mean 2.88):      threshold ~0.8 (its deviations 1.12, 0.98, 0.38, 0.24)
#   compared in_val (all 0.2) vs out:    12/16 (and 20 units in, not 4)
#   compared with in and out swapped:    1/16
TYPICALITY_AUROC = 15 / 16
# The raw likelihood (bits/dim, larger = more OOD), nothing fitted: out 4.0 beats all 4, 1.9 and 2.5 none,
# 3.12 beats 3.02, 3.06, 3.10: 7/16 (swapped: 9/16).
LIKELIHOOD_AUROC = 7 / 16


def _row(rows: list[dict], score: str, params: str = "") -> dict:
    return next(row for row in rows if row["score"] == score and row["score_params"] in ("", params))


def _check_rows(rows: list[dict], fit_set: str = "in_val") -> None:
    likelihood = _row(rows, "likelihood")
    assert likelihood["auroc"] == pytest.approx(LIKELIHOOD_AUROC)
    assert (likelihood["units_in"], likelihood["units_out"]) == (4, 4)
    assert likelihood["threshold"] is None and likelihood["flagged_in"] is None
    typicality = _row(rows, "typicality", "batch=1,seed=0")
    assert typicality["fit_set"] == fit_set
    assert typicality["auroc"] == pytest.approx(TYPICALITY_AUROC)
    assert typicality["threshold"] == pytest.approx(0.2, abs=1e-12)
    assert typicality["flagged_in"] == 0.0 and typicality["flagged_out"] == 0.75


def test_score_rows_fit_on_the_hold_out_and_compare_in_test_with_out_test():
    rows, per_sample, skipped = score_rows(FRAMES, {}, [Likelihood(), Typicality(batch=1)], family="glow",
                                           fit_set="in_val")
    assert skipped == {}
    _check_rows(rows)
    # Every set's per-sample scores come from the same fit: |bpd - 3.0|, in the order of SETS.
    every_bpd = np.concatenate([FRAMES[name]["bpd"].to_numpy() for name in SETS])
    assert np.allclose(per_sample["score:typicality(batch=1,seed=0)"], np.abs(every_bpd - 3.0), rtol=0, atol=1e-12)
    assert np.array_equal(per_sample["score:likelihood"], every_bpd)


@pytest.fixture
def run(tmp_path, staged_root):
    return fake_run(tmp_path / "run", staged_root)


def _request(run, staged_root) -> EvalRequest:
    return EvalRequest(run=run, pair="fashionmnist:mnist", data_root=str(staged_root), quiet=True,
                       eval=EvalConfig(batch_size=10, train_sample=10, limit=10, scores=("likelihood", "typicality")))


def test_evaluate_fits_on_the_hold_out_and_compares_in_test_with_out_test(run, staged_root, monkeypatch):
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(evaluate_module, "set_statistics", statistics_by_set(FRAMES, asked))
    result = evaluate(_request(run, staged_root))
    assert asked == [SETS]
    _check_rows(result.rows)
    assert json.loads((result.folder / "metrics.json").read_text())["rows"] == result.rows
    row = result.metrics
    assert (row["bpd_in_test_mean"], row["bpd_out_test_mean"]) == (pytest.approx(3.08), pytest.approx(2.88))
    assert row["ood_lower_bpd"] is True
    # scores.csv: each image's typicality from the hold-out's fit, |bpd - 3.0|, whatever its set.
    scores = pd.read_csv(result.folder / "scores.csv")
    assert list(scores["set"].unique()) == list(SETS)
    assert np.allclose(scores["score:typicality(batch=1,seed=0)"], np.abs(scores["bpd"] - 3.0), atol=1e-6)


def test_a_run_without_a_hold_out_fits_on_its_training_images(tmp_path, staged_root, monkeypatch):
    run = fake_run(tmp_path / "run", staged_root, n_val=0)
    frames = {**FRAMES, "in_val": bpd_frame([])}
    monkeypatch.setattr(evaluate_module, "set_statistics", statistics_by_set(frames))
    rows = evaluate(_request(run, staged_root)).rows
    typicality = _row(rows, "typicality", "batch=1,seed=0")
    # in_train's mean 1.1 and deviations 0.1: the 7/16 and threshold 0.1 computed above.
    assert typicality["fit_set"] == "in_train"
    assert typicality["threshold"] == pytest.approx(0.1, abs=1e-12)
    assert typicality["auroc"] == pytest.approx(7 / 16)


@pytest.mark.slow
def test_a_flat_sets_in_test_images_are_neither_trained_nor_validated_on(tmp_path, staged_root, capsys):
    """A user's npz (one set serving as both splits): the in-distribution test set is the part training left
    out, disjoint from the images trained on and from the hold-out the scores are fitted on."""
    from cli_runs import run_cli
    from oodbench.data import load_images

    images = load_images("fashionmnist", "train", data_root=staged_root, limit=300).images
    np.savez(tmp_path / "clothes.npz", x=images[:, 0, 2:30, 2:30].numpy())  # the 28x28 originals
    code, _, err = run_cli(["train", "--model", "glow", "--dataset", f"npz:{tmp_path / 'clothes.npz'}", "--epochs",
                            "1", "--batch-size", "64", "--runs-dir", tmp_path / "runs", "--quiet", "--set", "levels=2",
                            "--set", "steps=1", "--set", "hidden_channels=8"], capsys)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    code, _, err = run_cli(["evaluate", "--run", run, "--pair", f"npz:{tmp_path / 'clothes.npz'}:mnist", "--data-root",
                            staged_root, "--limit", "50", "--train-sample", "500", "--scores", "likelihood", "--quiet"],
                           capsys)
    assert code == 0, err
    (scores_csv,) = run.glob("eval/*/scores.csv")
    scores = pd.read_csv(scores_csv)
    index = {name: set(scores.loc[scores["set"] == name, "index"]) for name in ("in_train", "in_val", "in_test")}
    assert len(index["in_val"]) == 60 and len(index["in_train"]) == 180  # 300 images: a fifth, a fifth, the rest
    assert len(index["in_test"]) == 50 and not index["in_test"] & (index["in_val"] | index["in_train"])
    assert len(index["in_train"] | index["in_val"] | index["in_test"]) == 290


def test_a_score_with_infinite_values_is_skipped_with_the_reason_and_the_others_computed():
    """An overflowing statistic (here one out-of-distribution image's gradient norm is inf) makes a score's
    values non-finite: that score is left out with the count in its reason, not passed to the AUROC; the
    scores that do not read the statistic are computed as before."""
    from oodbench.scores.gradients import GRADIENT_NORM, ScoreStatistic

    frames = {name: frame.assign(**{GRADIENT_NORM: np.arange(len(frame), dtype=float) + 1.0})
              for name, frame in FRAMES.items()}
    frames["out_test"].loc[2, GRADIENT_NORM] = np.inf
    gradient_norm = ScoreStatistic(fisher="identity")
    rows, per_sample, skipped = score_rows(frames, {}, [Likelihood(), gradient_norm], family="glow", fit_set="in_val")
    assert _row(rows, "likelihood")["auroc"] == pytest.approx(LIKELIHOOD_AUROC)
    assert [row["score"] for row in rows] == ["likelihood"]
    assert skipped[gradient_norm.label].startswith(f"{gradient_norm.label} gave 1 NaN or infinite scores of 4 in one set")
