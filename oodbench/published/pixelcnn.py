"""pclucas14/pixel-cnn-pp's PixelCNN++ (PyTorch port of openai/pixel-cnn, commit 7cb4436) -> family `pixelcnn`.

What it released: CIFAR-10 models (nr_resnet=5, 160 filters, 10 logistic mixtures, concat_elu) in a
MEGA folder linked from its readme, which reports 2.95 test bits/dim. That figure is its training
script's (main.py): the test loader drops the last partial batch (drop_last=True, batch 64: 156 batches,
9,984 of the 10,000 images), and the summed loss is divided by `batch_idx * batch_size`, i.e. by 155
batches' worth of images, so the printed bits/dim is 156/155 (0.65%) above the mean over the images it
summed: about 2.93 on its own terms. oodbench's evaluation of the imported model gives the exact figure.

The file is `torch.save(model.state_dict())`, and the conversion reads everything off it:
  * the released files were saved under torch.nn.DataParallel (its issues #3 and #14): every key starts
    `module.` (`read_state` strips it);
  * in_channels = u_init's input channels - 1 (the reference appends a channel of ones), nr_filters =
    u_init's output channels, nr_resnet = the blocks of the first up-pass stage, nr_logistic_mix =
    nin_out's outputs / 10 (RGB) or / 3 (grey: the reference's `_1d` loss, logit, mean and log-scale);
  * every layer's kernel is computed, in float64, from whatever the file holds for it: `weight` (plain),
    `weight_g` + `weight_v` (torch.nn.utils.weight_norm), or `parametrizations.weight.original0/1`
    (torch's newer weight_norm). Both forms normalise over dim 0 of the stored tensor, so a transposed
    convolution, stored (in, out, kh, kw), is normalised per *input* channel, where oodbench's own
    weight norm is per output channel: g and v cannot be copied across, the kernel can;
  * files written before the repository's commit 16c8b2f (April 2019; `self.conv == wn(self.conv)`, a
    comparison, where an assignment was meant), the released ones (April 2018) among them, hold plain
    weights for every shifted convolution and weight-normalised ones for the transposed convolutions and
    the 1x1 layers: each layer is read in its own form;
  * nin's Linear (out, in) becomes oodbench's 1x1 convolution (out, in, 1, 1).
The kernels are stored with weight_norm=False: the model then evaluates exactly the kernels the
reference computes, computed once in float64, instead of re-normalising them at every pass (a second
rounding, and 0/0 for an all-zero output channel of a plain-weight file). Dropout is set to the
reference's 0.5; it acts only in training (the reference drops whole channels, oodbench single units).
The network is fully convolutional, so the image size is not in the file; the run records 32, CIFAR-10's.

Refused, in one line naming what is supported: a file without the reference's key names (another
family, another implementation), one with keys the conversion would not use (batch-norm layers, the
reference's `norm='batch_norm'` option, which oodbench does not model; anything unknown), image
channels other than 1 or 3, weight norm over another dimension, and any tensor whose shape does not
fit the architecture read off u_init and nin_out. Nothing is converted partly: a file is refused
before any model is built.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from oodbench.models.pixelcnn.config import SUPPORTED_CHANNELS
from oodbench.models.pixelcnn.layers import NetworkInNetwork, ShiftedConv2d, ShiftedConvTranspose2d
from oodbench.published.base import Converted, ImportRefused, Source, State, take

REPOSITORY = "pclucas14/pixel-cnn-pp"
SUPPORTED = (f"supported: {REPOSITORY}'s PixelCNN state_dict (model.PixelCNN with concat_elu, 1 or 3 image channels, "
             "weight-normalised or plain convolutions, saved with or without DataParallel)")

# oodbench's module name -> the reference's module holding the same layer. Gated resnet blocks live in
# up_u/up_ul/down_u/down_ul.<stage>.<block>, the reference's in <pass>_layers.<stage>.<stream>_stream.<block>.
_BLOCK_STREAMS = {"up_u": "up_layers.{}.u_stream.{}", "up_ul": "up_layers.{}.ul_stream.{}",
                  "down_u": "down_layers.{}.u_stream.{}", "down_ul": "down_layers.{}.ul_stream.{}"}
_BLOCK_LAYERS = {"conv_in": "conv_input.conv", "nin_skip": "nin_skip.lin_a", "conv_out": "conv_out.conv"}
_LAYERS = {"u_init": "u_init.conv", "ul_init_down": "ul_init.0.conv", "ul_init_right": "ul_init.1.conv",
           "downsize_u": "downsize_u_stream.{}.conv", "downsize_ul": "downsize_ul_stream.{}.conv",
           "upsize_u": "upsize_u_stream.{}.deconv", "upsize_ul": "upsize_ul_stream.{}.deconv",
           "nin_out": "nin_out.lin_a"}
# How a layer's weight may be stored: plain, torch.nn.utils.weight_norm, torch.nn.utils.parametrizations.weight_norm.
_WEIGHT_NORM_FORMS = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def _take(state: State, key: str) -> torch.Tensor:
    try:
        return take(state, key, REPOSITORY)
    except ImportRefused as exc:
        raise ImportRefused(f"{exc}; {SUPPORTED}") from None


def _reference_prefix(name: str) -> str:
    top, *index = name.split(".")
    if top in _BLOCK_STREAMS:
        stage, block, layer = index
        return f"{_BLOCK_STREAMS[top].format(stage, block)}.{_BLOCK_LAYERS[layer]}."
    return _LAYERS[top].format(*index) + "."


def _kernel(state: State, prefix: str, used: set[str], forms: Counter) -> torch.Tensor:
    """The weight the reference's layer `prefix` computes, in float64; records the keys it read."""
    if prefix + "weight" in state:
        used.add(prefix + "weight")
        forms["plain"] += 1
        return state[prefix + "weight"].double()
    for g_name, v_name in _WEIGHT_NORM_FORMS:
        if prefix + g_name in state or prefix + v_name in state:
            g = _take(state, prefix + g_name).double()
            v = _take(state, prefix + v_name).double()
            used.update((prefix + g_name, prefix + v_name))
            forms[g_name.split(".")[0]] += 1
            # torch's weight norm (dim=0): one g per slice of the stored tensor's first dimension, which is
            # the input channel for a transposed convolution.
            per_slice = (v.shape[0],) + (1,) * (v.dim() - 1)
            if tuple(g.shape) != per_slice:
                raise ImportRefused(f"{prefix}{g_name} has shape {tuple(g.shape)}, not {per_slice}: weight norm over another "
                                    f"dimension than torch's default (dim=0); {SUPPORTED}")
            return v * (g / torch.linalg.vector_norm(v.flatten(1), dim=1).view(per_slice))
    raise ImportRefused(f"the file has no {prefix}weight nor {prefix}weight_v: not a {REPOSITORY} file of a layout "
                        f"oodbench knows; {SUPPORTED}")


def _settings(state: State) -> dict[str, int]:
    """in_channels, nr_resnet, nr_filters, nr_logistic_mix, read off u_init, the first up stage and nin_out."""
    u_init = _kernel(state, "u_init.conv.", set(), Counter())
    nr_filters, in_channels = u_init.shape[0], u_init.shape[1] - 1  # the reference appends a channel of ones
    if in_channels not in SUPPORTED_CHANNELS:
        raise ImportRefused(f"u_init reads {in_channels} image channels (plus the ones channel); oodbench's PixelCNN++ "
                            f"models {' or '.join(map(str, SUPPORTED_CHANNELS))}; {SUPPORTED}")
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"up_layers\.0\.u_stream\.(\d+)\.", key))}
    if not blocks:
        raise ImportRefused(f"the file has no up_layers.0.u_stream.* tensors; {SUPPORTED}")
    n_out = _kernel(state, "nin_out.lin_a.", set(), Counter()).shape[0]
    per_mixture = 10 if in_channels == 3 else 3
    if n_out % per_mixture:
        raise ImportRefused(f"nin_out has {n_out} outputs, not a multiple of {per_mixture} (parameters per mixture "
                            f"component for {in_channels} channel(s)); {SUPPORTED}")
    return {"in_channels": in_channels, "nr_resnet": max(blocks) + 1, "nr_filters": nr_filters,
            "nr_logistic_mix": n_out // per_mixture}


def convert(states: list[State]) -> Converted:
    """The one state dict of a pclucas14/pixel-cnn-pp file (DataParallel's prefix stripped) -> oodbench's PixelCNN++."""
    from oodbench.models.families import build_model, model_config  # every family's code: only when converting

    if len(states) != 1:
        raise ImportRefused(f"{REPOSITORY}'s model is one file, got {len(states)}")
    state = states[0]
    if not any(key.startswith("u_init.") for key in state):
        raise ImportRefused(f"not a {REPOSITORY} PixelCNN++ file (no u_init.* tensors; keys like "
                            f"{', '.join(list(state)[:3])}); {SUPPORTED}")
    batch_norm = sorted(key for key in state if ".bn." in key)
    if batch_norm:
        raise ImportRefused(f"the file has batch-norm layers ({batch_norm[0]}, ...: the reference's norm='batch_norm'), "
                            f"which oodbench's PixelCNN++ does not model; {SUPPORTED}")
    settings = {**_settings(state), "dropout": 0.5, "weight_norm": False}
    config = model_config("pixelcnn", settings, where="the settings read off the file")
    with torch.device("meta"):  # the target's names and shapes, without allocating it
        target = build_model("pixelcnn", config)
    expected = {key: tuple(tensor.shape) for key, tensor in target.state_dict().items()}

    converted: State = {}
    used: set[str] = set()
    forms: Counter = Counter()  # how many layers the file stores in each form, for the run record
    for name, module in target.named_modules():
        if not isinstance(module, (ShiftedConv2d, ShiftedConvTranspose2d, NetworkInNetwork)):
            continue
        prefix = _reference_prefix(name)
        weight = _kernel(state, prefix, used, forms)
        if isinstance(module, NetworkInNetwork) and weight.dim() == 2:
            weight = weight[:, :, None, None]  # nn.Linear (out, in) -> 1x1 convolution
        bias = _take(state, prefix + "bias").double()
        used.add(prefix + "bias")
        for part, tensor in (("weight", weight), ("bias", bias)):
            if tuple(tensor.shape) != expected[f"{name}.{part}"]:
                raise ImportRefused(f"the {part} of {prefix[:-1]} has shape {tuple(tensor.shape)}, but a PixelCNN++ with "
                                    f"{settings} needs {expected[f'{name}.{part}']}: the file's tensors do not fit one "
                                    f"architecture; {SUPPORTED}")
            converted[f"{name}.{part}"] = tensor
    unused = sorted(set(state) - used)
    if unused:
        raise ImportRefused(f"the file has {len(unused)} tensor(s) the conversion would not use ({', '.join(unused[:3])}"
                            f"{', ...' if len(unused) > 3 else ''}); {SUPPORTED}")
    architecture = {**{k: settings[k] for k in ("in_channels", "nr_resnet", "nr_filters", "nr_logistic_mix")},
                    "resnet_nonlinearity": "concat_elu", "layers_weight_normalised": forms["weight_g"] + forms["parametrizations"],
                    "layers_plain": forms["plain"]}
    return Converted(family="pixelcnn", model_settings=settings, state=converted, architecture=architecture, image_size=32)


SOURCE = Source(
    name="pclucas14-pixelcnn",
    repository=REPOSITORY,
    family="pixelcnn",
    description="PixelCNN++ on CIFAR-10 (nr_resnet=5, 160 filters, 10 mixtures), PyTorch port of openai/pixel-cnn",
    convert=convert,
    published={
        "cifar10": {
            # The file the readme's MEGA folder holds (as cited by projects that use it); 214,732,802 bytes.
            "file": "pcnn_lr.0.00040_nr-resnet5_nr-filters160_889.pth",
            "url": "https://mega.nz/#F!W7IhST7R!PV7Pbet8Q07GxVLGnmQrZg",
            "bpd": 2.95,
            "bpd_note": "the readme's test bits/dim from main.py, which divides the loss summed over 156 test batches by "
                        "155 batches' images: 156/155 times the mean, about 2.93",
            "settings": {"nr_resnet": 5, "nr_filters": 160, "nr_logistic_mix": 10, "in_channels": 3},
            "commit": "7cb4436",
        },
    },
)
