"""The result of a row in one plain sentence, for the terminal and `results.md`.

"MNIST test images get lower bits/dim than Fashion-MNIST's own test images (2.38 vs 3.41 bits/dim, AUROC
0.10, 95% interval 0.09-0.11): the likelihood would let them through, as Nalisnick et al. (2019) found; a
gate accepting 95% of the test images accepts 99% of them."

The verdict rests on the AUROC's interval over the images (`auroc_low`, `auroc_high`; metrics.py), not on
which mean bits/dim is lower: an interval holding 0.5 is chance, whatever the means say, and only an
AUROC well above it makes the likelihood a gate. The last clause is the gate in numbers: the fraction of
the OOD images a threshold accepting 95% of the in-distribution test images lets through (fpr_at_95_tpr).
"""

from __future__ import annotations

import math
from typing import Any

from oodbench.data import get_dataset, parse_dataset_ref

GATE_AUROC = 0.9  # below it, a score that does separate the sets still lets too many OOD images through


def dataset_title(name: str) -> str:
    """"fashionmnist" -> "Fashion-MNIST", "gray:cifar10" -> "grey CIFAR-10"."""
    ref = parse_dataset_ref(name)
    title = get_dataset(ref.base).title
    return f"grey {title}" if ref.gray else title


def _known(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return float(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) else None


def finding(row: dict[str, Any]) -> str:
    """One sentence on what the likelihood did with the OOD set of a results row."""
    inside, outside = dataset_title(row["in_dataset"]), dataset_title(row["out_dataset"])
    images = f"{outside} {'test' if row['out_split'] == 'test' else row['out_split'] + '-split'} images"
    auroc, low, high = row["auroc"], _known(row, "auroc_low"), _known(row, "auroc_high")
    interval = f", 95% interval {low:.2f}-{high:.2f}" if low is not None and high is not None else ""
    numbers = f"({row['bpd_out_test_mean']:.2f} vs {row['bpd_in_test_mean']:.2f} bits/dim, AUROC {auroc:.2f}{interval})"
    accepted = _known(row, "fpr_at_95_tpr")
    gate = (f"; a likelihood gate accepting 95% of {inside}'s test images accepts {accepted:.0%} of them"
            if accepted is not None else "")
    below, above = (high < 0.5, low > 0.5) if low is not None and high is not None else (auroc < 0.5, auroc > 0.5)
    if not below and not above:
        return (f"{images} and {inside}'s test images get the same bits/dim as far as the likelihood can tell "
                f"{numbers}: it ranks them at chance, so it cannot flag them{gate}.")
    if below:
        return (f"{images} get lower bits/dim than {inside}'s own test images {numbers}: the likelihood would let "
                f"them through, as Nalisnick et al. (2019) found{gate}.")
    if auroc < GATE_AUROC:
        return (f"{images} get higher bits/dim than {inside}'s test images {numbers}, but the two overlap: the "
                f"likelihood flags them only in part, too weakly for a gate (AUROC below {GATE_AUROC}){gate}.")
    return f"{images} get higher bits/dim than {inside}'s test images {numbers}: here the likelihood flags them{gate}."
