"""The second-order explanation of Nalisnick et al. (2019), Section 5, as pure functions.

Expand log p around a point x0 (the training mean). For any two sets of images,
    E_q[log p] - E_p*[log p] = g^T (mu_q - mu_p)                                  (first order)
                             + 1/2 Tr{H (Sigma_q - Sigma_p)}                      (the paper's term)
                             + 1/2 [(mu_q - x0)^T H (mu_q - x0) - (mu_p - x0)^T H (mu_p - x0)]
                             + third and higher orders,
with g and H the gradient and Hessian of log p at x0. The paper drops the means (it assumes both sets
share one) and keeps 1/2 Tr{H (Sigma_q - Sigma_p*)}; for CV-Glow with a N(0, sigma^2) prior it writes
    -1/(2 sigma^2) sum_c alpha_c^2 sum_{h,w} (var_q[h,w,c] - var_p*[h,w,c]),  alpha_c = prod_k sum_j u_{k,c,j}.
The expansion is exact (no higher orders) where log p is quadratic: a CV-Glow whose couplings output
zero translation and whose priors are fixed Gaussians is linear, f(y) = A y + b, so
log p(y) = -1/2 (A y + b)^T Sigma_z^{-1} (A y + b) + const and H = -A^T Sigma_z^{-1} A everywhere.

Units. The densities are the flows' continuous log p(y) in nats on y = (x + u)/256 in [0,1)^D (the
-D ln 256 discretization term is a constant: no gradient, no curvature), so variances must be of y:
`pixel_variance_difference(..., scale=N_LEVELS)`. The paper's 12.3 / 6.5 / 14.5 (CIFAR-10 vs SVHN) are
pixel variances in [0,1] (x / 255, `PAPER_SCALE`). Every variance and covariance here is the sample
one with 1/n normalisation, the one for which the expansion above is an identity over the images used.

alpha_c. A step's linear part is actnorm then the 1x1 conv, W (s * x + o) = (W diag(s)) x + W o, so
u_k = W_k diag(s_k) with s_k = exp(log_scale): actnorm scales input channel c before W mixes it, i.e.
it multiplies column c of W_k. u_{k,c,j} = u_k[j, c]: the paper's sum over j runs over the channels j
that input channel c feeds (a column sum); the coupling (translation only, its network's output
dropped) is the identity. The paper's product over k treats the flow as acting per channel, which a
multi-scale Glow does not do: squeeze sends a channel to 4 (one per 2x2 position), a split sends half
the channels to the prior, and each W_k mixes channels. So `cv_glow_alphas` reads alpha_c off the
whole linear part A (all steps, squeezes and splits; offsets dropped: they move means, not curvature):
- "exact": alpha_c^2 = mean over the positions (h, w) of channel c of ||A[:, (c,h,w)]||^2, so that
  -alpha_c^2 / sigma^2 is the mean of H's diagonal over channel c. Then the closed form equals the exact
  1/2 sum_i H_ii dvar_i whenever dvar is the same at every position of a channel (or H's diagonal is),
  for a linear CV-Glow whose every latent has prior variance sigma^2. Otherwise it is an approximation.
- "column-sum": the paper's formula with its column sums tracked through the product of the linear
  maps, sum_r A[r, (c,h,w)] = d(sum of all latents)/dy_{c,h,w}, squared and averaged over positions.
  It equals prod_k sum_j u_{k,c,j} where the 1x1 convs do not mix channels (then it equals "exact"
  too); with mixing it keeps the cross terms the exact sum of squares does not.
A is block-diagonal: every 2^L x 2^L patch of the image (L levels) maps, through 1x1 maps and
squeezes only, to one top-level pixel, so one patch's D_patch x D_patch block, computed by running
the linear part on the identity basis of a patch, is all of A.

Hessian-vector products. A model scores a batch as independent samples, so x0 repeated B times gives
B Hessian-vector products H v_b from one double-backward pass (the batch's Hessian is block-diagonal):
no vmap needed, and it runs any model whose forward autograd can differentiate twice. The diagonal
of H takes D products with unit vectors (D = 3072 for 32x32 RGB: seconds to minutes on a CPU-scale
Glow); Hutchinson's estimator needs one product per probe (`hutchinson_diagonal_trace`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oodbench.errors import OodbenchError
from oodbench.models.glow.squeeze_split import squeeze
from oodbench.units import N_LEVELS, bits_per_dim

# log_prob_fn: y (B, C, H, W) float in [0,1) -> per-sample log p(y) [B] in nats, samples independent.
LogProbFn = Callable[[torch.Tensor], torch.Tensor]

PAPER_SCALE = 255.0  # the paper's variances are of pixels in [0, 1]: x / 255
ALPHA_METHODS = ("exact", "column-sum")


# --- variances ---------------------------------------------------------------------------------------

def _as_float64(images) -> np.ndarray:
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4:
        raise OodbenchError(f"images must be (N, C, H, W); got shape {array.shape}")
    return array.astype(np.float64)


def pixel_variance_difference(p_images, q_images, *, scale: float = N_LEVELS) -> np.ndarray:
    """var_q - var_p per pixel (C, H, W), of images / scale, across images (1/n normalisation).

    uint8 images with scale=N_LEVELS give variances of y = (x + u)/256 (the dequantization noise adds
    the same 1/(12 * 256^2) to both); scale=PAPER_SCALE gives the paper's [0, 1] pixels; float y: scale=1.
    """
    p, q = _as_float64(p_images), _as_float64(q_images)
    if p.shape[1:] != q.shape[1:]:
        raise OodbenchError(f"p and q images differ in shape: {p.shape[1:]} vs {q.shape[1:]}; convert one set first")
    return (q / scale).var(axis=0) - (p / scale).var(axis=0)


def variance_difference(p_images, q_images, *, scale: float = N_LEVELS) -> np.ndarray:
    """sum over (h, w) of var_q[h,w,c] - var_p[h,w,c], per channel (C,): the paper's 12.3, 6.5, 14.5
    (with the sign of p minus q) for CIFAR-10 vs SVHN."""
    return pixel_variance_difference(p_images, q_images, scale=scale).sum(axis=(1, 2))


# --- CV-Glow's alpha_c and the closed form -------------------------------------------------------------

def _linear_latents(glow: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """(B, D) latents of the Glow's linear part: per step u_k = W_k diag(s_k), couplings as identities,
    squeeze and split as the model does them, no offsets."""
    x, latents = y, []
    for level in glow.levels:
        x = squeeze(x)
        for step in level.steps:
            multiplier, _ = step.actnorm.affine()  # actnorm scales input channel c: column c of W
            weight = step.invconv.weight() * multiplier
            x = F.conv2d(x, weight.view(*weight.shape, 1, 1))
        if level.split is not None:
            x, z2 = x.split([level.split.kept, x.shape[1] - level.split.kept], dim=1)
            latents.append(z2.flatten(1))
    latents.append(x.flatten(1))
    return torch.cat(latents, dim=1)


@torch.no_grad()
def patch_jacobian(glow: nn.Module) -> torch.Tensor:
    """A of the Glow's linear part on one 2^L x 2^L patch: (latents, inputs), inputs in (C, P, P) order."""
    side = 2 ** len(glow.levels)
    channels = glow.config.in_channels
    n = channels * side * side
    weight = next(glow.parameters())
    basis = torch.eye(n, dtype=weight.dtype, device=weight.device).view(n, channels, side, side)
    return _linear_latents(glow, basis).T  # row b of the output is A e_b, so transpose


def cv_glow_alphas(glow: nn.Module, *, method: str = "exact") -> np.ndarray:
    """alpha_c per input channel (C,), >= 0, from the learned actnorms and 1x1 convs (see the module
    docstring: "exact" is the root-mean-square column norm of the linear part, "column-sum" the paper's
    column sums tracked through it). Only alpha_c^2 enters the closed form."""
    if method not in ALPHA_METHODS:
        raise OodbenchError(f"unknown alpha method {method!r}; valid: {', '.join(ALPHA_METHODS)}")
    jacobian = patch_jacobian(glow).double()
    columns = jacobian.view(jacobian.shape[0], glow.config.in_channels, -1)  # (latents, C, positions)
    per_position = columns.pow(2).sum(0) if method == "exact" else columns.sum(0).pow(2)
    return per_position.mean(1).sqrt().cpu().numpy()


def closed_form_gap(alphas, var_diff, sigma: float = 1.0) -> float:
    """The paper's CV-Glow prediction of E_q[log p] - E_p*[log p] in nats:
    -1/(2 sigma^2) sum_c alpha_c^2 var_diff_c, var_diff from `variance_difference` in y's units."""
    alphas, var_diff = np.asarray(alphas, dtype=np.float64), np.asarray(var_diff, dtype=np.float64)
    if alphas.shape != var_diff.shape:
        raise OodbenchError(f"one alpha per channel: got {alphas.shape} alphas for {var_diff.shape} variance terms")
    return float(-np.sum(alphas**2 * var_diff) / (2.0 * sigma**2))


# --- Hessian of log p by Hessian-vector products -------------------------------------------------------

def _check_point(x0: torch.Tensor) -> None:
    if x0.dim() != 3:
        raise OodbenchError(f"x0 must be one image (C, H, W); got shape {tuple(x0.shape)}")


def _hvp(log_prob_fn: LogProbFn, x0: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """H v_b for each of `vectors` (B, C, H, W), H the Hessian of log p at x0 (C, H, W)."""
    with torch.enable_grad():
        y = x0.detach().unsqueeze(0).expand_as(vectors).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob_fn(y).sum(), y, create_graph=True)
        if not grad.requires_grad:  # log p is linear in y: no curvature
            return torch.zeros_like(vectors)
        (hv,) = torch.autograd.grad((grad * vectors).sum(), y, allow_unused=True)
    return torch.zeros_like(vectors) if hv is None else hv


def _chunked_hvp(log_prob_fn: LogProbFn, x0: torch.Tensor, vectors: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([_hvp(log_prob_fn, x0, vectors[start:start + chunk]) for start in range(0, len(vectors), chunk)])


def gradient(log_prob_fn: LogProbFn, x0: torch.Tensor) -> torch.Tensor:
    """g = d log p / dy at x0, (C, H, W)."""
    _check_point(x0)
    with torch.enable_grad():
        y = x0.detach().unsqueeze(0).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_prob_fn(y).sum(), y)
    return grad[0]


def hessian_diagonal(log_prob_fn: LogProbFn, x0: torch.Tensor, *, chunk: int = 64) -> torch.Tensor:
    """H_ii at x0, (C, H, W), exactly: D products with unit vectors, `chunk` per pass."""
    _check_point(x0)
    n = x0.numel()
    diagonal = torch.empty(n, dtype=x0.dtype, device=x0.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=x0.device)
        basis = torch.zeros(len(rows), n, dtype=x0.dtype, device=x0.device)
        basis[torch.arange(len(rows)), rows] = 1.0
        hv = _hvp(log_prob_fn, x0, basis.view(len(rows), *x0.shape)).flatten(1)
        diagonal[rows] = hv[torch.arange(len(rows)), rows]
    return diagonal.view(x0.shape)


def hutchinson_diagonal_trace(log_prob_fn: LogProbFn, x0: torch.Tensor, weights: torch.Tensor, *, n_probes: int,
                              seed: int = 0, chunk: int = 64) -> tuple[float, float]:
    """(estimate, standard error) of sum_i H_ii w_i = Tr{diag(w) H} = E_v[(w * v)^T H v] over Rademacher
    probes v (E[v v^T] = I), one Hessian-vector product per probe."""
    _check_point(x0)
    if n_probes < 2:
        raise OodbenchError(f"Hutchinson's estimate needs at least 2 probes (for its standard error); got {n_probes}")
    generator = torch.Generator().manual_seed(seed)
    probes = (torch.randint(0, 2, (n_probes, *x0.shape), generator=generator) * 2 - 1).to(x0)
    hv = _chunked_hvp(log_prob_fn, x0, probes, chunk)
    samples = (weights.to(x0) * probes * hv).flatten(1).sum(1).double()
    return float(samples.mean()), float(samples.std() / math.sqrt(n_probes))


def hessian_trace_term(log_prob_fn: LogProbFn, x0: torch.Tensor, var_diff: torch.Tensor, *,
                       n_probes: int | None = None, seed: int = 0, chunk: int = 64) -> float:
    """1/2 Tr{H (Sigma_q - Sigma_p)} for a diagonal covariance difference, 1/2 sum_i H_ii dvar_i, in nats.

    `var_diff` (C, H, W) in y's units (`pixel_variance_difference`). Exact (D products) when n_probes is
    None, else Hutchinson's unbiased estimate from n_probes products (see `hutchinson_diagonal_trace`).
    """
    var_diff = torch.as_tensor(var_diff).to(x0)
    if var_diff.shape != x0.shape:
        raise OodbenchError(f"var_diff {tuple(var_diff.shape)} must match the image x0 {tuple(x0.shape)}")
    if n_probes is None:
        return 0.5 * float((hessian_diagonal(log_prob_fn, x0, chunk=chunk) * var_diff).double().sum())
    return 0.5 * hutchinson_diagonal_trace(log_prob_fn, x0, var_diff, n_probes=n_probes, seed=seed, chunk=chunk)[0]


def mean_quadratic_form(log_prob_fn: LogProbFn, x0: torch.Tensor, deltas: torch.Tensor, *, chunk: int = 64) -> float:
    """mean_i delta_i^T H delta_i over `deltas` (N, C, H, W), H at x0."""
    _check_point(x0)
    hv = _chunked_hvp(log_prob_fn, x0, deltas.to(x0), chunk)
    return float((deltas.to(x0) * hv).flatten(1).sum(1).double().mean())


def full_covariance_term(log_prob_fn: LogProbFn, x0: torch.Tensor, p_samples: torch.Tensor, q_samples: torch.Tensor,
                         *, chunk: int = 64) -> float:
    """1/2 Tr{H (S_q - S_p)} in nats, S the full sample covariances (1/n) of the images given: exact for
    them, as Tr{H S} = mean_i (x_i - mu)^T H (x_i - mu); one product per image."""
    def trace(samples: torch.Tensor) -> float:
        return mean_quadratic_form(log_prob_fn, x0, samples - samples.mean(0, keepdim=True), chunk=chunk)

    return 0.5 * (trace(q_samples) - trace(p_samples))


def taylor_terms(log_prob_fn: LogProbFn, x0: torch.Tensor, p_samples: torch.Tensor, q_samples: torch.Tensor, *,
                 chunk: int = 64) -> dict[str, float]:
    """The expansion of E_q[log p] - E_p[log p] around x0 to second order, in nats (module docstring):
    `first_order`, `covariance` (the paper's term, full covariances) and `mean_offset`; their sum is
    exact when log p is quadratic."""
    mu_p, mu_q = p_samples.mean(0).to(x0), q_samples.mean(0).to(x0)
    offsets = torch.stack([mu_q - x0, mu_p - x0])
    hv = _hvp(log_prob_fn, x0, offsets)
    quadratic = (offsets * hv).flatten(1).sum(1).double()
    return {
        "first_order": float((gradient(log_prob_fn, x0) * (mu_q - mu_p)).double().sum()),
        "covariance": full_covariance_term(log_prob_fn, x0, p_samples, q_samples, chunk=chunk),
        "mean_offset": 0.5 * float(quadratic[0] - quadratic[1]),
    }


# --- one row per (run, pair) ---------------------------------------------------------------------------

def second_order_row(*, log_prob_fn: LogProbFn, p_y: torch.Tensor, q_y: torch.Tensor, measured_gap_nats: float,
                     alphas=None, sigma: float = 1.0, n_probes: int | None = None, seed: int = 0,
                     chunk: int = 64) -> dict[str, float | int | str]:
    """Every term of the analysis for one model and one (p*, q) pair, from dequantized images y (N, C, H, W).

    Expands around x0 = the mean of p_y (the training mean). Nats are of E_q[log p] - E_p*[log p]
    (> 0: q is rated likelier); each `_bpd` is the same gap as BPD(q) - BPD(p*), over D = C*H*W.
    `diag_term_stderr_nats` is Hutchinson's standard error (0 when the diagonal is exact).
    `alphas` (from `cv_glow_alphas`) adds the closed form; `measured_gap_nats` comes from scoring the sets.
    """
    if p_y.shape[1:] != q_y.shape[1:]:
        raise OodbenchError(f"p and q images differ in shape: {tuple(p_y.shape[1:])} vs {tuple(q_y.shape[1:])}")
    n_dims = math.prod(p_y.shape[1:])
    x0 = p_y.mean(0)
    pixel_diff = pixel_variance_difference(p_y, q_y, scale=1.0)
    var_diff = pixel_diff.sum(axis=(1, 2))
    if n_probes is None:
        diag_term, diag_stderr = hessian_trace_term(log_prob_fn, x0, torch.from_numpy(pixel_diff), chunk=chunk), 0.0
    else:
        twice, twice_stderr = hutchinson_diagonal_trace(log_prob_fn, x0, torch.from_numpy(pixel_diff),
                                                        n_probes=n_probes, seed=seed, chunk=chunk)
        diag_term, diag_stderr = 0.5 * twice, 0.5 * twice_stderr
    nats: dict[str, float] = {
        "diag_term": diag_term,
        **taylor_terms(log_prob_fn, x0, p_y, q_y, chunk=chunk),
        "measured_gap": float(measured_gap_nats),
    }
    nats["taylor"] = nats["first_order"] + nats["covariance"] + nats["mean_offset"]
    row: dict[str, float | int | str] = {"n_p": len(p_y), "n_q": len(q_y), "n_dims": n_dims, "sigma": sigma,
                                         "diag_method": "exact" if n_probes is None else f"hutchinson-{n_probes}",
                                         "diag_term_stderr_nats": diag_stderr}
    row.update({f"var_diff_c{c}": float(v) for c, v in enumerate(var_diff)})
    if alphas is not None:
        row.update({f"alpha_c{c}": float(a) for c, a in enumerate(alphas)})
        nats["closed_form"] = closed_form_gap(alphas, var_diff, sigma)
    for name, value in nats.items():
        row[f"{name}_nats"] = value
        row[f"{name}_bpd"] = float(bits_per_dim(value, n_dims))
    return row
