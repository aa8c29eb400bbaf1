"""The per-image gradient statistic: how hard each image pulls on the model's parameters.

For image x, g(x) = d log p(x) / d theta, the gradient of the quantity the model is trained and validated
on (`validation_log_prob`: flows' log p(x) with the image's index-seeded dequantization noise, PixelCNN++'s
exact log p(x), the VAE's single-sample ELBO on its first index-seeded latent draw, i.e. its bound), in
nats, in float32, with the model in eval mode (no dropout, batch norm on its running statistics, actnorm
never re-initialised). Reported per image:

    "grad_sq:<parameter>[<entries>]"   ||g_l(x)||^2 over one parameter tensor l (schema.gradient_column)
    "grad_norm"                        ||g(x)||, the whole gradient's L2 norm

A "layer" is one parameter tensor, as `named_parameters()` lists them, which is how Dauncey et al.'s code
counts layers (SamD770/Generative-Models-Knowledge, anomaly_methods/gradients/L2_norms: one squared norm
`(p.grad ** 2).sum()` per named parameter). The scores built on it are in `scores/gradients.py`.

One backward pass per image, images one at a time: torch.func's vmap(grad) would batch them, but it fails
on PixelCNN++'s and the VAE's channels-last copies and was no faster for Glow on a CPU (measured at the
`quick` sizes), so every family takes this one path. Each image's gradient is its own, whatever batch it
came in.
"""

from __future__ import annotations

import torch
from torch import nn

from oodbench.errors import OodbenchError
from oodbench.schema import gradient_column

GRADIENT_NORM = "grad_norm"


def layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every trainable parameter tensor, in `named_parameters()` order: the layers."""
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]


def per_image_gradients(model, x: torch.Tensor, noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """{"grad_sq:<parameter>[<entries>]": [B], ..., "grad_norm": [B]} for images x (B, C, H, W) and their
    `noise` (the model's `eval_noise`, or None). No parameter's .grad is touched."""
    if model.training:
        # Training mode would drop units (PixelCNN++'s dropout) and mix the batch in batch norm (the VAE).
        raise OodbenchError("per-image gradients need the model in eval mode; call .eval() first")
    if torch.is_inference_mode_enabled():
        raise OodbenchError("per-image gradients need autograd: call them outside torch.inference_mode()")
    named = layers(model)
    parameters = [parameter for _, parameter in named]
    rows = []
    with torch.enable_grad():
        for i in range(x.shape[0]):
            value = model.validation_log_prob(x[i:i + 1], None if noise is None else noise[i:i + 1])
            grads = torch.autograd.grad(value.sum(), parameters, allow_unused=True)
            # A parameter log p(x) does not depend on has no gradient: its norm is 0.
            rows.append(torch.stack([grad.float().pow(2).sum() if grad is not None else value.new_zeros(())
                                     for grad in grads]))
    squared = torch.stack(rows).detach() if rows else x.new_zeros((0, len(named)), dtype=torch.float32)
    columns = {gradient_column(name, parameter.numel()): squared[:, j] for j, (name, parameter) in enumerate(named)}
    return {**columns, GRADIENT_NORM: squared.sum(dim=1).sqrt()}
