"""The result of a row in one plain sentence, for the terminal and `results.md`.

"MNIST test images get lower bits/dim than Fashion-MNIST's own test images (2.38 vs 3.41, AUROC 0.10):
the likelihood would let them through, as Nalisnick et al. (2019) found."
"""

from __future__ import annotations

from typing import Any

from oodbench.data import get_dataset, parse_dataset_ref


def dataset_title(name: str) -> str:
    """"fashionmnist" -> "Fashion-MNIST", "gray:cifar10" -> "grey CIFAR-10"."""
    ref = parse_dataset_ref(name)
    title = get_dataset(ref.base).title
    return f"grey {title}" if ref.gray else title


def finding(row: dict[str, Any]) -> str:
    """One sentence on what the likelihood did with the OOD set of a results row."""
    inside, outside = dataset_title(row["in_dataset"]), dataset_title(row["out_dataset"])
    out_split = "test" if row["out_split"] == "test" else f"{row['out_split']}-split"
    numbers = f"({row['bpd_out_test_mean']:.2f} vs {row['bpd_in_test_mean']:.2f} bits/dim, AUROC {row['auroc']:.2f})"
    if row["ood_lower_bpd"]:
        return (f"{outside} {out_split} images get lower bits/dim than {inside}'s own test images {numbers}: "
                "the likelihood would let them through, as Nalisnick et al. (2019) found.")
    return (f"{outside} {out_split} images get higher bits/dim than {inside}'s test images {numbers}: "
            "here the likelihood flags them.")
