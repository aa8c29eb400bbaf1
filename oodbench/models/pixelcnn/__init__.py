"""PixelCNN++ (Salimans et al. 2017), the autoregressive model of Nalisnick et al. 2019 (and of
Ren et al. 2019's FashionMNIST -> MNIST results), one job per module: `logistic_mixture` (the
discretized likelihood, pure functions), `layers` (shifted convolutions, concat_elu, gated resnet),
`model` (the network and the `LikelihoodModel`), `config` (its settings)."""

from oodbench.models.pixelcnn.config import PixelCNNConfig
from oodbench.models.pixelcnn.model import PixelCNN

__all__ = ["PixelCNN", "PixelCNNConfig"]
