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
    # Bergamin et al.'s score test + typicality test by Fisher's method: "about" these, as issue 21 quotes them;
    # their table (which model) not re-read. Their public code's PixelCNN++ script scores these pairs.
    Published("fisher_combined", "pixelcnn", "cifar10", "svhn", 0.87, "Bergamin et al. 2022 (Fisher's method; ~, from issue 21)"),
    Published("fisher_combined", "pixelcnn", "fashionmnist", "mnist", 0.96, "Bergamin et al. 2022 (Fisher's method; ~, from issue 21)"),
    # Kamkari et al. 2024, dual threshold on likelihood and LID: from the authors' own generated table,
    # layer6ai-labs/dgm_ood_detection notebooks/generated_tabulars/all_boosting_diffusion.tex @6f0c217 ("A (vs) B"
    # columns). They are a score-based DIFFUSION model's: their flow (RQ-NSF) table is not in their code and was not
    # re-read from the paper, so flow numbers are still to be added. The number is their envelope over every pair of
    # thresholds chosen on the test sets (scores/dual_threshold.py), an upper bound for a fitted rule; their raw
    # likelihood's AUROC is in the source text (not an entry: the remedies table would show it as a Glow's).
    *(Published("lid_dual_threshold", "glow", pair_in, pair_out, dual,
                f"Kamkari et al. 2024, envelope of test-set thresholds; likelihood alone {naive:.3f} (diffusion model, not a flow)")
      for pair_in, pair_out, naive, dual in (("cifar10", "svhn", 0.064, 0.943), ("svhn", "cifar10", 0.996, 0.996),
                                             ("fashionmnist", "mnist", 0.240, 0.846), ("celeba", "svhn", 0.087, 0.747))),
)
