"""OOD detection metrics from per-sample scores, each in the convention of the literature it is compared with.

A score is "larger = more OOD" (for likelihood models: the bits/dim). Everything rank-based comes
from scikit-learn; nothing imports a model. Conventions (PAPER.md, "Metrics conventions"):
- AUROC with OOD as the positive class: 0.5 is chance; well below 0.5 means the OOD set looks *more*
  in-distribution than the in-distribution test set (the failure Nalisnick et al. 2019 report).
- AUPR-in: in-distribution as positive, ranked by the negated score; AUPR-out: OOD as positive.
- FPR@95%TPR, the classifier benchmarks' convention (Hendrycks & Gimpel 2017, OpenOOD): the
  in-distribution set is positive; at the threshold that *accepts* 95% of the in-distribution images,
  the fraction of OOD images also accepted (lower is better).
- FPR@80%TPR, the generative-model papers' convention (Ren et al. 2019, Table 1): OOD is positive; at
  the threshold that *flags* 80% of the OOD images, the fraction of in-distribution images also flagged.
Both are read off the full ROC curve (`drop_intermediate=False`): scikit-learn's default drops
collinear points, and with tied scores the first point reaching the TPR can then be the wrong one.
- The AUROC's 95% interval over the images (`auroc_interval`): DeLong, DeLong & Clarke-Pearson (1988),
  the default of R's pROC: the AUROC is a two-sample U-statistic whose variance is estimated from each
  image's "placement" among the other set, so the interval costs two rankings, not a bootstrap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

# TPRs are ratios of counts; a target such as 0.95 must match 19/20 even after float rounding.
_TPR_SLACK = 1e-12


@dataclass(frozen=True)
class OODMetrics:
    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_95_tpr: float  # OOD accepted when 95% of in-distribution is accepted (in-distribution positive)
    fpr_at_80_tpr: float  # in-distribution flagged when 80% of OOD is flagged (OOD positive)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _validated(scores, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name} scores are empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} scores contain NaN or infinity")
    return array


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr: float) -> float:
    """The false-positive rate at the first threshold whose true-positive rate reaches `tpr`, where
    `labels` marks the positives and larger `scores` are predicted positive. Tied scores share one
    threshold, so the TPR reached there can exceed `tpr`: no point between them exists to pick."""
    fpr, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr - _TPR_SLACK, side="left")])


def _labelled(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_ood) of the two sets, checked."""
    s_in, s_out = _validated(in_scores, "in-distribution"), _validated(out_scores, "OOD")
    return np.concatenate([s_in, s_out]), np.concatenate([np.zeros(s_in.size, dtype=int), np.ones(s_out.size, dtype=int)])


def roc_points(in_scores, out_scores) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the full ROC curve, OOD positive, larger = more OOD (the curve AUROC is the area of)."""
    scores, is_ood = _labelled(in_scores, out_scores)
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return fpr, tpr


def ood_metrics(in_scores, out_scores) -> OODMetrics:
    """Metrics for separating `out_scores` from `in_scores`, larger = more OOD."""
    scores, is_ood = _labelled(in_scores, out_scores)
    return OODMetrics(
        auroc=float(roc_auc_score(is_ood, scores)),
        aupr_in=float(average_precision_score(1 - is_ood, -scores)),
        aupr_out=float(average_precision_score(is_ood, scores)),
        # Accepting = a low score: the in-distribution set is positive under the negated score.
        fpr_at_95_tpr=fpr_at_tpr(1 - is_ood, -scores, 0.95),
        fpr_at_80_tpr=fpr_at_tpr(is_ood, scores, 0.80),
    )


def auroc_interval(in_scores, out_scores, level: float = 0.95) -> tuple[float, float]:
    """(low, high): DeLong's `level` confidence interval of the AUROC of `out_scores` against `in_scores`
    (OOD positive, larger = more OOD), over resampling the images of both sets; clipped to [0, 1].

    Each OOD image's placement is the fraction of in-distribution images it outscores (ties count half),
    each in-distribution image's the fraction of OOD images that outscore it; the AUROC is the mean of
    either, and its variance var(OOD placements) / n_out + var(in placements) / n_in."""
    s_in, s_out = _validated(in_scores, "in-distribution"), _validated(out_scores, "OOD")
    n_in, n_out = s_in.size, s_out.size
    ranks = rankdata(np.concatenate([s_in, s_out]))  # average ranks: ties count half
    out_placement = (ranks[n_in:] - rankdata(s_out)) / n_in
    in_placement = 1.0 - (ranks[:n_in] - rankdata(s_in)) / n_out
    auroc = out_placement.mean()
    variance = (out_placement.var(ddof=1) / n_out if n_out > 1 else 0.0) + \
        (in_placement.var(ddof=1) / n_in if n_in > 1 else 0.0)
    half = float(norm.ppf(0.5 + level / 2) * np.sqrt(variance))
    return max(0.0, float(auroc) - half), min(1.0, float(auroc) + half)


def acceptance_threshold(in_scores, accept: float) -> tuple[float, float]:
    """(threshold, fraction of `in_scores` it accepts) for a density gate that accepts at least `accept` of
    the in-distribution images: a unit is accepted when its score is <= threshold (larger = more OOD).
    The threshold is the ceil(accept * n)-th smallest in-distribution score, so ties never make it
    accept less than asked; the fraction it accepts is returned because ties can make it more."""
    scores = np.sort(_validated(in_scores, "in-distribution"))
    if not 0.0 < accept <= 1.0:
        raise ValueError(f"acceptance rate {accept} must be in (0, 1], e.g. 0.95")
    rank = max(1, int(np.ceil(accept * scores.size - _TPR_SLACK)))
    threshold = float(scores[rank - 1])
    return threshold, float(np.mean(scores <= threshold))
