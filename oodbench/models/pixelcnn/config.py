"""PixelCNN++'s settings, as one frozen dataclass (Salimans, Karpathy, Chen & Kingma 2017,
"PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture Likelihood and Other
Modifications"; one of the autoregressive models Nalisnick et al. 2019 found rating SVHN above
CIFAR-10, and the model Ren et al. 2019 report for FashionMNIST -> MNIST).

The defaults are a CPU-scale PixelCNN++: nr_resnet=1, 32 filters, 5 mixtures, so that a
Fashion-MNIST model (1x32x32) trains a few epochs of 10k images in minutes on 2 cores.
`PixelCNNConfig.paper()` gives the published size (nr_resnet=5, 160 filters, 10 mixtures).
Nothing here depends on the image size: the network is fully convolutional and any H, W works.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodbench.config import SettingError, at_least, check_fields, one_of

# The mixture's per-channel autoregression (R -> G -> B) is defined for RGB; grayscale has none.
SUPPORTED_CHANNELS = (1, 3)


@dataclass(frozen=True, kw_only=True)
class PixelCNNConfig:
    """Architecture of a PixelCNN++ (three down-sampling and three up-sampling stages, fixed as in the paper).

    in_channels: image channels, 1 (Fashion-MNIST/MNIST) or 3 (CIFAR-10/SVHN).
    nr_resnet: gated resnet blocks per stage (the down pass uses one more in its last two stages).
    nr_filters: channels of the u and ul streams.
    nr_logistic_mix: components of the discretized logistic mixture per pixel.
    dropout: dropout probability inside every gated resnet block (training only).
    weight_norm: reparameterise every convolution as w = g v / ||v|| per output channel (the paper's
        choice, kept for its optimisation behaviour; it costs nothing measurable on CPU). g starts at
        ||v||, so the network at initialisation is the same with or without it.
    """

    in_channels: int = one_of(SUPPORTED_CHANNELS, 3)
    nr_resnet: int = at_least(1, 1)
    nr_filters: int = at_least(1, 32)
    nr_logistic_mix: int = at_least(1, 5)
    dropout: float = at_least(0.0, 0.5)
    weight_norm: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if self.dropout >= 1.0:
            raise SettingError("dropout", self.dropout, "must be in [0, 1)")

    @classmethod
    def paper(cls, **overrides) -> PixelCNNConfig:
        """The published CIFAR-10 size: nr_resnet=5, 160 filters, 10 logistic mixtures, dropout 0.5."""
        return cls(**{"nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "dropout": 0.5, **overrides})

    @property
    def params_per_mixture(self) -> int:
        """Outputs per pixel and component: a logit share, then per channel a mean and a log-scale,
        and for RGB the 3 coefficients of the channel autoregression (10 for RGB, 3 for grayscale)."""
        return 10 if self.in_channels == 3 else 3
