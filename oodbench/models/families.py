"""The model families by name: what `--model glow` means.

Each family is a config dataclass, a builder, and the settings the family fixes (CV-Glow is Glow
with translation-only coupling, so it is the same model with one setting pinned). Architectures know
nothing of data or training; `module.LikelihoodModule` wraps any of them.

Other installed packages add families through the entry point group `oodbench.families` (`plugins.py`):
each gives a `ModelFamily` whose config has an `in_channels` field (and `image_size` where the network
needs the side), set from the data by `model_config`, and whose `build` returns a `LikelihoodModel`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from oodbench.config import from_mapping
from oodbench.errors import OodbenchError
from oodbench.models.base import LikelihoodModel
from oodbench.models.diffusion import Diffusion, DiffusionConfig
from oodbench.models.glow import Glow, GlowConfig
from oodbench.models.pixelcnn import PixelCNN, PixelCNNConfig
from oodbench.models.vae import VAE, VAEConfig
from oodbench.plugins import FAMILIES_GROUP
from oodbench.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    config_cls: type
    build: Callable[[Any], LikelihoodModel]
    fixed: dict[str, Any] = field(default_factory=dict)  # settings a user cannot override
    fixed_hint: str = ""  # where to go instead, e.g. the family that has the other value


# Each name is in names.MODELS too: the CLI checks --model there before importing torch, and lists it in
# its help (tests/test_names.py checks the two are equal). Plugin families join after these (plugins.py).
FAMILIES: Registry[ModelFamily] = Registry("model", plugins=FAMILIES_GROUP)
FAMILIES.add("glow", ModelFamily(
    "glow", "Glow (Kingma & Dhariwal 2018): affine coupling, non-volume-preserving",
    GlowConfig, Glow, fixed={"coupling": "affine"}, fixed_hint="--model cv-glow is Glow with additive coupling",
))
FAMILIES.add("cv-glow", ModelFamily(
    "cv-glow", "Constant-volume Glow: translation-only coupling, log-det independent of x",
    GlowConfig, Glow, fixed={"coupling": "additive"}, fixed_hint="--model glow is Glow with affine coupling",
))
FAMILIES.add("pixelcnn", ModelFamily(
    "pixelcnn", "PixelCNN++ (Salimans et al. 2017): autoregressive, discretized logistic mixture, exact likelihood",
    PixelCNNConfig, PixelCNN,
))
FAMILIES.add("vae", ModelFamily(
    "vae", "Convolutional VAE with a 256-way categorical decoder, scored by the importance-weighted bound",
    VAEConfig, VAE,
))
FAMILIES.add("diffusion", ModelFamily(
    "diffusion", "Variational diffusion model (Kingma et al. 2021) with diffusers' U-Net, scored by its bound "
    "(Monte Carlo over time); discrete-time DDPM (Ho et al. 2020) for released checkpoints",
    DiffusionConfig, Diffusion,
))


def model_config(family: str, settings: dict[str, Any] | None = None, *,
                 image_shape: tuple[int, ...] | None = None, where: str = "model settings") -> Any:
    """The family's typed config from user settings; the family's fixed settings win. `image_shape`
    (C, H, W), when given, sets `in_channels`, and `image_size` for families whose network is not
    fully convolutional (the VAE's fixed-size latent, the diffusion U-Net's sides)."""
    spec = FAMILIES.get(family)
    values = dict(settings or {})
    for key, value in spec.fixed.items():
        if key in values and values[key] != value:
            choices = {f.name: f.metadata for f in dataclasses.fields(spec.config_cls)}[key].get("choices", ())
            invalid = f"bad value {values[key]!r} for {key!r} (expected one of {', '.join(map(str, choices))}); " \
                if choices and values[key] not in choices else ""
            hint = f" ({spec.fixed_hint})" if spec.fixed_hint else ""
            raise OodbenchError(f"{invalid}{family} always uses {key}={value!r}{hint}; drop {key!r} from {where}")
        values[key] = value
    if image_shape is not None:
        channels, height, width = image_shape
        values["in_channels"] = channels
        if "image_size" in {f.name for f in dataclasses.fields(spec.config_cls)}:
            if height != width:
                raise OodbenchError(f"{family} needs square images; the data is {height}x{width}")
            values["image_size"] = height
    return from_mapping(spec.config_cls, values, where=f"{where} for {family}")


def build_model(family: str, config: Any) -> LikelihoodModel:
    model = FAMILIES.get(family).build(config)
    if not isinstance(model, LikelihoodModel):  # a plugin's builder (plugins.py) that breaks the contract
        raise OodbenchError(f"model family {family!r} built a {type(model).__name__}, not an "
                            "oodbench.models.LikelihoodModel (models/base.py)")
    return model
