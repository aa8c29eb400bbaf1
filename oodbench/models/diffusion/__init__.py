"""A diffusion model on 8-bit images scored by its variational bound: a variational diffusion model
(Kingma et al. 2021) in continuous time, or Ho et al. 2020's DDPM in discrete time, with diffusers' U-Net.
One job per module: `config` (its settings), `schedule` (the noise schedules), `networks` (the U-Net
denoiser), `bound` (VDM's bound, pure functions), `ddpm` (the discrete bound), `model` (the
`LikelihoodModel`), `ood_statistics` (DiffPath's and MSMA's statistics)."""

from oodbench.models.diffusion.config import DiffusionConfig
from oodbench.models.diffusion.model import Diffusion

__all__ = ["Diffusion", "DiffusionConfig"]
