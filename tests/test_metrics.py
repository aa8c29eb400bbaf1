"""OOD metrics against hand-computed cases and scikit-learn; OOD is the positive class."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from oodbench.metrics import OODMetrics, ood_metrics


def test_perfect_separation_when_ood_scores_higher():
    m = ood_metrics([1, 2, 3, 4], [5, 6, 7, 8])
    assert m == OODMetrics(auroc=1.0, aupr_in=1.0, aupr_out=1.0, fpr_at_95_tpr=0.0, fpr_at_80_tpr=0.0)


def test_positive_class_is_ood_so_reversed_scores_give_zero_auroc():
    # The paper's failure: OOD images get *lower* BPD, so AUROC of the BPD score falls below 0.5.
    m = ood_metrics(in_scores=[5, 6, 7, 8], out_scores=[1, 2, 3, 4])
    assert m.auroc == 0.0
    assert m.fpr_at_95_tpr == 1.0 and m.fpr_at_80_tpr == 1.0


def test_hand_computed_interleaved_case():
    in_scores = np.arange(1, 11, dtype=float)  # 1..10
    out_scores = [2.5, 5.5, 8.5, 11.0]
    m = ood_metrics(in_scores, out_scores)
    # Pairs (out > in): 2 + 5 + 8 + 10 = 25 of 40.
    assert m.auroc == pytest.approx(25 / 40)
    # Flagging all 4 OOD (threshold 2.5) flags in-dist 3..10 = 8 of 10; 80% TPR needs 4 of 4 too.
    assert m.fpr_at_95_tpr == pytest.approx(0.8)
    assert m.fpr_at_80_tpr == pytest.approx(0.8)
    # AUPR-out: precision at each OOD hit, ranked by score: 11 (1/1), 8.5 (2/4), 5.5 (3/8), 2.5 (4/12).
    assert m.aupr_out == pytest.approx((1 + 2 / 4 + 3 / 8 + 4 / 12) / 4)


def test_fpr_at_80_differs_from_95_when_thresholds_differ():
    in_scores = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    out_scores = [1.5, 7.5, 8.5, 9.5, 10.5]  # 4 of 5 (80%) flagged at threshold 7.5 -> in-dist 8, 9 = 0.2
    m = ood_metrics(in_scores, out_scores)
    assert m.fpr_at_80_tpr == pytest.approx(0.2)
    assert m.fpr_at_95_tpr == pytest.approx(0.8)  # needs 1.5 -> in-dist 2..9


def test_matches_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    s_in = rng.integers(0, 20, 300).astype(float)
    s_out = rng.integers(5, 25, 200).astype(float)
    m = ood_metrics(s_in, s_out)
    labels = np.r_[np.zeros(300), np.ones(200)]
    scores = np.r_[s_in, s_out]
    assert m.auroc == pytest.approx(roc_auc_score(labels, scores))
    assert m.aupr_out == pytest.approx(average_precision_score(labels, scores))
    assert m.aupr_in == pytest.approx(average_precision_score(1 - labels, -scores))


def test_auroc_is_rank_based_for_unbounded_scores():
    a = ood_metrics([1e6, 2e6], [3e6, -1e9])
    b = ood_metrics([1.0, 2.0], [3.0, -5.0])
    assert a.auroc == b.auroc == 0.5


@pytest.mark.parametrize("bad", [[], [np.nan, 1.0], [np.inf]])
def test_rejects_empty_or_non_finite_scores(bad):
    with pytest.raises(ValueError):
        ood_metrics(bad, [1.0, 2.0])
