"""`lid_dual_threshold` (Kamkari, Ross, Cresswell, Caterini, Krishnan & Loaiza-Ganem, ICML 2024, "A geometric
explanation of the likelihood OOD detection paradox"), flows: an image is in-distribution only if it is both
likely AND on a high-dimensional region of the model, log p(x) >= psi_L and LID(x) >= psi_LID. A flow can
give an OOD set (SVHN under a CIFAR-10 model) a high density on a region it squeezes into few directions:
high density on little volume, hence little probability mass, which is why such images are never sampled.
LID(x) is the local intrinsic dimension of the flow at x (analysis/lid.py): `lid` the paper's count of
singular values of the generative map's Jacobian above e^delta, `lid_lidl` the earlier version's LIDL rate.

The authors evaluate the two thresholds by the area under the upper envelope of the ROC points of every
pair (psi_L, psi_LID) on the test sets themselves (dgm_geometry docs_quarto/sections/ood/ood_guide.ipynb
with metrics/ood/roc_analysis.py @3e4481c; dgm_ood_detection notebooks/auc_tables.ipynb @6f0c217 also
takes the max with the likelihood's own AUROC): thresholds chosen with the test labels, so an upper bound
for any rule set beforehand. `envelope_auroc` computes that number (the report writes it on the scatter).
A score here is one number per image fitted on training-distribution images only, so the two thresholds
move together, each at the same number of fit-set standard deviations from its fit-set mean:

    score(x) = max( (bpd(x) - mean bpd) / sd bpd,  (mean LID - LID(x)) / sd LID )

flagged at t iff bpd(x) > mean + t sd (unlikely) or LID(x) < mean - t sd (likely, but low-dimensional).
Larger = more OOD. The LID is computed on a subsample only (EvalConfig.lid_fraction; the others are NaN),
so the units compared are the images of each set that have one (`per_sample` is False: results say how
many in units_in / units_out). Published, beside ours in results.md: report/published.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oodbench.scores.base import Score, fitted_state

ESTIMATORS = {"threshold": "lid", "lidl": "lid_lidl"}  # estimator -> the statistic column (analysis/lid.py)


def dual_threshold_score(bpd: np.ndarray, lid: np.ndarray, bpd_mean: float, bpd_sd: float, lid_mean: float,
                         lid_sd: float) -> np.ndarray:
    """max(standardised bpd, minus standardised LID): larger = unlikelier or lower-dimensional = more OOD."""
    return np.maximum((bpd - bpd_mean) / bpd_sd, (lid_mean - lid) / lid_sd)


def envelope_auroc(in_ll: np.ndarray, in_lid: np.ndarray, out_ll: np.ndarray, out_lid: np.ndarray) -> float:
    """The authors' dual-threshold AUROC: every (psi_L, psi_LID) accepts the images with log-likelihood >= psi_L
    and LID >= psi_LID, giving (fpr = OOD share accepted, tpr = in-distribution share accepted); sorted by
    (fpr, tpr), the points whose tpr is at least that of every point before them are joined (from (0, 0) to
    (1, 1)) and the area under them taken by trapezoids. With one statistic it is the ordinary AUROC."""
    points = [_accepted(in_ll, in_lid, out_ll, out_lid, psi) for psi in np.unique(np.concatenate([in_lid, out_lid]))]
    fpr, tpr = (np.concatenate(parts) for parts in zip(*points, strict=True))
    order = np.lexsort((tpr, fpr))
    fpr, tpr = fpr[order], tpr[order]
    keep = tpr >= np.maximum.accumulate(tpr)
    x = np.concatenate([[0.0], fpr[keep], [1.0]])
    y = np.concatenate([[0.0], tpr[keep], [1.0]])
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _accepted(in_ll: np.ndarray, in_lid: np.ndarray, out_ll: np.ndarray, out_lid: np.ndarray,
              psi_lid: float) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of LID >= psi_lid and log-likelihood >= every psi_L (each value seen, and one above all)."""
    psi_l = np.append(np.unique(np.concatenate([in_ll, out_ll])), np.inf)

    def share(ll: np.ndarray, lid: np.ndarray) -> np.ndarray:
        kept = np.sort(ll[lid >= psi_lid])
        return (kept.size - np.searchsorted(kept, psi_l, side="left")) / ll.size

    return share(out_ll, out_lid), share(in_ll, in_lid)


@dataclass(frozen=True)
class LIDDualThreshold(Score):
    estimator: str = "threshold"  # "threshold" (the ICML paper's) or "lidl" (its earlier version's)
    bpd_mean: float | None = fitted_state()
    bpd_sd: float | None = fitted_state()
    lid_mean: float | None = fitted_state()
    lid_sd: float | None = fitted_state()
    name = "lid_dual_threshold"
    paper = "Kamkari et al., ICML 2024 (thresholds at equal fit-set z-scores)"
    families = ("glow", "cv-glow")
    extra_statistics = ("lid",)
    per_sample = False  # units: the images of a set in the LID subsample
    missing_hint = ("lid_dual_threshold needs each image's LID, which `oodbench evaluate` computes on a share of the "
                    "images given by the evaluation setting lid_fraction (e.g. eval: {lid_fraction: 0.25})")

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {self.estimator!r}")

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("bpd", ESTIMATORS[self.estimator])

    @property
    def short(self) -> str:
        return "LID dual" if self.estimator == "threshold" else "LID dual (LIDL)"

    def fit(self, train: pd.DataFrame) -> LIDDualThreshold:
        lid = train[ESTIMATORS[self.estimator]].to_numpy(dtype=np.float64)
        lid = lid[np.isfinite(lid)]
        if lid.size < 2:
            raise ValueError(f"{self.name} is fitted on the LIDs of the fit set's images, and {lid.size} have one: "
                             "set the evaluation's lid_fraction (the share of images that get an LID), e.g. 0.25")
        if np.ptp(lid) == 0:
            raise ValueError(f"every fit-set image has LID {lid[0]:g}: lid_delta does not separate the singular "
                             "values (too small: all count; too large: none); choose another")
        bpd = train["bpd"].to_numpy(dtype=np.float64)
        return dataclasses.replace(self, bpd_mean=float(bpd.mean()), bpd_sd=float(bpd.std(ddof=1)),
                                   lid_mean=float(lid.mean()), lid_sd=float(lid.std(ddof=1)))

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        if self.lid_sd is None or self.bpd_sd is None or self.bpd_mean is None or self.lid_mean is None:
            raise ValueError("lid_dual_threshold must be fitted on held-out training statistics first")
        lid = stats[ESTIMATORS[self.estimator]].to_numpy(dtype=np.float64)
        has = np.isfinite(lid)
        if not has.any():
            raise ValueError("no image of a compared set is in the LID subsample; raise the evaluation's lid_fraction")
        return dual_threshold_score(stats["bpd"].to_numpy(dtype=np.float64)[has], lid[has], self.bpd_mean, self.bpd_sd,
                                    self.lid_mean, self.lid_sd)
