"""Statistics of other runs joined onto a run's, for the scores that need more than one model: a
background model's for the likelihood ratio (Ren et al. 2019), an ensemble's members' for the
ensemble likelihood and WAIC (Choi & Jang 2018).

A companion's statistics are of the *same images* (the evaluation scores the companion model on the
run's own sets): rows are joined on (set, dataset, split, index), whichever of those both frames have,
and any image present in one and not the other is an error, never a silent partial join.
Joined columns are prefixed: `background_log_px`, `background_bpd`; `member_log_px_0`, ... (member 0
is the evaluated run itself).
"""

from __future__ import annotations

import pandas as pd

from oodbench.schema import JOIN_KEYS

BACKGROUND = "background_"
MEMBER = "member_log_px_"


def join_statistics(base: pd.DataFrame, other: pd.DataFrame, columns: dict[str, str], *, what: str) -> pd.DataFrame:
    """`base` with `other`'s columns added under new names ({other's column: new name}), row for row.
    Raises ValueError naming `what` if the two frames do not hold exactly the same images."""
    keys = [key for key in JOIN_KEYS if key in base.columns and key in other.columns]
    if "index" not in keys:
        raise ValueError(f"the statistics of {what} have no image index to join on")
    if other.duplicated(keys).any() or base.duplicated(keys).any():
        raise ValueError(f"the statistics of {what} repeat an image ({', '.join(keys)})")
    right = other[keys + list(columns)].rename(columns=columns)
    joined = base.merge(right, on=keys, how="left", indicator=True, validate="one_to_one")
    unmatched = int((joined.pop("_merge") != "both").sum())
    extra = len(other) - (len(base) - unmatched)
    if unmatched or extra:
        raise ValueError(f"the statistics of {what} are not of the same images: {unmatched} of {len(base)} images "
                         f"have no match there and {extra} of theirs none here")
    joined.attrs = dict(base.attrs)
    return joined


def join_background(stats: pd.DataFrame, background: pd.DataFrame) -> pd.DataFrame:
    """A run's statistics with its background model's log p and bits/dim of the same images."""
    return join_statistics(stats, background, {"log_px": BACKGROUND + "log_px", "bpd": BACKGROUND + "bpd"},
                           what="the background model")


def join_members(stats: pd.DataFrame, members: list[pd.DataFrame]) -> pd.DataFrame:
    """A run's statistics with the log p of every ensemble member (the run itself first) of the same images."""
    joined = stats
    for number, member in enumerate(members):
        joined = join_statistics(joined, member, {"log_px": f"{MEMBER}{number}"}, what=f"ensemble member {number}")
    return joined


def member_columns(columns) -> list[str]:
    """The joined members' log p columns, in member order."""
    found = [c for c in columns if str(c).startswith(MEMBER)]
    return sorted(found, key=lambda c: int(c[len(MEMBER):]))
