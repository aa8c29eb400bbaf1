"""Published AUROCs to put beside ours (PAPER.md, "Published AUROCs to compare with"; each marked there
"to be checked against the paper"; Xiao et al.'s Fashion-MNIST number is quoted from the issue that asked for
likelihood regret): quoted as given, not re-read from the papers.

Each is (score, family, in-distribution, OOD, AUROC, source). Ours may differ in model size and
training length; results.md shows both next to each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    score: str
    family: str
    in_dataset: str
    out_dataset: str
    auroc: float
    source: str


PUBLISHED = (
    Published("likelihood", "pixelcnn", "fashionmnist", "mnist", 0.089, "Ren et al. 2019, Table 1 (PixelCNN++)"),
    Published("likelihood_ratio", "pixelcnn", "fashionmnist", "mnist", 0.994, "Ren et al. 2019, Table 1 (PixelCNN++)"),
    Published("input_complexity", "glow", "cifar10", "svhn", 0.950, "Serra et al. 2020, Table 1 (Glow)"),
    Published("likelihood_regret", "vae", "fashionmnist", "mnist", 0.988, "Xiao et al. 2020 (VAE)"),
    Published("likelihood_regret", "vae", "cifar10", "svhn", 0.875, "Xiao et al. 2020 (VAE)"),
)
