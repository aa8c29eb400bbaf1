"""Per-sample OOD scores as pure functions of per-sample statistics; no model lives here.

Convention, written once: a score is "larger = more OOD" (PAPER.md, "Metrics conventions").
Bits per dimension is computed here and only here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

LN2 = math.log(2.0)


def bits_per_dim(log_px_nats, n_dims: int):
    """BPD(x) = -log p(x) / (D ln 2), for log p(x) in nats on 8-bit images (tensor or array)."""
    return -log_px_nats / (n_dims * LN2)


def likelihood_score(bpd):
    """The raw-likelihood OOD score (Nalisnick et al. 2019): the bits/dim itself.

    Lower likelihood = more bits = more OOD, so the score is the BPD unchanged.
    """
    if isinstance(bpd, torch.Tensor):
        return bpd.detach().clone()
    return np.asarray(bpd, dtype=np.float64).copy()
