"""Released checkpoints of the paper's families, converted into oodbench runs (`oodbench import`).

One module per source, each a `base.Source` registered here by name:
    y0ast-glow             y0ast/Glow-PyTorch's Glow (affine or additive coupling)      -> glow / cv-glow
    pclucas14-pixelcnn     pclucas14/pixel-cnn-pp's PixelCNN++                          -> pixelcnn
    likelihood-regret-vae  XavierXiao/Likelihood-Regret's VAEs (encoder + decoder files) -> vae
    diffusers-ddpm         a diffusers DDPM folder (google/ddpm-cifar10-32)              -> diffusion (discrete time)
`runner/importing.py` turns a `Converted` model into a run folder.
"""

from __future__ import annotations

from oodbench.published import ddpm, glow, pixelcnn, vae
from oodbench.published.base import Converted, ImportRefused, Source, read_state
from oodbench.registry import Registry

SOURCES: Registry[Source] = Registry("checkpoint source")
for _module in (glow, pixelcnn, vae, ddpm):
    SOURCES.add(_module.SOURCE.name, _module.SOURCE)

__all__ = ["SOURCES", "Converted", "ImportRefused", "Source", "read_state"]
