"""OOD metrics against hand-computed cases (ties included), a brute-force threshold search and
scikit-learn. AUROC and FPR@80 take OOD as positive (Ren et al. 2019); FPR@95 takes the
in-distribution set as positive (OpenOOD / Hendrycks & Gimpel: OOD accepted at 95% of ID accepted)."""

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
    # FPR@95 (ID positive): accepting 95% of 10 ID images means all 10 (score <= 10); OOD accepted: 2.5, 5.5, 8.5.
    assert m.fpr_at_95_tpr == pytest.approx(3 / 4)
    # FPR@80 (OOD positive): flagging 80% of 4 OOD images means all 4 (score >= 2.5); ID flagged: 3..10 = 8 of 10.
    assert m.fpr_at_80_tpr == pytest.approx(0.8)
    # AUPR-out: precision at each OOD hit, ranked by score: 11 (1/1), 8.5 (2/4), 5.5 (3/8), 2.5 (4/12).
    assert m.aupr_out == pytest.approx((1 + 2 / 4 + 3 / 8 + 4 / 12) / 4)


def test_the_two_fpr_conventions_differ():
    in_scores = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    out_scores = [1.5, 7.5, 8.5, 9.5, 10.5]
    m = ood_metrics(in_scores, out_scores)
    # OOD positive: 4 of 5 OOD (80%) flagged at score >= 7.5 -> ID flagged: 8, 9 = 2 of 10.
    assert m.fpr_at_80_tpr == pytest.approx(0.2)
    # ID positive: accepting 95% of 10 ID images accepts all (score <= 9) -> OOD accepted: 1.5, 7.5, 8.5 = 3 of 5.
    # (With OOD as positive, 95% TPR would instead flag all 5 OOD and report ID flagged: 2..9 = 0.8.)
    assert m.fpr_at_95_tpr == pytest.approx(0.6)


def test_fpr_at_80_with_ties_takes_the_exact_threshold():
    # ID 0..9; OOD with ties among themselves (9, 9) and with ID values (1, 2, 3, 5, ...).
    in_scores = np.arange(10, dtype=float)
    out_scores = [1, 2, 3, 5, 6, 7, 8, 9, 9, 10]
    # Flagging score >= 3 flags 8 of 10 OOD (80%) and ID 3..9 = 7 of 10. scikit-learn's default curve
    # drops that point as collinear, and the first point past it gave 0.9.
    assert ood_metrics(in_scores, out_scores).fpr_at_80_tpr == pytest.approx(0.7)


def test_fpr_at_95_with_ties_takes_the_exact_threshold():
    # 20 ID scores with ties: 0 x3, 1 x4, 2, 3 x4, 4 x2, 5 x4, 6, 7; OOD 2, 2, 4, 5, 6, 7.
    in_scores = [0] * 3 + [1] * 4 + [2] + [3] * 4 + [4] * 2 + [5] * 4 + [6, 7]
    out_scores = [2, 2, 4, 5, 6, 7]
    # Accepting score <= 6 accepts 19 of 20 ID (95%); OOD accepted: 2, 2, 4, 5, 6 = 5 of 6.
    # The default (intermediate points dropped) curve reported 1.0.
    assert ood_metrics(in_scores, out_scores).fpr_at_95_tpr == pytest.approx(5 / 6)


def brute_force_fprs(s_in: np.ndarray, s_out: np.ndarray) -> tuple[float, float]:
    """FPR@95 and FPR@80 by trying every threshold: the definitions, with no ROC curve involved."""
    thresholds = np.unique(np.r_[s_in, s_out])
    # ID positive: the smallest threshold t with P_in(s <= t) >= 0.95; report P_out(s <= t).
    t95 = min(t for t in thresholds if np.mean(s_in <= t) >= 0.95)
    # OOD positive: the largest threshold t with P_out(s >= t) >= 0.80; report P_in(s >= t).
    t80 = max(t for t in thresholds if np.mean(s_out >= t) >= 0.80)
    return float(np.mean(s_out <= t95)), float(np.mean(s_in >= t80))


@pytest.mark.parametrize("seed", range(20))
def test_fprs_match_a_brute_force_threshold_search_on_tied_scores(seed):
    rng = np.random.default_rng(seed)
    s_in = rng.integers(0, 12, rng.integers(20, 200)).astype(float)
    s_out = rng.integers(3, 15, rng.integers(5, 100)).astype(float)
    m = ood_metrics(s_in, s_out)
    fpr95, fpr80 = brute_force_fprs(s_in, s_out)
    assert m.fpr_at_95_tpr == pytest.approx(fpr95) and m.fpr_at_80_tpr == pytest.approx(fpr80)


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


def test_acceptance_threshold_accepts_at_least_the_rate_asked_for():
    from oodbench.metrics import acceptance_threshold

    scores = np.arange(1.0, 21.0)  # 20 in-distribution scores 1..20
    assert acceptance_threshold(scores, 0.95) == (19.0, 0.95)  # the 19th smallest: 19 of 20 accepted
    assert acceptance_threshold(scores, 0.96) == (20.0, 1.0)  # 19.2 images: all 20 are needed
    assert acceptance_threshold(scores[::-1], 0.5) == (10.0, 0.5)  # order does not matter
    # Ties: three images share the lowest score, so accepting half means accepting all three.
    assert acceptance_threshold([1.0, 1.0, 1.0, 2.0], 0.5) == (1.0, 0.75)
    with pytest.raises(ValueError, match="must be in"):
        acceptance_threshold(scores, 0.0)


def test_auroc_interval_of_a_hand_computed_case():
    # in [1, 2, 3], OOD [2, 4]: OOD placements (in-distribution images each outscores, ties half) 1.5/3, 3/3;
    # in-distribution placements (OOD images outscoring each) 2/2, 1.5/2, 1/2. AUROC 0.75; variance
    # var(0.5, 1)/2 + var(1, 0.75, 0.5)/3 = 0.0625 + 0.0208333 = 0.0833333; 1.959964 x 0.288675 = 0.565792.
    from oodbench.metrics import auroc_interval

    low, high = auroc_interval([1, 2, 3], [2, 4])
    assert low == pytest.approx(0.75 - 0.565792, abs=1e-6) and high == 1.0  # clipped at 1


def test_auroc_interval_agrees_with_a_bootstrap_and_covers_the_true_auroc():
    from scipy import stats

    from oodbench.metrics import auroc_interval

    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 400), rng.normal(0.3, 1, 400)

    def auroc(x_in, x_out, axis=-1):
        return np.mean(x_out[..., None, :] > x_in[..., :, None], axis=(-2, -1))  # no ties in continuous draws

    boot = stats.bootstrap((a, b), auroc, n_resamples=2000, method="percentile", vectorized=True, random_state=0)
    low, high = auroc_interval(a, b)
    assert low == pytest.approx(boot.confidence_interval.low, abs=0.01)
    assert high == pytest.approx(boot.confidence_interval.high, abs=0.01)
    # Coverage: two normals 0.3 apart have AUROC Phi(0.3 / sqrt 2); 95% intervals hold it ~95% of the time.
    truth = stats.norm.cdf(0.3 / np.sqrt(2))
    covered = [low <= truth <= high for low, high in (
        auroc_interval(rng.normal(0, 1, 150), rng.normal(0.3, 1, 150)) for _ in range(400))]
    assert 0.92 <= np.mean(covered) <= 0.98
