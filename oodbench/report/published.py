"""Published AUROCs to put beside ours (PAPER.md, "Published AUROCs to compare with"; each marked there
"to be checked against the paper"; Xiao et al.'s Fashion-MNIST number is quoted from the issue that asked for
likelihood regret): quoted as given, not re-read from the papers, except where an entry's source says where it was read.

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
    # Bergamin et al. 2022 (fisher_combined) and Dauncey et al. 2024 (layer_gradients), and Kamkari et al. 2024's flow
    # (RQ-NSF) table: not in here. Their tables were not read (the stored copies of the papers searched did not reach
    # them), so no number of theirs is quoted; issue 21's "about 0.87 / 0.96" for Bergamin et al. was dropped as unread.
    # Kamkari et al. 2024, dual threshold on likelihood and LID, for a score-based DIFFUSION model (family "diffusion":
    # no oodbench family, so nothing of ours sits beside it): read from the authors' own code output,
    # layer6ai-labs/dgm_ood_detection notebooks/auc_tables.ipynb @7417870 (printed "Naive likelihood AUC" and
    # "LID-OOD AUC" per in-distribution vs OOD pair; the four pairs quoted before from notebooks/generated_tabulars/
    # all_boosting_diffusion.tex @6f0c217 agree), not from the paper's table. The number is their envelope over every pair of
    # thresholds chosen on the test sets (scores/dual_threshold.py), an upper bound for a fitted rule.
    *(Published("lid_dual_threshold", "diffusion", pair_in, pair_out, dual,
                f"Kamkari et al. 2024, score-based diffusion model (not a flow), authors' code output "
                f"(dgm_ood_detection auc_tables.ipynb), not the paper's table; test-set threshold envelope; "
                f"likelihood alone {naive:.3f}")
      for pair_in, pair_out, naive, dual in (("cifar10", "svhn", 0.064, 0.943), ("svhn", "cifar10", 0.996, 0.996),
                                             ("fashionmnist", "mnist", 0.240, 0.846),
                                             ("mnist", "fashionmnist", 0.996, 0.996), ("celeba", "svhn", 0.087, 0.747))),
)
