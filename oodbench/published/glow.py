"""y0ast/Glow-PyTorch's Glow (code at commit 13c7b01) converted into oodbench's glow / cv-glow.

The released model (README: CIFAR-10, affine coupling, L=3, K=32, 512 hidden channels, LU-decomposed
1x1 convolutions, learned top prior, 3.39 bits/dim) is `glow/glow_affine_coupling.pt` inside glow.zip,
a bare `torch.save(model.state_dict())`; ignite's ModelCheckpoint (train.py) saves the same kind of
file, and `read_state` strips DataParallel's "module." prefix.

Everything is read off the file: the settings from key names and shapes (K and L from the layer
indices, the coupling from the width of the block's last conv: C for affine, C/2 for additive, the
image size from the `prior_h` buffer, [1, 2C, H/2^L, W/2^L]); then every key the file must have for
those settings is checked, with its shape, and every key it has must be used, so another layout is
refused before anything is built. The two models compute the same function; what differs is layout:
- y0ast reads the coupling's (shift, scale) and the split prior's (mean, log-scale) from interleaved
  channels (split_feature "cross": even, odd); oodbench from halves, so those convs' output channels
  (weight, bias, log-scale) are reordered.
- both ZeroConvs scale by exp(3 log s): the log-scale is copied as it is.
- y0ast's top prior is a ZeroConv of a zero buffer, i.e. bias * exp(3 logs) at every pixel, split in
  halves (mean, log-scale): it is folded into oodbench's per-channel TopPrior (in float64); without
  learn_top both are zero. A non-zero `prior_h` would make the prior vary per pixel: refused.
- actnorm's [1, C, 1, 1] tensors become [C]; its init flag (a Python attribute there, not saved)
  becomes oodbench's `initialized` buffer, set: a released model is never re-initialised.
- the LU 1x1 conv (p, sign_s, lower, upper, log_s) maps one to one; a plain one (LU_decomposed off,
  `invconv.weight`) is factorised W = P L U in float64 and checked to rebuild W.
- inputs agree: y0ast feeds k/256 - 0.5 + U(0, 1/256), oodbench (k + u)/256 - 0.5.
Refused, in one line: a class-conditional Glow (y_condition: project_ycond / project_class), whose
likelihood needs a label; flow_permutation shuffle or reverse, whose channel order is not in the state
dict (the shuffle is drawn at construction), so it cannot be loaded exactly; any other layout.
"""

from __future__ import annotations

import re

import torch

from oodbench.published.base import Converted, ImportRefused, Source, State, take

NAME = "y0ast/Glow-PyTorch"
SUPPORTED = ("supported: y0ast/Glow-PyTorch's unconditional Glow with invertible 1x1 convolutions (LU-decomposed or "
             "not), affine or additive coupling, learned top prior on or off")
STEP = re.compile(r"flow\.layers\.(\d+)\.actnorm\.bias")
SPLIT = re.compile(r"flow\.layers\.(\d+)\.conv\.conv\.weight")


def _refuse(reason: str) -> ImportRefused:
    return ImportRefused(f"{reason}; {SUPPORTED}")


def _architecture(state: State) -> dict:
    """The settings of the y0ast model that wrote `state`, from key names and shapes."""
    if any(key.startswith(("project_ycond.", "project_class.")) for key in state):
        raise _refuse("class-conditional Glow (y_condition) is not supported: its likelihood needs the class label")
    steps = sorted(int(m.group(1)) for key in state if (m := STEP.fullmatch(key)))
    splits = [int(m.group(1)) for key in state if (m := SPLIT.fullmatch(key))]
    if not steps:
        raise _refuse("not a y0ast/Glow-PyTorch state dict (no flow.layers.N.actnorm.bias)")
    if not any(".invconv." in key for key in state):
        raise _refuse("the file has no invconv weights (flow_permutation shuffle or reverse): that channel order is not "
                      "saved in the state dict, so the model cannot be loaded exactly")
    levels = len(splits) + 1
    if len(steps) % levels:
        raise _refuse(f"{len(steps)} flow steps do not divide into {levels} levels")
    first = f"flow.layers.{steps[0]}"
    channels = take(state, f"{first}.actnorm.bias", NAME).numel()  # 4 x the image channels (squeezed)
    out = take(state, f"{first}.block.4.conv.weight", NAME).shape[0]
    couplings = {channels: "affine", channels // 2: "additive"}
    if channels % 4 or out not in couplings:
        raise _refuse(f"the first step has {channels} channels and its coupling {out} outputs, neither affine nor additive")
    prior_h = take(state, "prior_h", NAME)
    if prior_h.dim() != 4:
        raise _refuse(f"prior_h has shape {list(prior_h.shape)}, expected [1, 2C, H/2^L, W/2^L]")
    height, width = (side * 2 ** levels for side in prior_h.shape[2:])
    if height != width:
        raise _refuse(f"the model was trained on {height}x{width} images; oodbench's runs take square images")
    return {"repository": NAME, "in_channels": channels // 4, "levels": levels, "steps": len(steps) // levels,
            "hidden_channels": take(state, f"{first}.block.0.conv.weight", NAME).shape[0], "coupling": couplings[out],
            "learn_top": "learn_top_fn.conv.weight" in state, "flow_permutation": "invconv",
            "LU_decomposed": f"{first}.invconv.weight" not in state, "y_condition": False, "image_size": height}


def layout(arch: dict) -> dict[str, tuple[int, ...]]:
    """Every key of a y0ast Glow with these settings and its shape (model.py's FlowNet, layer by layer)."""
    shapes: dict[str, tuple[int, ...]] = {}
    hidden, channels, index = arch["hidden_channels"], arch["in_channels"], 0
    for level in range(arch["levels"]):
        channels *= 4
        index += 1  # the squeeze layer has no tensors
        for _ in range(arch["steps"]):
            p = f"flow.layers.{index}."
            shapes |= {p + "actnorm.bias": (1, channels, 1, 1), p + "actnorm.logs": (1, channels, 1, 1)}
            if arch["LU_decomposed"]:
                shapes |= {p + f"invconv.{name}": (channels, channels) for name in ("p", "lower", "upper")}
                shapes |= {p + "invconv.sign_s": (channels,), p + "invconv.log_s": (channels,)}
            else:
                shapes[p + "invconv.weight"] = (channels, channels)
            out = channels if arch["coupling"] == "affine" else channels // 2
            for block, (n_in, n_out, size) in {0: (channels // 2, hidden, 3), 2: (hidden, hidden, 1)}.items():
                shapes[p + f"block.{block}.conv.weight"] = (n_out, n_in, size, size)
                shapes |= {p + f"block.{block}.actnorm.{name}": (1, n_out, 1, 1) for name in ("bias", "logs")}
            shapes |= _zero_conv(p + "block.4.", hidden, out)
            index += 1
        if level < arch["levels"] - 1:
            shapes |= _zero_conv(f"flow.layers.{index}.conv.", channels // 2, channels)
            index += 1
            channels //= 2
    if arch["learn_top"]:
        shapes |= _zero_conv("learn_top_fn.", 2 * channels, 2 * channels)
    top = arch["image_size"] // 2 ** arch["levels"]
    shapes["prior_h"] = (1, 2 * channels, top, top)
    return shapes


def _zero_conv(prefix: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "conv.weight": (n_out, n_in, 3, 3), prefix + "conv.bias": (n_out,), prefix + "logs": (n_out, 1, 1)}


def _check_layout(state: State, arch: dict) -> None:
    """Every expected key present with its shape, and no other key: else refuse before building anything."""
    expected = layout(arch)
    settings = ", ".join(f"{k}={arch[k]}" for k in ("in_channels", "levels", "steps", "hidden_channels", "coupling"))
    missing = [key for key in expected if key not in state]
    if missing:
        raise _refuse(f"for {settings} the file lacks {len(missing)} keys ({', '.join(missing[:3])}...)")
    unused = [key for key in state if key not in expected]
    if unused:
        raise _refuse(f"the file has {len(unused)} keys of a layout oodbench does not know ({', '.join(unused[:3])})")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise _refuse(f"{key} has shape {list(state[key].shape)}, but {settings} needs {list(shape)}: the file's "
                          "tensors do not fit one model")
    if torch.any(state["prior_h"] != 0):
        raise _refuse("prior_h is not zero, so the top prior would vary per pixel; y0ast's code keeps it zero")


def _halves(tensor: torch.Tensor) -> torch.Tensor:
    """Output channels interleaved (even, odd: y0ast's split_feature "cross") -> halves (first, second)."""
    n = tensor.shape[0]
    return tensor[torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)])]


def _zero_conv_state(state: State, prefix: str, cross: bool) -> State:
    order = _halves if cross else (lambda t: t)
    return {"weight": order(state[prefix + "conv.weight"]), "bias": order(state[prefix + "conv.bias"]),
            "log_scale": order(state[prefix + "logs"].reshape(-1))}


def _actnorm(state: State, prefix: str) -> State:
    return {"bias": state[prefix + "bias"].reshape(-1), "log_scale": state[prefix + "logs"].reshape(-1),
            "initialized": torch.tensor(True)}


def _invconv(state: State, prefix: str) -> State:
    """oodbench's LU 1x1 conv: y0ast's LU tensors as they are, or a plain weight factorised in float64."""
    if prefix + "weight" in state:
        weight = state[prefix + "weight"].double()
        permutation, lower, upper = torch.linalg.lu(weight)
        diagonal = torch.diagonal(upper)
        rebuilt = permutation @ lower @ upper
        if torch.any(diagonal == 0) or (rebuilt - weight).abs().max() > 1e-12 * max(weight.abs().max().item(), 1.0):
            raise _refuse(f"{prefix}weight is singular or too ill-conditioned to factorise exactly")
        tensors = {"permutation": permutation, "sign_s": torch.sign(diagonal), "lower": lower,
                   "upper": torch.triu(upper, 1), "log_s": diagonal.abs().log()}
    else:
        tensors = {"permutation": state[prefix + "p"], "sign_s": state[prefix + "sign_s"], "lower": state[prefix + "lower"],
                   "upper": state[prefix + "upper"], "log_s": state[prefix + "log_s"]}
    n, dtype = tensors["lower"].shape[0], tensors["lower"].dtype
    # Fixed in both codes; y0ast does not save them (plain attributes), oodbench keeps them as buffers.
    return {**tensors, "lower_mask": torch.tril(torch.ones(n, n, dtype=dtype), -1), "eye": torch.eye(n, dtype=dtype)}


def _prefixed(prefix: str, tensors: State) -> State:
    return {prefix + key: value for key, value in tensors.items()}


def convert(states: list[State]) -> Converted:
    """One y0ast/Glow-PyTorch state dict -> oodbench's glow (affine) or cv-glow (additive)."""
    if len(states) != 1:
        raise _refuse(f"y0ast-glow takes one file (the model's state dict), got {len(states)}")
    state = states[0]
    arch = _architecture(state)
    _check_layout(state, arch)
    affine = arch["coupling"] == "affine"
    out: State = {}
    index = 0
    for level in range(arch["levels"]):
        index += 1  # squeeze
        for step in range(arch["steps"]):
            src, dst = f"flow.layers.{index}.", f"levels.{level}.steps.{step}."
            out |= _prefixed(dst + "actnorm.", _actnorm(state, src + "actnorm."))
            out |= _prefixed(dst + "invconv.", _invconv(state, src + "invconv."))
            for block, name in ((0, "conv_in"), (2, "conv_hidden")):
                out[dst + f"coupling.net.{name}.conv.weight"] = state[src + f"block.{block}.conv.weight"]
                out |= _prefixed(dst + f"coupling.net.{name}.actnorm.", _actnorm(state, src + f"block.{block}.actnorm."))
            # Affine: (shift, scale logits) interleaved there, halves here; additive: the shift alone.
            out |= _prefixed(dst + "coupling.net.conv_out.", _zero_conv_state(state, src + "block.4.", cross=affine))
            index += 1
        if level < arch["levels"] - 1:
            out |= _prefixed(f"levels.{level}.split.prior.", _zero_conv_state(state, f"flow.layers.{index}.conv.", cross=True))
            index += 1
    channels = state["prior_h"].shape[1] // 2
    if arch["learn_top"]:
        # A conv of zeros is its bias: the same (mean, log-scale) at every pixel, in halves ("split").
        prior = state["learn_top_fn.conv.bias"].double() * (3 * state["learn_top_fn.logs"].double().reshape(-1)).exp()
    else:
        prior = torch.zeros(2 * channels, dtype=torch.float64)
    out["top_prior.mean"], out["top_prior.log_scale"] = prior[:channels], prior[channels:]
    settings = {key: arch[key] for key in ("in_channels", "levels", "steps", "hidden_channels", "coupling", "learn_top")}
    return Converted("glow" if affine else "cv-glow", settings, out, architecture=arch, image_size=arch["image_size"])


SOURCE = Source(
    name="y0ast-glow",
    repository=NAME,
    family="glow",
    description="y0ast/Glow-PyTorch's Glow (the Nalisnick et al. CIFAR-10 vs SVHN replication): affine coupling -> glow, "
                "additive -> cv-glow",
    convert=convert,
    published={"cifar10": {
        "file": "glow/glow_affine_coupling.pt in glow.zip (unzip before use)",
        "url": "http://www.cs.ox.ac.uk/people/joost.vanamersfoort/glow.zip",
        "bpd": 3.39,
        "architecture": "affine coupling, L=3, K=32, 512 hidden channels, LU 1x1 convolutions, learned top prior",
    }},
)
