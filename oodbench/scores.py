"""Per-sample OOD scores as pure functions of per-sample statistics; no model lives here.

Convention, written once: a score is "larger = more OOD" (PAPER.md, "Metrics conventions").
Bits per dimension is computed in `oodbench.units` (re-exported here for the scores that use it).
"""

from __future__ import annotations

import numpy as np
import torch

from oodbench.units import bits_per_dim

__all__ = ["bits_per_dim", "likelihood_score"]


def likelihood_score(bpd):
    """The raw-likelihood OOD score (Nalisnick et al. 2019): the bits/dim itself.

    Lower likelihood = more bits = more OOD, so the score is the BPD unchanged.
    """
    if isinstance(bpd, torch.Tensor):
        return bpd.detach().clone()
    return np.asarray(bpd, dtype=np.float64).copy()
