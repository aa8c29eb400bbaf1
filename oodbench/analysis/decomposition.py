"""The decomposition of a flow's likelihood into its prior and volume terms (Nalisnick et al. 2019,
Section 4 and Figure 3), as pure functions of an evaluation's per-image statistics (scores.csv).

A flow f maps the dequantized image y = (x + u)/256 to z = f(y), and (models/base.py)
    log p(x) = log p(z) + log|det df/dy| - D_model ln 256          (nats)
with D_model = C*H*W of the image the model takes. Bits/dim is per dimension of the dataset's own
image, D = `bpd_dims` (units.py; D < D_model for the grey 28x28 sets, zero-padded to 32x32), so
    bpd(x) = -log p(x) / (D ln 2)
           = c(log_pz) + c(logdet) + 8 D_model / D,      c(T) = -T / (D ln 2),
each term T contributing c(T) bits/dim and the dequantization a constant 8 D_model / D (exactly 8
when nothing is padded). Each level's `log_pz_level<i>` and `logdet_level<i>` (i = 1 the finest)
contribute in the same way, and the levels' contributions add up to their total's.

The paper's finding, to be checked with `decomposition_finding`: for affine Glow trained on CIFAR-10
the volume term favours SVHN (gives it the lower bits/dim); for CV-Glow (translation-only couplings)
log|det| is one constant for every input, and SVHN still gets the higher likelihood, so the volume
term is not the only cause.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from oodbench.errors import OodbenchError
from oodbench.schema import SET_ROLES, SETS, ood_gets_lower_bpd
from oodbench.units import N_BITS, bits_per_dim

PRIOR, VOLUME = "log_pz", "logdet"  # the two totals, as scores.csv names them
CONSTANT, TOTAL = "dequantization", "bpd"  # the table's rows for the constant and for bits/dim itself
LEVEL_TERM = re.compile(r"^(log_pz|logdet)_level(\d+)$")
TABLE_COLUMNS = ("set", "role", "dataset", "split", "term", "n", "mean_bpd", "std_bpd")
CONSTANT_STD_BPD = 1e-6  # a volume term whose std is below this in every set is constant (CV-Glow)
SUM_TOLERANCE_BPD = 1e-4  # float32 scores add up to ~1e-6 bits/dim; a wrong D_model is off by whole bits
NOT_A_FLOW = "decomposition applies to flows (glow, cv-glow)"


def dequantization_bpd(bpd_dims: int, model_dims: int | None = None) -> float:
    """The bits/dim of the -D_model ln 256 term: 8 D_model / D (8 when the model takes the image as is)."""
    model_dims = bpd_dims if model_dims is None else model_dims
    return N_BITS * model_dims / bpd_dims


def flow_terms(columns) -> list[str]:
    """The flow terms among `columns`: log_pz, logdet, then each level's (log_pz_level1, logdet_level1, ...)."""
    levels = sorted((int(m.group(2)), m.group(1) != PRIOR, c) for c in columns if (m := LEVEL_TERM.match(str(c))))
    return [PRIOR, VOLUME, *(c for _, _, c in levels)]


def term_contributions(scores: pd.DataFrame, bpd_dims: int) -> pd.DataFrame:
    """Per image: set, dataset, split, then each flow term's contribution -T / (D ln 2) in bits/dim
    (columns named as the terms) and `bpd`. One-line OodbenchError if the scores have no flow terms."""
    missing = [c for c in ("set", "dataset", "split", TOTAL, PRIOR, VOLUME) if c not in scores.columns]
    if missing:
        raise OodbenchError(f"the scores have no {', '.join(missing)} column(s): {NOT_A_FLOW}")
    if bpd_dims < 1:
        raise OodbenchError(f"bad bpd_dims {bpd_dims}: bits/dim needs D >= 1")
    terms = flow_terms(scores.columns)
    out = scores.loc[:, ["set", "dataset", "split"]].copy()
    for term in terms:
        out[term] = bits_per_dim(scores[term].to_numpy(np.float64), bpd_dims)
    out[TOTAL] = scores[TOTAL].to_numpy(np.float64)
    return out


def decomposition_table(scores: pd.DataFrame, bpd_dims: int, *, model_dims: int | None = None) -> pd.DataFrame:
    """Per set (in_train, in_val if present, in_test, out_test) and term, the contributions to bits/dim:
    columns `TABLE_COLUMNS`, n images, mean and std (ddof=1) in bits/dim. Terms: log_pz, logdet, the
    constant `dequantization` (8 D_model / D, std 0), `bpd` itself (the sum of the three), then each
    level's log_pz_level<i>, logdet_level<i>.

    `model_dims` is C*H*W of the model's input (default `bpd_dims`; 1024 for the padded 28x28 sets).
    Checks, image by image, that log_pz + logdet + dequantization == bpd (to `SUM_TOLERANCE_BPD`);
    otherwise `model_dims` or `bpd_dims` is not the evaluation's, and that is an OodbenchError."""
    parts = term_contributions(scores, bpd_dims)
    constant = dequantization_bpd(bpd_dims, model_dims)
    residual = np.abs(parts[PRIOR] + parts[VOLUME] + constant - parts[TOTAL]).max()
    if not residual <= SUM_TOLERANCE_BPD:  # also catches NaN
        raise OodbenchError(f"log p(z) + log|det| + {constant:.4f} bits/dim of dequantization misses bpd by up to "
                            f"{residual:.3g} bits/dim: pass the evaluation's bpd_dims and the model's input size")
    terms = [PRIOR, VOLUME, CONSTANT, TOTAL, *flow_terms(scores.columns)[2:]]
    rows = []
    for name in (s for s in SETS if (parts["set"] == s).any()):
        subset = parts[parts["set"] == name]
        for term in terms:
            values = np.full(len(subset), constant) if term == CONSTANT else subset[term].to_numpy()
            rows.append({"set": name, "role": SET_ROLES[name], "dataset": subset["dataset"].iloc[0],
                         "split": subset["split"].iloc[0], "term": term, "n": len(values),
                         "mean_bpd": float(values.mean()),
                         "std_bpd": float(values.std(ddof=1)) if len(values) > 1 else math.nan})
    if not rows:
        raise OodbenchError(f"the scores have none of the sets {', '.join(SETS)}")
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def volume_is_constant(table: pd.DataFrame) -> bool:
    """Whether log|det| is the same for every input: its std below `CONSTANT_STD_BPD` in every set of
    two or more images, and its means equal across sets to the same tolerance (CV-Glow)."""
    volume = table[table["term"] == VOLUME]
    spread = volume.loc[volume["n"] > 1, "std_bpd"]
    if spread.empty:
        return False
    return bool((spread < CONSTANT_STD_BPD).all() and (volume["mean_bpd"].max() - volume["mean_bpd"].min()) < CONSTANT_STD_BPD)


def _mean(table: pd.DataFrame, set_name: str, term: str) -> float:
    return float(table.loc[(table["set"] == set_name) & (table["term"] == term), "mean_bpd"].iloc[0])


def decomposition_finding(table: pd.DataFrame) -> dict[str, Any]:
    """What the decomposition of one evaluation says (from `decomposition_table`):
    - `gap_bpd`: {term: mean out_test - mean in_test} in bits/dim (< 0: the term favours the OOD set);
    - `favours_ood`: the flow terms (totals and levels) that give the OOD set the lower bits/dim;
    - `ood_lower_bpd`: the OOD set gets lower bits/dim overall (schema.ood_gets_lower_bpd);
    - `prior_favours_ood`, `volume_favours_ood`: the same for the two totals (False for a constant term);
    - `volume_constant` (and `volume_constant_bpd`, else None): log|det| is one constant for every input;
    - `summary`: one sentence, e.g. "svhn test gets lower bits/dim than cifar10 test (...); the volume
      term favours svhn (...)" for affine Glow, "...; the volume term is the same constant ... for
      every input" for CV-Glow."""
    present = set(table["set"])
    if not {"in_test", "out_test"} <= present:
        raise OodbenchError(f"the decomposition finding needs the in_test and out_test sets; the table has "
                            f"{', '.join(sorted(present)) or 'none'}")
    terms = [t for t in dict.fromkeys(table["term"]) if t != CONSTANT]
    gap = {t: _mean(table, "out_test", t) - _mean(table, "in_test", t) for t in terms}
    favours = [t for t in terms if t != TOTAL and ood_gets_lower_bpd(_mean(table, "in_test", t), _mean(table, "out_test", t))]

    def name(set_name: str) -> str:
        row = table[table["set"] == set_name].iloc[0]
        return f"{row['dataset']} {row['split']}"

    inside, outside = name("in_test"), name("out_test")
    constant = volume_is_constant(table)
    ood_lower = ood_gets_lower_bpd(_mean(table, "in_test", TOTAL), _mean(table, "out_test", TOTAL))
    overall = (f"{outside} gets {'lower' if ood_lower else 'higher'} bits/dim than {inside} "
               f"({_mean(table, 'out_test', TOTAL):.3f} vs {_mean(table, 'in_test', TOTAL):.3f})")
    if constant:
        volume = (f"the volume term is the same constant ({_mean(table, 'in_test', VOLUME):.4f} bits/dim) for every "
                  f"input, so the gap is the prior term's ({gap[PRIOR]:+.3f} bits/dim)")
    else:
        volume = (f"the volume term favours {outside if VOLUME in favours else inside} ({gap[VOLUME]:+.3f} bits/dim), "
                  f"the prior term favours {outside if PRIOR in favours else inside} ({gap[PRIOR]:+.3f} bits/dim)")
    return {
        "in_set": inside, "out_set": outside, "gap_bpd": gap, "favours_ood": favours, "ood_lower_bpd": ood_lower,
        "prior_favours_ood": PRIOR in favours, "volume_favours_ood": VOLUME in favours,
        "volume_constant": constant, "volume_constant_bpd": _mean(table, "in_test", VOLUME) if constant else None,
        "summary": f"{overall}; {volume} (gaps out_test - in_test, < 0 favours {outside}).",
    }

