"""OOD detection metrics from per-sample scores; the OOD set is the positive class.

A score is "larger = more OOD" (for likelihood models: the bits/dim). Everything rank-based comes
from scikit-learn; nothing here is hand-rolled and nothing imports a model. Conventions follow
PAPER.md ("Metrics conventions"):
- AUROC with OOD as positive: 0.5 is chance, well below 0.5 means the OOD set looks *more* in-distribution.
- AUPR-in: in-distribution as positive, scored by the negated score; AUPR-out: OOD as positive.
- FPR@k%TPR: the fraction of in-distribution samples flagged OOD at the threshold that flags k% of
  the OOD samples (95% as in classifier papers, 80% as in generative-model papers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class OODMetrics:
    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_95_tpr: float
    fpr_at_80_tpr: float

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
    """False-positive rate at the first ROC point whose true-positive rate reaches `tpr`."""
    fpr, tpr_curve, _ = roc_curve(labels, scores)
    return float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])


def ood_metrics(in_scores, out_scores) -> OODMetrics:
    """Metrics for separating `out_scores` (positive) from `in_scores`, larger = more OOD."""
    s_in, s_out = _validated(in_scores, "in-distribution"), _validated(out_scores, "OOD")
    scores = np.concatenate([s_in, s_out])
    is_ood = np.concatenate([np.zeros(s_in.size, dtype=int), np.ones(s_out.size, dtype=int)])
    return OODMetrics(
        auroc=float(roc_auc_score(is_ood, scores)),
        aupr_in=float(average_precision_score(1 - is_ood, -scores)),
        aupr_out=float(average_precision_score(is_ood, scores)),
        fpr_at_95_tpr=fpr_at_tpr(is_ood, scores, 0.95),
        fpr_at_80_tpr=fpr_at_tpr(is_ood, scores, 0.80),
    )
