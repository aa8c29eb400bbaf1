"""PixelCNN++ (Salimans et al. 2017): an autoregressive model of 8-bit images whose exact
log-likelihood Nalisnick et al. (2019) found higher on SVHN than on the CIFAR-10 it was trained on.

    log p(x) = sum over pixels i (raster order) of log p(x_i | x_<i),

each factor a discretized mixture of logistics over the pixel's channels (`logistic_mixture`). The
network (Figure 2 of the paper) runs two streams: u, which sees the rows above (down-shifted
convolutions), and ul, which sees the rows above and the pixels to the left (down-right-shifted).
    1. input: the image scaled to [-1, 1] plus a channel of ones (so the zero padding is visible),
       u = down-shifted conv, ul = down-shifted (1x3) + right-shifted (2x1) convs, each shifted once
       more so that no stream sees the pixel it predicts;
    2. up pass: 3 stages of nr_resnet gated resnet blocks per stream, with a strided shifted conv
       between stages (32 -> 16 -> 8 for 32x32 inputs); every block's output is kept;
    3. down pass: 3 stages (nr_resnet, then nr_resnet + 1, nr_resnet + 1 blocks), each block also
       reading the matching up-pass output (the U-Net-like skips), with transposed shifted convs
       between stages;
    4. output: a 1x1 conv of elu(ul) to the mixture's parameters at every pixel.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from oodbench.errors import OodbenchError
from oodbench.models.base import LikelihoodModel
from oodbench.models.pixelcnn import logistic_mixture
from oodbench.models.pixelcnn.config import PixelCNNConfig
from oodbench.models.pixelcnn.layers import GatedResnet, NetworkInNetwork, ShiftedConv2d, ShiftedConvTranspose2d

N_STAGES = 3  # the paper's resolutions: full, half, quarter


def _down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down, zeros on top: row i now holds what row i - 1 saw."""
    return F.pad(x[:, :, :-1], (0, 0, 1, 0))


def _right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right, zeros on the left."""
    return F.pad(x[:, :, :, :-1], (1, 0, 0, 0))


class PixelCNN(LikelihoodModel):
    """PixelCNN++ on uint8 images (B, C, H, W), C = 1 or 3, any H and W; see `PixelCNNConfig`."""

    part_names = ()
    discretization = "exact: discretized mixture of logistics over 256 levels"

    def __init__(self, config: PixelCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or PixelCNNConfig()
        filters, wn = config.nr_filters, config.weight_norm

        def block(shift: str, skip_channels: int) -> GatedResnet:
            return GatedResnet(filters, shift=shift, skip_channels=skip_channels, dropout=config.dropout,
                               weight_norm=wn)

        def stage(n_blocks: int, shift: str, skip_channels: int) -> nn.ModuleList:
            return nn.ModuleList(block(shift, skip_channels) for _ in range(n_blocks))

        in_channels = config.in_channels + 1  # the image and a channel of ones
        self.u_init = ShiftedConv2d(in_channels, filters, (2, 3), shift="down", weight_norm=wn)
        self.ul_init_down = ShiftedConv2d(in_channels, filters, (1, 3), shift="down", weight_norm=wn)
        self.ul_init_right = ShiftedConv2d(in_channels, filters, (2, 1), shift="down_right", weight_norm=wn)
        # Up pass: u blocks read only u; ul blocks also read the u just computed.
        self.up_u = nn.ModuleList(stage(config.nr_resnet, "down", 0) for _ in range(N_STAGES))
        self.up_ul = nn.ModuleList(stage(config.nr_resnet, "down_right", filters) for _ in range(N_STAGES))
        self.downsize_u = nn.ModuleList(
            ShiftedConv2d(filters, filters, (2, 3), shift="down", stride=2, weight_norm=wn) for _ in range(N_STAGES - 1)
        )
        self.downsize_ul = nn.ModuleList(
            ShiftedConv2d(filters, filters, (2, 2), shift="down_right", stride=2, weight_norm=wn)
            for _ in range(N_STAGES - 1)
        )
        # Down pass: u blocks read the matching up-pass u; ul blocks read (u, the matching up-pass ul).
        down_blocks = [config.nr_resnet] + [config.nr_resnet + 1] * (N_STAGES - 1)
        self.down_u = nn.ModuleList(stage(n, "down", filters) for n in down_blocks)
        self.down_ul = nn.ModuleList(stage(n, "down_right", 2 * filters) for n in down_blocks)
        self.upsize_u = nn.ModuleList(
            ShiftedConvTranspose2d(filters, filters, (2, 3), shift="down", weight_norm=wn) for _ in range(N_STAGES - 1)
        )
        self.upsize_ul = nn.ModuleList(
            ShiftedConvTranspose2d(filters, filters, (2, 2), shift="down_right", weight_norm=wn)
            for _ in range(N_STAGES - 1)
        )
        n_params = config.nr_logistic_mix * logistic_mixture.params_per_mixture(config.in_channels)
        self.nin_out = NetworkInNetwork(filters, n_params, weight_norm=wn)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.dtype != torch.uint8:
            raise OodbenchError(
                f"PixelCNN with in_channels={self.config.in_channels} needs uint8 images "
                f"(B, {self.config.in_channels}, H, W); got {x.dtype} {tuple(x.shape)}"
            )

    def mixture_params(self, x: torch.Tensor) -> torch.Tensor:
        """The network: uint8 images (B, C, H, W) -> mixture parameters (B, P, H, W), where the
        parameters at pixel i depend only on the pixels before i in raster order."""
        self._check_input(x)
        # 1. input: [-1, 1] plus a channel of ones; channels-last from here on
        scaled = logistic_mixture.bin_centres(x, self.nin_out.bias.dtype)
        h = torch.cat((scaled, torch.ones_like(scaled[:, :1])), dim=1).contiguous(memory_format=torch.channels_last)
        u = _down_shift(self.u_init(h))
        ul = _down_shift(self.ul_init_down(h)) + _right_shift(self.ul_init_right(h))

        # 2. up pass, keeping every output for the down pass
        u_skips, ul_skips = [u], [ul]
        for stage in range(N_STAGES):
            for u_block, ul_block in zip(self.up_u[stage], self.up_ul[stage], strict=True):
                u = u_block(u)
                ul = ul_block(ul, u)
                u_skips.append(u)
                ul_skips.append(ul)
            if stage < N_STAGES - 1:
                u = self.downsize_u[stage](u)
                ul = self.downsize_ul[stage](ul)
                u_skips.append(u)
                ul_skips.append(ul)

        # 3. down pass, consuming the skips in reverse
        u, ul = u_skips.pop(), ul_skips.pop()
        for stage in range(N_STAGES):
            for u_block, ul_block in zip(self.down_u[stage], self.down_ul[stage], strict=True):
                u = u_block(u, u_skips.pop())
                ul = ul_block(ul, torch.cat((u, ul_skips.pop()), dim=1))
            if stage < N_STAGES - 1:
                size = (u_skips[-1].shape[2], u_skips[-1].shape[3])
                u = self.upsize_u[stage](u, size)
                ul = self.upsize_ul[stage](ul, size)

        # 4. output, in float32 at least (autocast off), whatever precision the layers before ran in: bf16
        # would round a mixture mean near 1 to 2^-8, half a bin (2/255). Under bf16-mixed training a quick
        # CIFAR-10 model reached 6.27 bits/dim after 72 steps with a bf16 output layer and mixture, 6.01
        # with the mixture alone in float32, 5.93 with this layer too (float32 throughout: 5.94).
        features = F.elu(ul)
        with torch.autocast(features.device.type, enabled=False):
            return self.nin_out(features.to(torch.promote_types(features.dtype, self.nin_out.bias.dtype)))

    def _mixture(self, log_probs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """`log_probs(x, params)` of the mixture at the network's parameters, in float32 with autocast off
        (see mixture_params)."""
        params = self.mixture_params(x)
        with torch.autocast(params.device.type, enabled=False):
            return log_probs(x, params)

    def subpixel_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_c at pixel i | earlier pixels, earlier channels of pixel i) in nats: (B, C, H, W)."""
        return self._mixture(logistic_mixture.subpixel_log_probs, x)

    def log_prob_parts(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"log_px": exact log P(x) in nats, [B]}; `noise` is ignored (the likelihood is discrete)."""
        return {"log_px": self._mixture(logistic_mixture.pixel_log_probs, x).sum(dim=(1, 2))}

    @torch.no_grad()
    def sample(self, n: int, *, image_size: tuple[int, int], device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n uint8 images (n, C, H, W), pixel by pixel in raster order (H * W network passes)."""
        device = device if device is not None else next(self.parameters()).device
        height, width = image_size
        x = torch.zeros((n, self.config.in_channels, height, width), dtype=torch.uint8, device=device)
        for i in range(height):
            for j in range(width):
                params = self.mixture_params(x)[:, :, i:i + 1, j:j + 1]
                x[:, :, i:i + 1, j:j + 1] = logistic_mixture.sample(params, self.config.in_channels, generator)
        return x
