"""Local intrinsic dimension (LID) of a normalizing flow at an image, from the Jacobian of its generative map:
the statistic of Kamkari et al.'s dual-threshold OOD test (ICML 2024, "A geometric explanation of the
likelihood OOD detection paradox"; `scores/dual_threshold.py`).

A flow generates y = g(eps), eps ~ N(0, I_D). Linearised at eps0 = g^-1(y0), g sends N(0, I) to
N(y0 + J (eps - eps0), J J^T), J = dg/deps at eps0 (D x D), so near y0 the model puts its mass on the
directions where J stretches: an image on a region the flow squeezes into few directions gets a high
density on little volume, hence little probability mass. With lambda_i the eigenvalues of J^T J (the
squared singular values of J) and a scale delta, the authors' two estimators are:

- `threshold_lid`: the number of singular values above e^delta, #{i : lambda_i > e^(2 delta)}. The ICML
  paper's flow estimator: `JacobianThresholdEstimator` in layer6ai-labs/dgm_geometry
  (lid/flows/jacobian_flow.py @3e4481c), `ThresholdSVDFlowLIDEstimator` in layer6ai-labs/dgm_ood_detection
  (lid/flows/lid_estimators.py @6f0c217), after Horvat & Pfister (NeurIPS 2022).
- `lidl_lid`: LIDL's rate, D + d/d delta of log rho_delta(y0), where rho_delta is the model's density
  convolved with N(0, e^(2 delta) I), taken in the linearisation: rho_delta(y0) = N(y0; y0 - J eps0,
  J J^T + e^(2 delta) I), so with var = e^(2 delta) and zt = Q^T eps0 (Q the eigenvectors of J^T J)
      LID = D + var [-sum_i 1/(lambda_i + var) + sum_i lambda_i zt_i^2 / (lambda_i + var)^2].
  The earlier version's estimator: `FastFlowLIDL` in dgm_geometry (same file; followed here), and
  `SpectralLinearizationFlowLIDEstimator` in dgm_ood_detection (whose `_calc` call passes its arguments
  out of order). A smooth count: without the zt term it is sum_i lambda_i / (lambda_i + var).

The scale. The ICML paper sets delta per model by a binary search that makes the mean LID of 128 training
images equal a model-free estimate (LPCA; dgm_ood_detection ood/intrinsic_dimension/lid_ood.py,
`select_scale_given_from_model_free`); the authors' later guide fixes it (log tau = -3). Here it is a fixed
setting (EvalConfig.lid_delta); no model-free estimator is run.

Cost. Both need the full Jacobian, as the authors' code computes it (torch.func.jacfwd of the decode
map, chunked): D Jacobian-vector products through the inverse flow and one D x D eigendecomposition per
image. The authors have no cheaper flow estimator; they subsample (128 images per set in dgm_geometry's
conf/ood/flow_lid_likelihood.yaml). Here the products are batched `chunk` tangents at a time with
torch.func.vmap(jvp), J is float32 like every score, and J^T J is formed and decomposed in float64 (the
authors use float32, clamp J^T J to +-10^4.5 and floor its eigenvalues at 1e-20; float64 needs neither).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from oodbench.errors import OodbenchError

Generate = Callable[[torch.Tensor], torch.Tensor]  # eps [B, D] -> image [B, ...] (any shape with D values)


def generative_jacobian(generate: Generate, eps: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
    """J = d generate(eps) / d eps at one latent point `eps` [D]: a D_out x D matrix (float of `eps`).

    Column j is the Jacobian-vector product with the basis vector e_j; `chunk` of them run as one
    vmapped batch. Forward mode is not affected by an enclosing no_grad, so this runs inside a predict loop."""
    if eps.dim() != 1:
        raise OodbenchError(f"generative_jacobian takes one latent vector [D]; got shape {tuple(eps.shape)}")

    def column(tangent: torch.Tensor) -> torch.Tensor:
        _, out = torch.func.jvp(lambda e: generate(e.unsqueeze(0)).reshape(-1), (eps,), (tangent,))
        return out

    basis = torch.eye(eps.numel(), dtype=eps.dtype, device=eps.device)
    columns = [torch.func.vmap(column)(block) for block in basis.split(chunk)]
    return torch.cat(columns).T  # rows: outputs, columns: latents


def jtj_spectrum(jacobian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues ascending, eigenvectors as columns) of J^T J in float64; eigenvalues clipped at 0 (the
    matrix is positive semi-definite; rounding can leave -1e-17)."""
    j = jacobian.double()
    values, vectors = torch.linalg.eigh(j.T @ j)
    return values.clamp(min=0.0), vectors


def threshold_lid(eigenvalues: torch.Tensor, delta: float) -> torch.Tensor:
    """#{i : lambda_i > e^(2 delta)}: the singular values of J above e^delta (the ICML paper's estimator).
    `eigenvalues` [..., D] of J^T J; returns [...] (float)."""
    return (eigenvalues > math.exp(2 * delta)).sum(dim=-1).to(eigenvalues.dtype)


def lidl_lid(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, eps: torch.Tensor, delta: float) -> torch.Tensor:
    """D + var [-sum 1/(lambda + var) + sum lambda zt^2 / (lambda + var)^2], var = e^(2 delta), zt = Q^T eps:
    the linearised LIDL rate (dgm_geometry's FastFlowLIDL). `eigenvalues` [D], `eigenvectors` [D, D] of
    J^T J, `eps` [D] the latent point; returns a scalar tensor (float64)."""
    var = math.exp(2 * delta)
    rotated = eigenvectors.T @ eps.double()
    rate = -(1.0 / (eigenvalues + var)).sum() + (eigenvalues * (rotated / (eigenvalues + var)) ** 2).sum()
    return eigenvalues.numel() + var * rate


def flow_lid(generate: Generate, eps: torch.Tensor, delta: float, *, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Per image of a batch: {"lid": threshold_lid, "lid_lidl": lidl_lid} at scale `delta`, from the exact
    Jacobian of `generate` at each row of `eps` [B, D] (the latent points of the images, g^-1(y))."""
    lids, lidls = [], []
    for point in eps:
        values, vectors = jtj_spectrum(generative_jacobian(generate, point, chunk=chunk))
        lids.append(threshold_lid(values, delta))
        lidls.append(lidl_lid(values, vectors, point, delta))
    empty = eps.new_zeros(0, dtype=torch.float64)
    return {"lid": torch.stack(lids) if lids else empty, "lid_lidl": torch.stack(lidls) if lidls else empty}
