"""A convolutional VAE with a 256-way categorical decoder, the latent-variable family of Nalisnick
et al. 2019, one job per module: `bounds` (ELBO and importance-weighted bounds, pure functions),
`networks` (the DCGAN-style encoder and decoder), `model` (the `LikelihoodModel`), `config` (its settings)."""

from oodbench.models.vae.config import VAEConfig
from oodbench.models.vae.model import VAE

__all__ = ["VAE", "VAEConfig"]
