"""What each score costs, per image, so that methods are compared at equal budgets (issue 21, section 4;
the newer benchmarks report AUROC against compute, e.g. Zhang et al.'s OpenOOD v1.5).

A score's cost is that of the statistics it reads (runner/statistics.py measures each one's seconds per
image where it is computed and caches the figure with it: "seconds:<statistic>", "machine:<statistic>"):
the likelihood always, the optional statistics it asks for (a VAE's regret refits, gradients, LID), the
compressed lengths when it reads them, and, for scores over several networks (a background model, an
ensemble's members), the likelihood once per network. Every results row gets:
    cost_networks           networks that score each image (1; 2 with a background model; M members)
    cost_passes             the network passes per image, in words, per statistic (the model says: see
                            `LikelihoodModel.statistic_passes`)
    cost_seconds_per_1000   measured seconds per 1,000 images, summed over those statistics
    cost_machine            where the seconds were measured (they travel with the cached statistics)
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from oodbench.schema import MODEL_FREE_STATISTICS
from oodbench.scores.base import Score
from oodbench.scores.companions import BACKGROUND, member_columns

# The compressed lengths' statistics (png_bpd -> "png"): model-free, timed where they are computed.
CODEC_OF = {column: column.removesuffix("_bpd") for column in MODEL_FREE_STATISTICS}
CODEC_WORDS = {"png": "PNG encoding", "jpeg2000": "lossless JPEG 2000 encoding"}


def networks(variant: Score, columns: set[str]) -> int:
    """How many networks score each image for `variant`: its own, plus a background model or the other
    members of an ensemble (whose statistics were joined onto the run's)."""
    if any(need.startswith(BACKGROUND) for need in variant.needs):
        return 2
    if variant.needs_companions:
        return max(1, len(member_columns(columns)))
    return 1


def statistics_read(variant: Score) -> list[str]:
    """The timed statistics `variant` reads: the likelihood, its optional statistics, the codecs it needs."""
    codecs = [CODEC_OF[need] for need in variant.needs if need in CODEC_OF]
    return ["likelihood", *variant.extra_statistics, *codecs]


def statistic_passes(model: Any, statistics: tuple[str, ...], settings: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """Each statistic's network passes per image in words, as the model says (`statistic_passes`)."""
    return {name: model.statistic_passes(name, dict(settings.get(name, {}))) for name in ("likelihood", *statistics)}


def score_cost(variant: Score, compared: pd.DataFrame, passes: Mapping[str, str]) -> dict[str, Any]:
    """The cost columns of `variant`'s row from the statistics of the compared images (`compared`: in-test
    and out-test together); `passes`: each statistic's network passes per image, in words."""
    n = networks(variant, set(compared.columns))
    read = statistics_read(variant)
    per_image = []
    for statistic in read:
        column = f"seconds:{statistic}"
        if column not in compared or compared[column].isna().all():
            per_image = None  # statistics cached by an older oodbench: their cost was not measured
            break
        seconds = float(compared[column].mean())
        per_image.append(seconds * n if statistic == "likelihood" else seconds)
    machines = sorted({str(m) for s in read if f"machine:{s}" in compared for m in compared[f"machine:{s}"].dropna()})
    words = [passes.get(s) or CODEC_WORDS.get(s, s) for s in read]
    return {
        "cost_networks": n,
        "cost_passes": " + ".join(f"{n} x ({w})" if s == "likelihood" and n > 1 else w for s, w in zip(read, words,
                                                                                                        strict=True)),
        "cost_seconds_per_1000": round(1000 * sum(per_image), 3) if per_image is not None else None,
        "cost_machine": "; ".join(machines) or None,
    }
