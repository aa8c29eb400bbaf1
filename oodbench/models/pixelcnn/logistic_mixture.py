"""The discretized mixture of logistics, PixelCNN++'s likelihood (Salimans et al. 2017, Section 2.1),
as pure functions of the network's output and the 8-bit image.

Pixels k = 0..255 are bin centres x = k / 127.5 - 1 on [-1, 1], each bin 2/255 wide. For one
component with mean m and scale s, P(x) = sigmoid((x + 1/255 - m)/s) - sigmoid((x - 1/255 - m)/s),
except at the edges, where the bins take the tails: P(0) = sigmoid((-1 + 1/255 - m)/s) and
P(255) = 1 - sigmoid((1 - 1/255 - m)/s). So the 256 probabilities sum to one exactly and log p(x) is
the exact discrete likelihood (PAPER.md, "Units": no dequantization, no bound).

For RGB, channel c of a pixel conditions on the channels before it through the component's means,
m_G = mu_G + a * x_R and m_B = mu_B + b * x_R + c * x_G, and the component is shared by the three
channels, so p(pixel) = sum_k pi_k prod_c P_k(x_c | x_<c).

The network output (B, P, H, W) is laid out as the reference code (openai/pixel-cnn) lays it out:
K mixture logits, then per channel [K means, K log-scales, K coefficients] (no coefficients for
grayscale), so P = 10 K for RGB and 3 K for grayscale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from oodbench.errors import OodbenchError
from oodbench.units import N_LEVELS  # the 8-bit levels the mixture is discretized to

HALF_BIN = 1.0 / (N_LEVELS - 1)  # half the width of one bin when 256 levels span [-1, 1]
# Below this the difference of two sigmoids has lost its precision in float32; the reference code then
# approximates the bin's mass by the density at its centre times the bin width 1/127.5.
MIN_BIN_MASS = 1e-5
LOG_BIN_WIDTH_INV = math.log((N_LEVELS - 1) / 2)
LOG_SCALE_MIN = -7.0  # the reference code's floor on log-scales: keeps 1/s finite
EDGE = 0.999  # |x| above this is the first or last bin (bin centres are 1/127.5 apart)


def bin_centres(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (any shape) -> their bin centres k / 127.5 - 1 in [-1, 1]."""
    return x.to(dtype) * (2.0 / (N_LEVELS - 1)) - 1.0


def params_per_mixture(channels: int) -> int:
    """Network outputs per component: a logit, per channel a mean and a log-scale, and for RGB the
    three coefficients of the R -> G -> B autoregression."""
    if channels == 3:
        return 10
    if channels == 1:
        return 3
    raise OodbenchError(f"the discretized logistic mixture is defined for 1 or 3 channels, got {channels}")


@dataclass(frozen=True)
class MixtureParams:
    """The mixture at every pixel, channels-last: logits (B, H, W, K); means, log_scales (B, H, W, C, K);
    coeffs (B, H, W, 3, K) for RGB (G on R, B on R, B on G), None for grayscale. Means are the
    unconditioned mu; `conditional_means` adds the autoregression on the image."""

    logits: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor
    coeffs: torch.Tensor | None


def split_params(params: torch.Tensor, channels: int) -> MixtureParams:
    """The network's output (B, P, H, W) -> `MixtureParams` (views, no copies where the layout allows)."""
    per_mixture = params_per_mixture(channels)
    if params.dim() != 4 or params.shape[1] % per_mixture:
        raise OodbenchError(
            f"mixture parameters must be (B, K*{per_mixture}, H, W) for {channels} channel(s), got {tuple(params.shape)}"
        )
    n_mix = params.shape[1] // per_mixture
    # channels-last: every per-pixel quantity is then contiguous in its last dimension. split and unbind,
    # not slicing: a slice's gradient is a zeroed tensor of the whole output with the slice copied in,
    # once per slice (a sixth of a PixelCNN++ training step at batch 64); theirs is one concatenation.
    logits, rest = params.permute(0, 2, 3, 1).split([n_mix, params.shape[1] - n_mix], dim=-1)
    per_channel = rest.unflatten(-1, (channels, (per_mixture - 1) // channels, n_mix)).unbind(-2)
    means = per_channel[0]
    log_scales = per_channel[1].clamp(min=LOG_SCALE_MIN)
    coeffs = torch.tanh(per_channel[2]) if channels == 3 else None
    return MixtureParams(logits, means, log_scales, coeffs)


def conditional_means(mix: MixtureParams, x: torch.Tensor) -> torch.Tensor:
    """Each component's mean of channel c given the channels before it of the same pixel.

    x: bin centres, channels-last (B, H, W, C). Returns (B, H, W, C, K).
    """
    if mix.coeffs is None:
        return mix.means
    x_r, x_g = x[..., 0:1], x[..., 1:2]  # broadcast over the K components
    mu_r, mu_g, mu_b = mix.means.unbind(-2)  # unbind: see split_params
    a_gr, a_br, a_bg = mix.coeffs.unbind(-2)
    return torch.stack((mu_r, mu_g + a_gr * x_r, mu_b + a_br * x_r + a_bg * x_g), dim=-2)


def discretized_logistic_log_prob(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) under logistic(means, exp(log_scales)), per component: x (..., 1) or
    broadcastable bin centres, means and log_scales (..., K). The reference code's formula, branch
    for branch (openai/pixel-cnn, `discretization_mix_logistic_loss`), in log-sigmoid form."""
    centred = x - means
    inv_scale = torch.exp(-log_scales)
    plus_in = inv_scale * (centred + HALF_BIN)
    min_in = inv_scale * (centred - HALF_BIN)
    # x = 0: the bin takes the whole left tail, log sigmoid(plus_in)
    log_cdf_plus = F.logsigmoid(plus_in)
    # x = 255: the whole right tail, log(1 - sigmoid(min_in)) = log sigmoid(-min_in)
    log_one_minus_cdf_min = F.logsigmoid(-min_in)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    # Far from the mean the difference underflows: use the density at the centre times the width.
    mid_in = inv_scale * centred
    log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
    log_mid = torch.where(
        cdf_delta > MIN_BIN_MASS, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - LOG_BIN_WIDTH_INV
    )
    return torch.where(x < -EDGE, log_cdf_plus, torch.where(x > EDGE, log_one_minus_cdf_min, log_mid))


def component_log_probs(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log mixture weights (B, H, W, K), log P_k(x_c | x_<c) (B, H, W, C, K)) for uint8 images
    x (B, C, H, W) and the network's output params (B, P, H, W)."""
    channels = x.shape[1]
    mix = split_params(params, channels)
    if mix.means.shape[:3] != (x.shape[0], x.shape[2], x.shape[3]):
        raise OodbenchError(f"mixture parameters {tuple(params.shape)} do not match images {tuple(x.shape)}")
    centres = bin_centres(x, params.dtype).permute(0, 2, 3, 1)  # (B, H, W, C)
    means = conditional_means(mix, centres)
    log_probs = discretized_logistic_log_prob(centres.unsqueeze(-1), means, mix.log_scales)
    return F.log_softmax(mix.logits, dim=-1), log_probs


def pixel_log_probs(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(pixel | earlier pixels), all channels jointly, in nats: (B, H, W)."""
    log_weights, log_probs = component_log_probs(x, params)
    return torch.logsumexp(log_weights + log_probs.sum(dim=-2), dim=-1)


def subpixel_log_probs(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(x_c | x_<c of the same pixel, earlier pixels) per sub-pixel, in nats: (B, C, H, W).

    The component is shared by the channels, so the chain rule reads
    log p(x_c | x_<c) = log sum_k pi_k prod_{c'<=c} P_k - log sum_k pi_k prod_{c'<c} P_k,
    and the sum over c telescopes to `pixel_log_probs`.
    """
    log_weights, log_probs = component_log_probs(x, params)
    # log p(x_0..x_c) for every prefix; the empty prefix has probability 1
    prefix = torch.logsumexp(log_weights.unsqueeze(-2) + log_probs.cumsum(dim=-2), dim=-1)
    conditionals = prefix - F.pad(prefix[..., :-1], (1, 0))
    return conditionals.permute(0, 3, 1, 2)


def sample(params: torch.Tensor, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw uint8 pixels (B, C, H, W) from the mixture at every position of params (B, P, H, W).

    Ancestral and exact for the discretized mixture: pick a component, draw a logistic, clamp it to
    [-1, 1] and round it to its bin (the edge bins thereby collect the tails); a later channel
    conditions on the earlier channels' bin centres, as the likelihood does.
    """
    mix = split_params(params, channels)
    gumbel = -torch.log(-torch.log(_uniform(mix.logits, generator)))
    component = (mix.logits + gumbel).argmax(dim=-1, keepdim=True)  # (B, H, W, 1)

    def pick(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, C', K) -> (B, H, W, C') at the chosen component
        return t.gather(-1, component.unsqueeze(-2).expand(*t.shape[:-1], 1)).squeeze(-1)

    means, log_scales = pick(mix.means), pick(mix.log_scales)
    coeffs = pick(mix.coeffs) if mix.coeffs is not None else None
    u = _uniform(means, generator)
    noise = torch.exp(log_scales) * (torch.log(u) - torch.log1p(-u))  # a logistic draw around 0
    levels, centres = [], []
    for c in range(channels):  # R, then G given R, then B given R and G
        mean = means[..., c]
        if c == 1:
            mean = mean + coeffs[..., 0] * centres[0]
        elif c == 2:
            mean = mean + coeffs[..., 1] * centres[0] + coeffs[..., 2] * centres[1]
        level = torch.round(((mean + noise[..., c]).clamp(-1.0, 1.0) + 1.0) * ((N_LEVELS - 1) / 2)).to(torch.uint8)
        levels.append(level)
        centres.append(bin_centres(level, params.dtype))
    return torch.stack(levels, dim=1)


def _uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Away from 0 and 1 so that the logs above stay finite (the reference code uses the same margin).
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return u * (1.0 - 2e-5) + 1e-5
