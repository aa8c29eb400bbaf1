"""OOD scores: pure functions of per-sample statistics (no model is loaded here), larger = more OOD.

Each score is one small module with its paper in its docstring and one registry entry below: its
name and the variants a results table shows (input complexity's codecs, typicality's batch sizes).
`oodbench evaluate --scores NAME,...` and a profile's `scores:` list pick entries by name; an unknown
name is an error listing the valid ones. A new score: a module with a `Score` subclass (base.py) and
its test, one `SCORES.add` line here and its name in `oodbench/names.py` (the CLI's light list).
A score of another installed package joins through the entry point group `oodbench.scores` (`plugins.py`).
"""

from __future__ import annotations

# parse_scores checks names against the light list (names.py, equal to SCORES), so the CLI can parse
# --scores before importing this package's pandas.
from oodbench.names import parse_scores
from oodbench.plugins import SCORES_GROUP
from oodbench.registry import Registry
from oodbench.scores.base import Score
from oodbench.scores.complexity import InputComplexity
from oodbench.scores.diffpath import VARIANTS as DIFFPATH_VARIANTS
from oodbench.scores.diffpath import DiffPath
from oodbench.scores.dose import DoSE
from oodbench.scores.dual_threshold import ESTIMATORS, LIDDualThreshold
from oodbench.scores.ensemble import WAIC, EnsembleLikelihood
from oodbench.scores.gradients import FisherCombined, LayerGradients, ScoreStatistic
from oodbench.scores.likelihood import Likelihood
from oodbench.scores.likelihood_ratio import LikelihoodRatio
from oodbench.scores.msma import MSMA
from oodbench.scores.regret import LikelihoodRegret
from oodbench.scores.typicality import BATCH_SIZES, Typicality
from oodbench.units import bits_per_dim

SCORES: Registry[tuple[Score, ...]] = Registry("score", plugins=SCORES_GROUP)  # plugin scores join after these
SCORES.add("likelihood", (Likelihood(),))
SCORES.add("input_complexity", (InputComplexity("png"), InputComplexity("jpeg2000")))
SCORES.add("typicality", tuple(Typicality(batch=m) for m in BATCH_SIZES))
SCORES.add("dose", (DoSE(),))
SCORES.add("likelihood_ratio", (LikelihoodRatio(),))
SCORES.add("ensemble_likelihood", (EnsembleLikelihood(),))
SCORES.add("waic", (WAIC(),))
SCORES.add("likelihood_regret", (LikelihoodRegret(),))
SCORES.add("score_statistic", (ScoreStatistic("layer"), ScoreStatistic("identity")))
SCORES.add("fisher_combined", (FisherCombined(),))
SCORES.add("layer_gradients", (LayerGradients(),))
SCORES.add("lid_dual_threshold", tuple(LIDDualThreshold(estimator) for estimator in ESTIMATORS))
SCORES.add("diffpath", tuple(DiffPath(dims=dims) for dims in DIFFPATH_VARIANTS))
SCORES.add("msma", (MSMA(),))


def score_variants(names: tuple[str, ...] | None) -> list[Score]:
    """Every variant of the named scores (all registered scores when None), in registry order."""
    chosen = SCORES.registered() if names is None else names
    return [variant for name in chosen for variant in SCORES.get(name)]


def short_label(name: str, params: str) -> str:
    """The table heading of a results row's score ("typicality", "batch=5,seed=0" -> "typ M=5")."""
    variants = SCORES.get(name)
    for variant in variants:
        if variant.params_text == params:
            return variant.short
    if len(variants) == 1:  # one variant: its heading, whatever parameters an older row recorded
        return variants[0].short
    return f"{name}({params})" if params else name


__all__ = ["SCORES", "Score", "bits_per_dim", "parse_scores", "score_variants", "short_label"]
