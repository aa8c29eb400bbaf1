"""Released `diffusers` DDPM checkpoints (google/ddpm-cifar10-32, Ho et al. 2020's CIFAR-10 model) converted
into oodbench's diffusion family in discrete time, scored by Ho et al.'s bound (models/diffusion/ddpm.py).

A release is what `UNet2DModel.save_pretrained` and `DDPMScheduler.save_pretrained` write: the U-Net's
`config.json` and weights (`diffusion_pytorch_model.safetensors`, or `.bin`) and the scheduler's
`scheduler_config.json`; a pipeline folder (DDPMPipeline.save_pretrained, the hub repositories) holds
them in `unet/` and `scheduler/`, and google/ddpm-cifar10-32 has a copy at its root as well.
`oodbench import diffusers-ddpm FOLDER` takes either folder (the `unet/` and `scheduler/` subfolders
first, as DDPMPipeline loads them), or the three files named on the command line. Nothing runs on load:
JSON, safetensors, or a .bin read with torch.load(weights_only=True).

The U-Net's config is read as diffusers reads it (a key the file lacks takes UNet2DModel's default in the
installed diffusers) and described in `DiffusionConfig`'s terms (models/diffusion/config.py): channels and
channel_mult from block_out_channels, attention_resolutions from the Attn blocks, the rest by name. The
U-Net that description builds (networks.unet_settings) must have every one of the file's settings, or the
import is refused naming the first that differs: nothing is loaded into a network of another shape. The
weights are the U-Net's own state dict under `denoiser.unet.`; attention weights saved under the names of
diffusers' deprecated attention block (query, key, value, proj_attn) are renamed as diffusers renames them
on load (ModelMixin._fix_state_dict_keys_on_load).

The scheduler gives the discrete time: `num_train_timesteps` T and linear betas from `beta_start` to
`beta_end`. Supported: DDPMScheduler with beta_schedule "linear", prediction_type "epsilon", no thresholding
or zero-SNR rescaling, variance_type "fixed_large" or "fixed_small" and clip_sample on (at 1.0) or off, which
become DiffusionConfig's `variance` and `clip_denoised`: the bound is the reverse process the release
samples with. Refused too: class-conditional U-Nets, learned variances (out_channels != in_channels),
other block types, other schedules and prediction types.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from oodbench.published.base import Converted, ImportRefused, Source, State, read_state

NAME = "diffusers-ddpm"
REPOSITORY = "huggingface/diffusers"
UNET_CONFIG, SCHEDULER_CONFIG = "config.json", "scheduler_config.json"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SUPPORTED = ("supported: a diffusers UNet2DModel (DownBlock2D/AttnDownBlock2D, UpBlock2D/AttnUpBlock2D, unconditional, "
             "predicting eps) with a DDPMScheduler of linear betas, prediction_type epsilon, variance_type fixed_large or "
             "fixed_small, clip_sample at 1.0 or off, as google/ddpm-cifar10-32")
# Scheduler settings oodbench scores exactly (see the module docstring), and what each must be.
SCHEDULER_REQUIRED = {"beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
                      "thresholding": False, "rescale_betas_zero_snr": False, "clip_sample_range": 1.0}
VARIANCES = ("fixed_large", "fixed_small")  # variance_type -> DiffusionConfig.variance, the same names
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# diffusers' deprecated attention block's parameter names -> the Attention module's (diffusers renames them on load)
DEPRECATED_ATTENTION = re.compile(r"(.+\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
RENAMED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
PREFIX = "denoiser.unet."  # the U-Net's place in oodbench's Diffusion


def _refuse(reason: str) -> ImportRefused:
    return ImportRefused(f"{reason}; {SUPPORTED}")


# --- reading a release ----------------------------------------------------------------------------------

def release_files(paths: tuple[Path, ...]) -> tuple[Path, Path, Path]:
    """(the U-Net's config.json, its weights, scheduler_config.json) from a folder or the three files."""
    paths = tuple(Path(p) for p in paths)
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        # DDPMPipeline's layout first (what from_pretrained loads), then everything at the top.
        for unet, scheduler in ((folder / "unet", folder / "scheduler"), (folder, folder)):
            weights = [unet / name for name in WEIGHTS if (unet / name).is_file()]
            if (unet / UNET_CONFIG).is_file() and (scheduler / SCHEDULER_CONFIG).is_file() and weights:
                return unet / UNET_CONFIG, weights[0], scheduler / SCHEDULER_CONFIG
        raise ImportRefused(f"{folder} holds no diffusers DDPM: expected unet/{UNET_CONFIG}, unet/{WEIGHTS[0]} (or .bin) and "
                            f"scheduler/{SCHEDULER_CONFIG}, or the three side by side")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ImportRefused(f"{missing[0]} does not exist; pass the model's folder, or its {UNET_CONFIG}, weights and "
                            f"{SCHEDULER_CONFIG}")
    configs = [p for p in paths if p.name == UNET_CONFIG]
    schedulers = [p for p in paths if p.name == SCHEDULER_CONFIG]
    weights = [p for p in paths if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if len(paths) != 3 or len(configs) != 1 or len(schedulers) != 1 or len(weights) != 1:
        raise ImportRefused(f"{NAME} takes the model's folder, or exactly three files: the U-Net's {UNET_CONFIG}, its "
                            f"weights (.safetensors or .bin) and {SCHEDULER_CONFIG}; got {', '.join(p.name for p in paths)}")
    return configs[0], weights[0], schedulers[0]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportRefused(f"{path} is not a readable JSON file ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ImportRefused(f"{path} holds no JSON object")
    return data


def read_weights(path: Path) -> State:
    """The tensors of a .safetensors file (safetensors' own reader), or of a torch file (weights_only=True)."""
    if path.suffix != ".safetensors":
        return read_state(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ImportRefused(f"{path} is not a safetensors file ({type(exc).__name__})") from None


def load(paths: tuple[Path, ...]) -> tuple[Converted, tuple[Path, ...]]:
    """A folder or the three files -> (the Converted model, the files it was read from)."""
    config_path, weights_path, scheduler_path = release_files(paths)
    converted = convert_release(_read_json(config_path), _read_json(scheduler_path), read_weights(weights_path))
    return converted, (config_path, weights_path, scheduler_path)


# --- converting it --------------------------------------------------------------------------------------

def _resolved(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """`config` as diffusers reads it into `cls`: each argument of cls.__init__ from the file, else its default;
    lists as tuples. Keys the class does not take (`_class_name`, `_diffusers_version`) are left out."""
    params = inspect.signature(cls.__init__).parameters
    out = {}
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = config.get(name, param.default)
        out[name] = tuple(value) if isinstance(value, list) else value
    return out


def _check_class(config: dict[str, Any], expected: str, what: str) -> None:
    name = config.get("_class_name", expected)
    if name != expected:
        raise _refuse(f"the {what} config is a {name}, not a {expected}")


def diffusion_settings(unet: dict[str, Any], scheduler: dict[str, Any]) -> dict[str, Any]:
    """DiffusionConfig's settings for a resolved UNet2DModel config and DDPMScheduler config (lists, for the run's YAML)."""
    if unet["class_embed_type"] is not None or unet["num_class_embeds"] is not None:
        raise _refuse("a class-conditional U-Net (class_embed_type / num_class_embeds) is not supported: its likelihood "
                      "needs the class label")
    if unet["out_channels"] != unet["in_channels"]:
        raise _refuse(f"the U-Net has {unet['out_channels']} output channels for {unet['in_channels']} input channels "
                      "(a learned variance?), but oodbench's DDPM predicts eps alone")
    size = unet["sample_size"]
    if isinstance(size, tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise _refuse(f"the U-Net was made for {size} images; oodbench's runs take square images")
        size = size[0]
    if not isinstance(size, int):
        raise _refuse(f"the U-Net's config has no image size (sample_size {size!r})")
    down, up = unet["down_block_types"], unet["up_block_types"]
    odd = [t for t in down if t not in DOWN_BLOCKS] + [t for t in up if t not in UP_BLOCKS]
    if odd:
        raise _refuse(f"block type {odd[0]} is not supported")
    widths = unet["block_out_channels"]
    if len(down) != len(widths) or len(up) != len(widths):
        raise _refuse(f"{len(down)} down blocks and {len(up)} up blocks for {len(widths)} widths")
    base = widths[0]
    if any(width % base for width in widths):
        raise _refuse(f"block_out_channels {list(widths)} are not multiples of the first, so they have no channel_mult")
    sides = [size // 2**level for level in range(len(widths))]
    attention = [side for side, block in zip(sides, down, strict=True) if DOWN_BLOCKS[block]]
    mirrored = [side for side, block in zip(reversed(sides), up, strict=True) if UP_BLOCKS[block]]
    if sorted(attention) != sorted(mirrored):
        raise _refuse(f"attention at sides {attention} on the way down but {sorted(mirrored)} on the way up")
    return {"in_channels": unet["in_channels"], "image_size": size, "channels": base,
            "channel_mult": [width // base for width in widths], "layers_per_block": unet["layers_per_block"],
            "attention_resolutions": attention, "dropout": float(unet["dropout"]), "norm_groups": unet["norm_num_groups"],
            "flip_sin_to_cos": bool(unet["flip_sin_to_cos"]), "freq_shift": unet["freq_shift"],
            "downsample_padding": unet["downsample_padding"], "norm_eps": float(unet["norm_eps"]),
            "time": "discrete", "timesteps": scheduler["num_train_timesteps"],
            "beta_start": float(scheduler["beta_start"]), "beta_end": float(scheduler["beta_end"]),
            "variance": scheduler["variance_type"], "clip_denoised": bool(scheduler["clip_sample"])}


def _check_scheduler(scheduler: dict[str, Any]) -> None:
    for key, value in SCHEDULER_REQUIRED.items():
        if key == "clip_sample_range" and not scheduler["clip_sample"]:
            continue
        if scheduler[key] != value:
            raise _refuse(f"the scheduler has {key}={scheduler[key]!r}, oodbench scores {key}={value!r}")
    if scheduler["variance_type"] not in VARIANCES:
        raise _refuse(f"the scheduler has variance_type={scheduler['variance_type']!r}, oodbench scores "
                      f"{' or '.join(VARIANCES)}")


def _rename_deprecated_attention(state: State) -> State:
    out = {}
    for key, value in state.items():
        match = DEPRECATED_ATTENTION.fullmatch(key)
        out[f"{match[1]}.{RENAMED[match[2]]}.{match[3]}" if match else key] = value
    return out


def convert_release(unet_config: dict[str, Any], scheduler_config: dict[str, Any], state: State) -> Converted:
    """The U-Net's config.json, the scheduler's scheduler_config.json (both as dicts) and the U-Net's weights
    -> oodbench's diffusion family in discrete time."""
    from diffusers import DDPMScheduler, UNet2DModel

    from oodbench.models.diffusion import DiffusionConfig
    from oodbench.models.diffusion.networks import unet_settings

    _check_class(unet_config, "UNet2DModel", "U-Net")
    _check_class(scheduler_config, "DDPMScheduler", "scheduler")
    unet = _resolved(UNet2DModel, unet_config)
    scheduler = _resolved(DDPMScheduler, scheduler_config)
    _check_scheduler(scheduler)
    settings = diffusion_settings(unet, scheduler)
    # Sampling takes at most T steps; the default (DiffusionConfig's) unless the schedule is shorter.
    settings["sample_steps"] = min(DiffusionConfig().sample_steps, settings["timesteps"])
    try:
        config = DiffusionConfig(**settings)
    except Exception as exc:  # noqa: BLE001 - the config's own one-line reason (SettingError)
        raise _refuse(f"the release does not fit oodbench's diffusion settings ({exc})") from None
    ours = _resolved(UNet2DModel, unet_settings(config))
    unet = {**unet, "sample_size": settings["image_size"]}  # (S, S) and S build the same U-Net
    differing = [key for key in unet if unet[key] != ours[key]]
    if differing:
        key = differing[0]
        default = "" if key in unet_config else " (diffusers' default: the file does not set it)"
        raise _refuse(f"the U-Net has {key}={unet[key]!r}{default}; oodbench's U-Net for these settings has {ours[key]!r}")
    weights = {PREFIX + key: value for key, value in _rename_deprecated_attention(state).items()}
    architecture = {"repository": REPOSITORY, "unet": _plain(unet), "scheduler": _plain(scheduler)}
    return Converted("diffusion", settings, weights, architecture=architecture, image_size=settings["image_size"])


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as YAML-safe values (tuples as lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}


SOURCE = Source(
    name=NAME,
    repository=REPOSITORY,
    family="diffusion",
    files=3,
    description="a diffusers DDPM: the model's folder (unet/ and scheduler/, or config.json, "
                "diffusion_pytorch_model.safetensors and scheduler_config.json), or those three files",
    load=load,
    published={"cifar10": {
        "repository": "google/ddpm-cifar10-32",
        "url": "https://huggingface.co/google/ddpm-cifar10-32",
        "licence": "Apache-2.0",
        "bpd": 3.75,
        "how": "Ho et al. 2020, Table 2: NLL test (train) <= 3.75 (3.72) bits/dim for the L_simple model (FID 3.17), "
               "their variational bound with every one of the 1000 timesteps",
        "architecture": "U-Net of 128 channels, multipliers (1, 2, 2, 2), 2 residual blocks per resolution, attention "
                        "at 16x16; T = 1000 linear betas 1e-4..0.02, fixed_large variance, eps prediction",
    }},
)
