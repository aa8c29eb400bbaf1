"""The categorical log-likelihood of the VAE's and the diffusion model's decoders
(`models/categorical.py`) against autograd's log-softmax in float64: values and gradients, float32 out
of bf16 logits, under autocast, the gradient at a near-certain target that a bf16 `1 - p_t` would round
to zero, and strided logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oodbench.models.categorical import categorical_log_prob

F64 = torch.float64


def _case(rows: int = 300, levels: int = 256, dtype: torch.dtype = F64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, levels, generator=g, dtype=F64)).to(dtype)
    targets = torch.randint(0, levels, (rows,), generator=g)
    weights = torch.rand(rows, generator=g, dtype=F64) + 0.5  # an upstream gradient that differs per row
    return logits, targets, weights


def _reference(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor):
    """log softmax(logits)[target] and d(sum weights * it)/d logits, by autograd in float64."""
    wide = logits.detach().double().requires_grad_()
    value = torch.log_softmax(wide, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    (grad,) = torch.autograd.grad(value, wide, weights)
    return value.detach(), grad


def test_values_and_gradients_equal_autograds_log_softmax_in_float64():
    logits, targets, weights = _case()
    want, want_grad = _reference(logits, targets, weights)
    logits.requires_grad_()
    got = categorical_log_prob(logits, targets)
    (got_grad,) = torch.autograd.grad(got, logits, weights)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.detach(), -F.cross_entropy(logits.detach(), targets, reduction="none"), rtol=0, atol=1e-12)


def test_bf16_logits_give_a_float32_likelihood_of_the_same_logits_and_a_bf16_gradient():
    logits, targets, weights = _case(dtype=torch.bfloat16)
    want, want_grad = _reference(logits, targets, weights)  # of the bf16 values, exactly
    logits.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as bf16-mixed training runs it
        got = categorical_log_prob(logits, targets)
    (got_grad,) = torch.autograd.grad(got, logits, weights.float())
    assert got.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)  # float32 rounding only
    # bf16's 8-bit mantissa, relative to the largest entry of each row
    scale = want_grad.abs().amax(dim=1, keepdim=True)
    assert ((got_grad.double() - want_grad).abs() <= 2**-7 * scale).all()


def test_the_gradient_at_a_near_certain_target_keeps_its_small_size():
    # p_t = 1 - 255 e^-12 ~ 1 - 1.6e-3: 1 - p_t in bf16 would read 0 or 2**-8, not 1.6e-3
    logits = torch.zeros(4, 256, dtype=torch.bfloat16)
    targets = torch.tensor([0, 7, 100, 255])
    logits[torch.arange(4), targets] = 12.0
    want, want_grad = _reference(logits, targets, torch.ones(4, dtype=F64))
    logits.requires_grad_()
    (got_grad,) = torch.autograd.grad(categorical_log_prob(logits, targets), logits, torch.ones(4))
    at_target = got_grad[torch.arange(4), targets].double()
    torch.testing.assert_close(at_target, want_grad[torch.arange(4), targets], rtol=2**-7, atol=0)
    assert (at_target > 1e-3).all()


def test_strided_logits_give_the_same_values_and_gradients():
    logits, targets, weights = _case(rows=50, levels=7)
    strided = logits.t().contiguous().t().requires_grad_()  # (M, K) with column-major strides
    want, want_grad = _reference(logits, targets, weights)
    got = categorical_log_prob(strided, targets)
    (got_grad,) = torch.autograd.grad(got, strided, weights)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
