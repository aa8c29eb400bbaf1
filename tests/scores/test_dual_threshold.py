"""Kamkari et al.'s dual threshold (scores/dual_threshold.py): on constructed statistics it flags the unlikely and
the likely-but-low-dimensional, not the likely and high-dimensional, larger = more OOD; only images with an LID
are units; the authors' envelope AUROC against a literal grid-of-thresholds reference (and scikit-learn's AUROC
with one statistic); and end to end, `evaluate` on a tiny Glow gives its rows and `report` its scatter."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fake_runs import fake_run
from sklearn.metrics import roc_auc_score

from oodbench.config import EvalConfig
from oodbench.data.quantize import index_noise
from oodbench.metrics import ood_metrics
from oodbench.report.lid_figures import lid_scatter
from oodbench.report.tables import write_report
from oodbench.runner import EvalRequest, evaluate
from oodbench.scores import SCORES
from oodbench.scores.dual_threshold import LIDDualThreshold, envelope_auroc
from oodbench.scores.likelihood import Likelihood


def frame(bpd: list[float], lid: list[float], lidl: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"bpd": bpd, "lid": lid, "lid_lidl": lidl if lidl is not None else lid})


# The fit set: bpd 2.9 / 3.1 (mean 3, sd s_b = 0.2 sqrt(20/19) / 2 ...), LID 90 / 110 (mean 100)
FIT = frame([2.9, 3.1] * 10, [90.0, 110.0] * 10)
S_BPD = float(np.std([2.9, 3.1] * 10, ddof=1))
S_LID = float(np.std([90.0, 110.0] * 10, ddof=1))
# typical; unlikely; likely but low-dimensional; likely and high-dimensional
CASES = frame([3.0, 3.5, 2.5, 2.5], [100.0, 100.0, 40.0, 110.0])


def test_it_flags_the_unlikely_and_the_likely_but_low_dimensional_only():
    fitted = LIDDualThreshold().fit(FIT)
    scores = fitted.score(CASES)
    want = [0.0, 0.5 / S_BPD, 60.0 / S_LID, max(-0.5 / S_BPD, -10.0 / S_LID)]
    assert scores == pytest.approx(want, abs=1e-9)
    flagged = scores > 2.0  # both thresholds two fit-set standard deviations out
    assert flagged.tolist() == [False, True, True, False]
    # larger = more OOD: the low-dimensional image outranks the typical one, which the likelihood ranks the other way
    assert scores[2] > scores[0] and Likelihood().score(CASES)[2] < Likelihood().score(CASES)[0]
    # in: the typical and the high-dimensional likely one; out: the other two. The dual threshold separates them;
    # the likelihood (bits/dim 3.0, 2.5 in; 3.5, 2.5 out) wins 2 pairs, loses 1, ties 1: 2.5 / 4
    assert ood_metrics(scores[[0, 3]], scores[[1, 2]]).auroc == 1.0
    likelihood = Likelihood().score(CASES)
    assert ood_metrics(likelihood[[0, 3]], likelihood[[1, 2]]).auroc == 0.625


def test_only_images_with_an_lid_are_units_and_each_estimator_reads_its_own():
    fitted = LIDDualThreshold().fit(FIT)
    partial = frame([3.0, 3.5, 2.5], [100.0, np.nan, 40.0])
    assert fitted.score(partial) == pytest.approx([0.0, 60.0 / S_LID])
    assert not LIDDualThreshold.per_sample
    lidl = LIDDualThreshold("lidl").fit(frame([2.9, 3.1] * 10, [0.0] * 20, [90.0, 110.0] * 10))
    assert lidl.needs == ("bpd", "lid_lidl") and lidl.score(frame([3.0], [0.0], [40.0])) == pytest.approx([60 / S_LID])
    assert {v.short for v in SCORES.get("lid_dual_threshold")} == {"LID dual", "LID dual (LIDL)"}


def test_without_lids_or_with_one_lid_for_all_it_says_what_to_change():
    with pytest.raises(ValueError, match="lid_fraction"):
        LIDDualThreshold().fit(frame([3.0] * 5, [np.nan] * 5))
    with pytest.raises(ValueError, match="lid_delta"):
        LIDDualThreshold().fit(frame([2.9, 3.1] * 3, [3072.0] * 6))
    with pytest.raises(ValueError, match="lid_fraction"):
        LIDDualThreshold().fit(FIT).score(frame([3.0], [np.nan]))
    assert LIDDualThreshold().unusable("pixelcnn", {"bpd", "lid"}) is not None
    assert "lid_fraction" in LIDDualThreshold().unusable("glow", {"bpd"})


def literal_envelope(in_ll, in_lid, out_ll, out_lid) -> float:
    """The authors' loops, written out: every threshold pair from the values seen (plus one above all), the ROC
    point of "accept if both are at least the thresholds", points sorted by (fpr, tpr), kept when no earlier
    kept point has a larger tpr, joined from (0, 0) to (1, 1), trapezoids."""
    points = []
    for a in [*np.unique(np.concatenate([in_ll, out_ll])), np.inf]:
        for b in [*np.unique(np.concatenate([in_lid, out_lid])), np.inf]:
            tpr = np.mean((in_ll >= a) & (in_lid >= b))
            fpr = np.mean((out_ll >= a) & (out_lid >= b))
            points.append((fpr, tpr))
    kept = [(0.0, 0.0)]
    for fpr, tpr in sorted(points):
        if fpr >= kept[-1][0] and tpr >= kept[-1][1]:
            kept.append((fpr, tpr))
    kept.append((1.0, 1.0))
    return sum((x1 - x0) * (y1 + y0) / 2 for (x0, y0), (x1, y1) in zip(kept, kept[1:], strict=False))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_envelope_auroc_is_the_authors_grid_of_thresholds(seed):
    rng = np.random.default_rng(seed)
    # integer LIDs (ties, as the threshold count gives) and rounded likelihoods (ties too)
    in_ll, out_ll = rng.normal(0, 1, 15).round(1), rng.normal(0.8, 1, 12).round(1)
    in_lid, out_lid = rng.integers(5, 12, 15).astype(float), rng.integers(2, 9, 12).astype(float)
    assert envelope_auroc(in_ll, in_lid, out_ll, out_lid) == pytest.approx(literal_envelope(in_ll, in_lid, out_ll,
                                                                                           out_lid), abs=1e-12)
    # one statistic (the LID the same everywhere): the ordinary AUROC (OOD positive, score = -log p)
    same = np.ones_like
    labels = np.r_[np.zeros(15), np.ones(12)]
    assert envelope_auroc(in_ll, same(in_ll), out_ll, same(out_ll)) == pytest.approx(
        roc_auc_score(labels, -np.r_[in_ll, out_ll]), abs=1e-12)


def nonlinear_fake_run(root, staged_root):
    """A fake run (tests/fake_runs.py) whose couplings and split priors are not the zero-initialised identity: a
    fresh Glow is linear, every image would get the same Jacobian and so the same LID."""
    run = fake_run(root, staged_root, n_train=20, n_val=10)
    checkpoint = torch.load(run.best, weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for key, value in checkpoint["state_dict"].items():
        if key.endswith(("conv_out.weight", "split.prior.weight")):
            value.copy_(0.05 * torch.randn(value.shape, generator=generator))
    torch.save(checkpoint, run.best)
    return run


def test_evaluate_gives_the_dual_threshold_rows_and_report_draws_the_scatter(tmp_path, staged_root, one_thread):
    run = nonlinear_fake_run(tmp_path / "run", staged_root)
    # 0.3 of the images: test indices 3, 4, 7, 9 of each set and hold-out 21, 22, 26; at e^-1.1 their LIDs differ
    cfg = EvalConfig(batch_size=10, train_sample=5, limit=10, lid_fraction=0.3, lid_delta=-1.1,
                     scores=("likelihood", "lid_dual_threshold"))
    result = evaluate(EvalRequest(run=run, pair="fashionmnist:mnist", data_root=str(staged_root), quiet=True, eval=cfg))
    rows = {row["score_params"]: row for row in result.rows if row["score"] == "lid_dual_threshold"}
    assert set(rows) == {"estimator=threshold", "estimator=lidl"}
    scores = result.scores
    # the subsample: the images whose first dequantization-noise value is below 0.3 (index-seeded, data/quantize.py)
    for name, units in (("in_test", "units_in"), ("out_test", "units_out")):
        part = scores[scores["set"] == name]
        chosen = (index_noise(torch.tensor(part["index"].to_numpy()), (1, 32, 32), 0)
                  .reshape(len(part), -1)[:, 0] < 0.3).numpy()
        assert np.isfinite(part["lid"].to_numpy()).tolist() == chosen.tolist()
        assert rows["estimator=threshold"][units] == chosen.sum() > 0
    assert scores.loc[scores["set"] == "in_train", "lid"].isna().all()  # in-train is not a compared set
    assert ((scores["lid"].dropna() >= 0) & (scores["lid"].dropna() <= 1024)).all()
    assert 0.0 <= rows["estimator=lidl"]["auroc"] <= 1.0
    assert "Jacobian-vector products" in rows["estimator=threshold"]["cost_passes"]
    assert json.loads((result.folder / "metrics.json").read_text())["scores"] == ["likelihood", "lid_dual_threshold"]

    report = write_report([tmp_path / "run"], tmp_path / "report")
    scatter = sorted((tmp_path / "report").glob("lid_*.png"))
    assert len(scatter) == 1 and scatter[0].name in (tmp_path / "report" / "results.md").read_text()
    # a scores.csv without LIDs draws none
    without = result.scores.drop(columns=["lid", "lid_lidl"])
    without.to_csv(tmp_path / "plain.csv", index=False)
    assert lid_scatter(tmp_path / "plain.csv", tmp_path / "x.png", row=report.iloc[0].to_dict()) is None
