"""A K-way categorical log-likelihood, log softmax(logits)[target], in float32 whatever the logits'
dtype, with a backward that needs no float32 copy of the logits (issue 23). The VAE's 256-way decoder
and the diffusion model's discrete decoder (when its window spans every level) score sub-pixels with it.

autograd's own path, `cross_entropy(logits.float(), target)`, keeps a float32 log-softmax of every
logit for its backward, zero-fills a float32 gradient for the picked entries, runs the log-softmax
backward over it and casts the result back to the logits' dtype: in bf16-mixed training, four full
passes over float32 copies per chunk of logits. Here the forward keeps only the logits (in their own
dtype) and the picked log-probabilities, and the backward is the textbook gradient

    d log p_t / d logits = onehot(t) - softmax(logits)

as one softmax in the logits' dtype (CPU and CUDA kernels accumulate in float32 for bf16), one scaling
and one write at the targets. The entry at the target, g * (1 - p_t), comes from the float32 log p_t by
expm1, so it does not cancel when p_t is near 1. Differentiable once (no Hessians through it).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _CategoricalLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            # float32 (float64 for float64 logits): the likelihood reported and compared (brief, PAPER.md)
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
            picked = torch.log_softmax(wide, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets, picked)
        return picked

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, targets, picked = ctx.saved_tensors
        with torch.autocast(logits.device.type, enabled=False):
            grad_logits = torch.softmax(logits, dim=-1)
            grad_logits.mul_((-grad).to(logits.dtype)[:, None])
            at_target = grad * -torch.expm1(picked)  # g * (1 - p_t), in float32
            # put_ at flat indices: scatter_ copies the whole bf16 tensor on a CPU (1 ms a chunk, issue 23)
            flat = torch.arange(0, logits.numel(), logits.shape[-1], device=logits.device) + targets
            grad_logits.view(-1).put_(flat, at_target.to(logits.dtype))
        return grad_logits, None


def categorical_log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under softmax(logits), [M] in float32 (float64 for float64 logits), for logits
    (M, K) and integer targets [M] in 0..K-1. Equal to `-cross_entropy(logits.float(), targets,
    reduction="none")`, gradient included."""
    return _CategoricalLogProb.apply(logits, targets)
