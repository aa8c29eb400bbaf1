"""The VAE's settings, as one frozen dataclass.

The architecture is the DCGAN-style VAE with a 256-way categorical decoder of Xiao, Yan & Amit
(NeurIPS 2020, "Likelihood Regret"), the VAE most often reported on CIFAR-10 -> SVHN since: strided
4x4 convolutions down to 4x4, a 4x4 convolution to a latent vector, and the mirror image up. The
defaults (32 base channels, 100 latent dimensions; about 1.15M parameters on 3x32x32) are the
CPU-scale size; `VAEConfig.paper()` gives Xiao et al.'s 64 base channels. Three encoder settings
(`encoder_activation`, `encoder_input_norm`, `input_range`) select between oodbench's DCGAN-discriminator
encoder (the defaults) and the encoder of Xiao et al.'s released code, so that their checkpoints import
exactly (`oodbench/published/vae.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oodbench.config import at_least, check_fields, one_of
from oodbench.errors import OodbenchError

# How many importance samples `log_px` uses by default. Measured on the demo data (a 6-epoch VAE on
# Fashion-MNIST, 100 test / 20 train / 100 MNIST images), mean bits/dim of IWAE-k on the FMNIST test set:
# k=1 2.7312, 4 2.7092, 16 2.6963, 64 2.6888, 256 2.6836, 1024 2.6787 (MNIST: 1.4398 ... 1.3728, 1.3660).
# k=256 is within 0.007 bits/dim of k=1024 on every set; the bound keeps creeping down slowly beyond
# (about 0.005 per 4x k), so the distance to the k -> infinity limit is not known to that precision.
DEFAULT_IW_SAMPLES = 256


def n_stages(image_size: int) -> int:
    """Strided stages from `image_size` down to 4x4; a clear error for sizes the stack cannot take."""
    if image_size < 8 or image_size & (image_size - 1):
        raise OodbenchError(
            f"the VAE needs square images whose side is a power of two, at least 8 (e.g. 32); got side {image_size}"
        )
    return int(math.log2(image_size)) - 2


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Architecture of the VAE and how many importance samples score an image.

    in_channels: image channels (1 or 3; any count works).
    image_size: side of the square images (a power of two, at least 8); set from the data by `train`.
    base_channels: channels after the first strided convolution; doubled at each further one.
    latent_dim: dimensions of the Gaussian latent z (prior N(0, I), diagonal Gaussian posterior).
    iw_samples: k of the importance-weighted bound log_px is scored with (`--iw-samples` overrides it
        at evaluation); 1 scores the single-sample ELBO.
    encoder_activation: the encoder's nonlinearity. "leaky_relu" (slope 0.2, the DCGAN discriminator's of
        Radford et al. 2016) or "relu", as the Encoder of Xiao et al.'s code (XavierXiao/Likelihood-Regret,
        DCGAN_VAE_pixel.py). The decoder always uses ReLU.
    encoder_input_norm: batch norm after the encoder's first convolution too. False is the DCGAN recipe
        (no batch norm on the input layer); Xiao et al.'s code has one (conv, batch norm, ReLU).
    input_range: what the encoder sees of an 8-bit value k: "-1..1" is 2k/255 - 1; "0..1" is k/255,
        torchvision's ToTensor, as in Xiao et al.'s code. Only the encoder's input: the decoder is a
        categorical over the levels 0..255 either way.
    """

    in_channels: int = at_least(1, 3)
    image_size: int = 32
    base_channels: int = at_least(1, 32)
    latent_dim: int = at_least(1, 100)
    iw_samples: int = at_least(1, DEFAULT_IW_SAMPLES)
    encoder_activation: str = one_of(("leaky_relu", "relu"), "leaky_relu")
    encoder_input_norm: bool = False
    input_range: str = one_of(("-1..1", "0..1"), "-1..1")  # strings, not [0, 1]: YAML would read a list

    def __post_init__(self) -> None:
        check_fields(self)
        n_stages(self.image_size)  # a clear error now rather than a shape mismatch later

    @classmethod
    def paper(cls, **overrides) -> VAEConfig:
        """Xiao et al. (2020)'s size: 64 base channels, 100 latent dimensions."""
        return cls(**{"base_channels": 64, "latent_dim": 100, **overrides})
