"""results.md's sections on the remedies that need more than one model (Ren et al. 2019's likelihood
ratio, ensembles and WAIC, Xiao et al. 2020's likelihood regret): each family's AUROC of those scores
beside the raw likelihood and the published numbers, and each ensemble beside its own members.

An ensemble's rows come from the evaluation of its last seed (`runner/sweep.py`), with the members'
seeds in `members`; its members' single-model AUROCs are the likelihood rows of those seeds with the
same setup and pair. Only reads result rows: no model, no statistics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from oodbench.report.published import PUBLISHED
from oodbench.scores import SCORES

REMEDIES = ("likelihood", "likelihood_ratio", "ensemble_likelihood", "waic", "likelihood_regret")
_KEYS = ["model", "pair", "in_dataset", "out_dataset", "setup"]


def _published(score: str, family: str, in_dataset: str, out_dataset: str) -> str:
    found = [ref for ref in PUBLISHED if (ref.score, ref.family, ref.in_dataset, ref.out_dataset) ==
             (score, family, in_dataset, out_dataset)]
    return f" ({found[0].auroc:.3f})" if found else ""


def remedies_markdown(summary: pd.DataFrame) -> str:
    """Rows (family, pair); columns: each remedy's mean AUROC over seeds, the published AUROC in brackets."""
    rows = summary[summary["score"].isin(REMEDIES)]
    if rows.empty or set(rows["score"]) == {"likelihood"}:
        return "No score of these was evaluated (they need background models, several seeds or a VAE)."
    lines = []
    for (model, pair, in_dataset, out_dataset), group in rows.groupby(["model", "pair", "in_dataset", "out_dataset"]):
        line = {"family": model, "pair": pair}
        for score in REMEDIES:
            found = group[group["score"] == score]
            line[SCORES.get(score)[0].short] = ("-" if found.empty else
                                     f"{found['auroc_mean'].iloc[0]:.3f}") + _published(score, model, in_dataset, out_dataset)
        lines.append(line)
    return pd.DataFrame(lines).to_markdown(index=False)


def ensemble_markdown(frame: pd.DataFrame) -> str:
    """Each ensemble's AUROC (ensemble likelihood, WAIC) beside the mean and standard deviation of its
    members' single-model likelihood AUROC."""
    ensembles = frame[frame["score"].isin(("ensemble_likelihood", "waic"))]
    if ensembles.empty:
        return "No ensemble was evaluated (a profile with several seeds for a dataset makes one)."
    single = frame[frame["score"] == "likelihood"]
    lines = []
    for keys, group in ensembles.groupby(_KEYS + ["members"], sort=True):
        model, pair, _, _, setup, members = keys
        seeds = [int(s) for s in str(members).split(",")]
        own = single[(single["model"] == model) & (single["pair"] == pair) & (single["setup"] == setup)
                     & single["seed"].isin(seeds)]
        aurocs = own["auroc"].to_numpy(dtype=float)
        by_score = dict(zip(group["score"], group["auroc"], strict=True))
        lines.append({
            "family": model, "pair": pair, "members (seeds)": members,
            "ensemble BPD AUROC": by_score.get("ensemble_likelihood", np.nan), "WAIC AUROC": by_score.get("waic", np.nan),
            "members' BPD AUROC, mean": aurocs.mean() if aurocs.size else np.nan,
            "sd": aurocs.std(ddof=1) if aurocs.size > 1 else np.nan,
            "min": aurocs.min() if aurocs.size else np.nan, "max": aurocs.max() if aurocs.size else np.nan,
            "members found": f"{aurocs.size} of {len(seeds)}",
        })
    return pd.DataFrame(lines).to_markdown(index=False, floatfmt=".3f")
