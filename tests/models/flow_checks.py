"""Reusable property checks for flow layers (after normflows' `flow_test`), for any layer with
`forward(x) -> (y, logdet[B])` and `reverse(y) -> (x, logdet[B])`.

- `check_inverts`: reverse(forward(x)) == x and the two log-determinants cancel.
- `check_logdet_matches_jacobian`: the layer's log-determinant equals log|det J| of the brute-force
  Jacobian, one sample at a time (so use tiny shapes and float64).
- `perturb`: move every parameter off its initial value. Glow's zero-initialised convs make every
  coupling an identity at first, and an identity passes both checks above whatever the code does.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb(module: nn.Module, scale: float = 0.2, seed: int = 0) -> nn.Module:
    """Add N(0, scale^2) noise to every parameter (call after actnorm has seen its first batch)."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
        parameter.add_(scale * noise.to(parameter.device))
    return module


def check_inverts(layer: nn.Module, x: torch.Tensor, *, atol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Round trip and cancelling log-determinants; returns (y, logdet) of the forward pass."""
    with torch.no_grad():
        y, logdet = layer(x)
        x_back, logdet_back = layer.reverse(y)
    assert logdet.shape == (x.shape[0],), f"logdet must be per sample [B], got {tuple(logdet.shape)}"
    assert logdet_back.shape == (x.shape[0],)
    assert y.shape[0] == x.shape[0] and y.numel() == x.numel(), "a flow layer keeps the number of dimensions"
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(x_back, x, atol=atol, rtol=0)
    torch.testing.assert_close(logdet + logdet_back, torch.zeros_like(logdet), atol=atol, rtol=0)
    return y, logdet


def brute_force_logdet(function, x_sample: torch.Tensor) -> torch.Tensor:
    """log|det d function(x) / dx| for one sample, from the full Jacobian (D x D)."""
    jacobian = torch.autograd.functional.jacobian(lambda v: function(v).reshape(-1), x_sample)
    sign, logabsdet = torch.linalg.slogdet(jacobian.reshape(x_sample.numel(), x_sample.numel()))
    assert sign != 0, "the Jacobian is singular: the map is not invertible"
    return logabsdet


def check_logdet_matches_jacobian(layer: nn.Module, x: torch.Tensor, *, atol: float = 1e-6) -> None:
    """The layer's log-determinant equals slogdet of its Jacobian, sample by sample."""
    with torch.no_grad():
        _, logdet = layer(x)
    for b in range(x.shape[0]):
        expected = brute_force_logdet(lambda v: layer(v.unsqueeze(0))[0], x[b])
        torch.testing.assert_close(logdet[b], expected, atol=atol, rtol=1e-6)


def check_flow_layer(layer: nn.Module, x: torch.Tensor, *, atol: float = 1e-6) -> None:
    """Both checks; `x` should be float64 and tiny (a few samples of a few dozen dimensions)."""
    check_inverts(layer, x, atol=atol)
    check_logdet_matches_jacobian(layer, x, atol=atol)
