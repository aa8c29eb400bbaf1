"""Likelihood regret: how much a VAE's ELBO of one image rises when its posterior is refitted to that image.

Xiao, Yan & Amit (NeurIPS 2020, "Likelihood Regret: An Out-of-Distribution Detection Score for
Variational Auto-encoder"): a VAE trained on in-distribution data has an encoder that is near the best
amortised posterior for in-distribution images, so refitting q(z|x) to a single image gains little;
for an OOD image the encoder is a poor fit and refitting gains much. The score is

    regret(x) = max over a per-image refit of ELBO(x) - ELBO(x) under the trained encoder   (nats, >= 0)

with the decoder held fixed. This module owns the refit and two variants of what is refitted:

- `posterior_regret`: each image's posterior mean and log-std (2 x latent_dim numbers) directly; all
  images of a batch at once, since their parameters are disjoint. The fast variant.
- `encoder_regret`: a copy of the encoder's weights, one image at a time; the paper's variant (its
  Algorithm 1, Adam at lr 1e-4). Slow: a full encoder optimisation per image.

Both maximise the single-sample reparameterised ELBO, the objective `VAE` trains on, with the latent
draw eps FIXED per image, so the objective is deterministic and the regret a function of (x, eps).
One consequence to keep in mind: the refit can fit that one draw (a posterior that puts z where that
eps lands well), so `elbo_refit` is a single-draw value and not an estimate of the refitted ELBO's
expectation. `refit` is the generic mechanism, a pure function of an objective and a start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from oodbench.errors import OodbenchError
from oodbench.models.vae.bounds import kl_to_standard_normal
from oodbench.models.vae.model import VAE

Objective = Callable[..., torch.Tensor]


def refit(objective: Objective, start: Sequence[torch.Tensor], *, steps: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise `objective(*params)` (a per-sample tensor [B]) with Adam from `start`; return (before, best).

    before: the objective at `start`; best: per sample, the largest value over the start and the
    iterate after each of the `steps` steps, so best - before >= 0, and it is exactly 0 at a
    stationary start (a zero gradient leaves Adam where it is). The sum of the objective is
    followed: samples whose objectives depend on disjoint parameter entries are optimised exactly
    as they would be one at a time, since Adam's update is elementwise.

    `start` is detached and cloned; gradients are taken with torch.autograd.grad w.r.t. those clones
    only, so no model weight inside `objective` is changed or gets a .grad. Runs under
    torch.enable_grad(), so a caller under no_grad is fine; inference mode cannot be left from here
    and is an error.
    """
    if steps < 0:
        raise OodbenchError(f"refit needs steps >= 0; got {steps}")
    if torch.is_inference_mode_enabled():
        raise OodbenchError("refit needs gradients: call it outside torch.inference_mode() "
                            "(e.g. under torch.inference_mode(False))")
    params = [p.detach().clone().requires_grad_(True) for p in start]
    optimizer = torch.optim.Adam(params, lr=lr, maximize=True)
    with torch.enable_grad():
        value = objective(*params)
        before = best = value.detach()
        for _ in range(steps):
            # The graph of the value just computed gives the next gradient: one forward per step.
            grads = torch.autograd.grad(value.sum(), params)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            optimizer.step()
            value = objective(*params)
            # `>` and not torch.maximum: an iterate whose objective is NaN is skipped, not kept.
            best = torch.where(value.detach() > best, value.detach(), best)
    return before, best


def posterior_elbo(vae: VAE, x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """`VAE._elbo` with q(z|x) = N(mean, exp(log_std)^2) given instead of encoded: log p(x|z) at
    z = mean + exp(log_std) * eps minus the closed-form KL(q || N(0, I)), [B] nats."""
    z = mean + torch.exp(log_std) * eps
    return vae.reconstruction_log_prob(x, z) - kl_to_standard_normal(mean, log_std)


def posterior_regret(vae: VAE, x: torch.Tensor, eps: torch.Tensor, *, steps: int = 20, lr: float = 0.1) -> dict[str, torch.Tensor]:
    """Likelihood regret with each image's posterior parameters refitted: {"regret", "elbo_refit"}, [B] nats.

    What is optimised: for each image, the mean and log-std of its q(z|x) (2 x latent_dim numbers),
    starting from the encoder's output; NOT the encoder's weights. The objective is the single-sample
    ELBO `posterior_elbo` with the fixed draw eps (B, latent_dim), so it is deterministic; the decoder
    is fixed and untouched. regret = best - start (>= 0); elbo_refit = best. Images are independent:
    a batch gives what each image alone gives. The VAE must be in eval mode.
    """
    eps = _checked_eps(vae, x, eps)
    with torch.no_grad():
        mean, log_std = vae.encode(x)
    eps = eps.to(mean.dtype)
    before, best = refit(lambda m, s: posterior_elbo(vae, x, m, s, eps), [mean, log_std], steps=steps, lr=lr)
    return _result(before, best)


def encoder_regret(vae: VAE, x: torch.Tensor, eps: torch.Tensor, *, steps: int = 20, lr: float = 1e-4) -> dict[str, torch.Tensor]:
    """Likelihood regret with the encoder refitted per image (Xiao et al.'s variant): {"regret", "elbo_refit"}.

    What is optimised: for each image separately, a copy of all the encoder's weights, started at the
    trained ones, to maximise that image's ELBO with its fixed draw eps[i] (the objective of
    `posterior_regret`). The VAE itself is not modified (the copy is run with
    torch.func.functional_call). One refit per image: slow, for comparing with `posterior_regret`.
    The VAE must be in eval mode.
    """
    eps = _checked_eps(vae, x, eps)
    encoding = _Encoding(vae)
    names, weights = zip(*(("vae.encoder." + name, weight) for name, weight in vae.encoder.named_parameters()), strict=True)
    eps = eps.to(weights[0].dtype)

    def objective_for(image: torch.Tensor, image_eps: torch.Tensor) -> Objective:
        def objective(*encoder_weights: torch.Tensor) -> torch.Tensor:
            mean, log_std = torch.func.functional_call(encoding, dict(zip(names, encoder_weights, strict=True)), (image,))
            return posterior_elbo(vae, image, mean, log_std, image_eps)
        return objective

    # Batch size 1: the weights are shared by every image they encode, so each image needs its own copy.
    refits = [refit(objective_for(image, image_eps), weights, steps=steps, lr=lr)
              for image, image_eps in zip(x.split(1), eps.split(1), strict=True)]
    before, best = (torch.cat(values) for values in zip(*refits, strict=True))
    return _result(before, best)


class _Encoding(nn.Module):
    """`vae.encode` as a forward, so functional_call can run it with other encoder weights (and the
    input check and pixel scaling stay in `VAE.encode`)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(x)


def _checked_eps(vae: VAE, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    if vae.training:
        # In training mode batch norm would mix the images of a batch and update its running statistics.
        raise OodbenchError("likelihood regret needs the VAE in eval mode; call .eval() first")
    want = (x.shape[0], vae.config.latent_dim)
    if tuple(eps.shape) != want:
        raise OodbenchError(f"eps must be (batch, latent_dim) = {want}; got {tuple(eps.shape)}")
    return eps.to(x.device)


def _result(before: torch.Tensor, best: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"regret": (best - before).float(), "elbo_refit": best.float()}
