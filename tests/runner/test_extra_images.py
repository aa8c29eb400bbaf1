"""Optional statistics on a subsample (EvalConfig.extra_images): per-image gradients cost a backward pass per
image, so a capped evaluation computes them on a seeded choice of N images per set, and the scores that read
them are fitted and compared on exactly those images, while the other scores keep every image."""

from __future__ import annotations

import pytest
from fake_runs import fake_run
from sklearn.metrics import roc_auc_score

from oodbench.config import EvalConfig
from oodbench.runner import EvalRequest, evaluate

pytestmark = pytest.mark.slow


def test_gradient_scores_use_the_capped_images_and_the_others_every_image(tmp_path, staged_root, one_thread):
    run = fake_run(tmp_path / "run", staged_root)
    cfg = EvalConfig(limit=30, train_sample=10, extra_images=8, scores=("likelihood", "score_statistic"))
    result = evaluate(EvalRequest(run=run, pair="fashionmnist:mnist", eval=cfg, data_root=str(staged_root), quiet=True))
    rows = {(r["score"], r["score_params"]): r for r in result.rows}
    assert (rows[("likelihood", "")]["units_in"], rows[("likelihood", "")]["units_out"]) == (30, 30)
    norm = next(r for (score, params), r in rows.items() if score == "score_statistic" and "identity" in params)
    assert (norm["units_in"], norm["units_out"]) == (8, 8)

    scores = result.scores
    compared = scores[scores["set"].isin(["in_test", "out_test"]) & scores["grad_norm"].notna()]
    assert compared.groupby("set").size().to_dict() == {"in_test": 8, "out_test": 8}
    column = next(c for c in scores if c.startswith("score:score_statistic") and "identity" in c)
    assert compared[column].notna().all() and scores.loc[scores["grad_norm"].isna(), column].isna().all()
    # the row's AUROC is that of the gradient norm on those 16 images, OOD positive
    by_hand = roc_auc_score(compared["set"] == "out_test", compared["grad_norm"])
    assert norm["auroc"] == pytest.approx(by_hand)
