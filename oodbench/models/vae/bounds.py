"""Lower bounds on log p(x) for latent-variable models, as pure functions of log-densities.

With z_1..z_k drawn from the encoder q(z|x), the importance weights are
    log w_j = log p(x|z_j) + log p(z_j) - log q(z_j|x),
and (Burda, Grosse & Salakhutdinov 2016)
    ELBO   = E_q[log w]                       <= log p(x)
    IWAE_k = E[log (1/k) sum_j w_j]           <= log p(x),
with ELBO = IWAE_1 <= IWAE_k <= IWAE_{k+1}, and IWAE_k -> log p(x) as k grows. Every function here
works on per-sample tensors in nats and knows nothing of networks.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.square() + LOG_2PI).sum(dim=-1)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_std)^2)), summed over the last dimension."""
    eps = (z - mean) * torch.exp(-log_std)
    return -0.5 * (eps.square() + LOG_2PI).sum(dim=-1) - log_std.sum(dim=-1)


def kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(log_std)^2)) || N(0, I)) in closed form, summed over the last dimension."""
    return 0.5 * (mean.square() + torch.exp(2 * log_std) - 1 - 2 * log_std).sum(dim=-1)


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_j exp(log_weights[..., j]): the k-sample importance-weighted bound (one draw of it)."""
    k = log_weights.shape[-1]
    return torch.logsumexp(log_weights, dim=-1) - math.log(k)


def elbo_estimate(log_weights: torch.Tensor) -> torch.Tensor:
    """(1/k) sum_j log_weights[..., j]: the Monte-Carlo ELBO from the same k samples (<= iwae_bound)."""
    return log_weights.mean(dim=-1)
