"""The VAE's encoder and decoder: DCGAN-style stacks of strided 4x4 convolutions (Radford et al. 2016),
as in Xiao et al. (2020)'s VAE.

For an S x S image (S a power of two, at least 8) with base width w:
    encoder  C -> w (S/2) -> 2w (S/4) -> ... -> w 2^(n-1) at 4x4 -> 4x4 conv -> (mean, log_std) of z
    decoder  z -> 4x4 transposed conv -> w 2^(n-1) at 4x4 -> ... -> w (S/2) -> C * 256 logits at S x S
with n = log2(S) - 2 strided stages; batch norm after every inner convolution, leaky ReLU in the
encoder and ReLU in the decoder (the DCGAN recipe that makes such stacks train at lr 1e-3). The config's
`encoder_activation` and `encoder_input_norm` give instead Xiao et al.'s encoder: ReLU, and batch norm
after the first convolution too.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from oodbench.models.vae.config import VAEConfig, n_stages
from oodbench.units import N_LEVELS  # the categorical decoder's classes per sub-pixel


class Encoder(nn.Module):
    """Scaled images (B, C, S, S; `VAE.encode` scales them to the config's `input_range`) -> (mean, log_std)
    of q(z|x), each (B, latent_dim)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        stages = n_stages(config.image_size)
        width = config.base_channels

        def activation() -> nn.Module:
            return nn.ReLU() if config.encoder_activation == "relu" else nn.LeakyReLU(0.2)

        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, width, 4, 2, 1, bias=False)]
        if config.encoder_input_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(activation())
        for _ in range(stages - 1):
            layers += [nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), activation()]
            width *= 2
        layers.append(nn.Conv2d(width, 2 * config.latent_dim, 4))  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(x).flatten(1).chunk(2, dim=1)
        return mean, log_std


class Decoder(nn.Module):
    """z (N, latent_dim) -> logits (N, S, S, C, 256) of the 256-way categorical p(x|z) per sub-pixel.

    `body` maps z to features (N, w, S/2, S/2); `head`, the last transposed convolution, maps those to
    the C * 256 logits (channel c * 256 + level). The head's output is most of the model's compute and
    memory (786k logits per 3x32x32 image), so it runs channels-last: each sub-pixel's 256 logits are
    then contiguous, the layout the log-softmax over levels reads fastest.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        stages = n_stages(config.image_size)
        self.in_channels = config.in_channels
        width = config.base_channels * 2 ** (stages - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(config.latent_dim, width, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU()]
            width //= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.ConvTranspose2d(width, N_LEVELS * config.in_channels, 4, 2, 1)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z[:, :, None, None])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        out = self.head(features.contiguous(memory_format=torch.channels_last))
        n, _, height, width = out.shape
        return out.permute(0, 2, 3, 1).reshape(n, height, width, self.in_channels, N_LEVELS)

    def phase_logits(self, features: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The head's logits as its four output phases: (a, b, logits (N, S/2, S/2, C, 256)) holding
        `logits(features)[:, a::2, b::2]` for a, b in {0, 1}.

        A stride-2 4x4 transposed convolution (padding 1) gives output pixel (2m + a, 2n + b) from the 2x2
        input pixels (m - 1 + a + t, n - 1 + b + s), t, s in {0, 1}, through kernel taps
        (3 - a - 2t, 3 - b - 2s): four ordinary 2x2 convolutions of the padded input, one per phase, with
        the same arithmetic. A likelihood summed over sub-pixels needs no interleaving, and on a CPU
        oneDNN's backward of the ordinary convolutions is several times faster than the transposed
        convolution's in bf16 (issue 23); each phase's logits are also a quarter as large, so a chunk of
        them stays in cache for the log-softmax that reads them.
        """
        weight, bias = self.head.weight, self.head.bias  # (width, C * 256, 4, 4): in, out, ky, kx
        # taps[i, o, t, a, s, b] = weight[i, o, 3 - 2t - a, 3 - 2s - b]
        taps = weight.unflatten(3, (2, 2)).unflatten(2, (2, 2)).flip(2, 3, 4, 5)
        padded = F.pad(features.contiguous(memory_format=torch.channels_last), (1, 1, 1, 1))
        height, width = features.shape[2:]
        for a in (0, 1):
            for b in (0, 1):
                kernel = taps[:, :, :, a, :, b].transpose(0, 1).contiguous(memory_format=torch.channels_last)
                out = F.conv2d(padded[:, :, a:a + height + 1, b:b + width + 1], kernel, bias)
                yield a, b, out.permute(0, 2, 3, 1).reshape(out.shape[0], height, width, self.in_channels, N_LEVELS)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(z))
