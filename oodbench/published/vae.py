"""XavierXiao/Likelihood-Regret's VAEs (Xiao, Yan & Amit, NeurIPS 2020, at commit 5517c9b) -> the vae family.

The repository trains (train_pixel.py) a DCGAN-style VAE with a 256-way categorical decoder
(DCGAN_VAE_pixel.py: `Encoder` and `DCGAN_G`) and saves the two halves apart, `torch.save(net.state_dict())`:
    netE_pixel.pth  the encoder: main.input-conv, main.input-BN, main.pyramid:A-B:conv and
                    main.pyramid:B:batchnorm per stage; conv1 (mean) and conv2 (log-variance) 4x4 heads
    netG_pixel.pth  the decoder: main.initial:NZ-W:convt (+ batchnorm), main.pyramid:W-W/2:convt (+ batchnorm)
                    per stage, main.final:W-NC:convt (no bias)
`oodbench import likelihood-regret-vae netE_pixel.pth netG_pixel.pth` takes them in either order (told apart
by their key names); the sizes (channels nc, base width ngf, latent nz, image side) are read off the
tensors' shapes and the number of pyramid stages.

Xiao's encoder is not oodbench's default one, so the conversion sets the VAE's declared settings that
reproduce it (models/vae/config.py): batch norm after the first convolution too (`encoder_input_norm`),
ReLU (`encoder_activation`), inputs k/255 in [0, 1] as torchvision's ToTensor gives them (`input_range`).
The log-variance head becomes half of oodbench's (mean, log_std) head: conv2's weights and bias are halved,
which is exact in floating point (a power of two; only values below 2**-125 would lose a bit), so
log_std = logvar / 2 bit for bit. Xiao's last transposed convolution has no bias: oodbench's is set to 0.
The reference's likelihood target `(x * 255).long()` gives back k for every k/255 in float32 and float64
(tests/published/test_vae_import.py checks all 256 levels), so both score the pixel value the image holds.
The 1-channel (Fashion-MNIST) models were trained on 28x28 images resized bilinearly to 32x32
(`transforms.Resize(32)`): their `Converted` says so (`resize_small`), and the data layer resizes.

Refused, in one line naming what is supported: a number of files other than one encoder and one decoder,
keys of another layout, keys left over, tensors whose shapes do not fit the sizes read off the files, and
sizes oodbench's VAE cannot hold (it has one base width for both halves, so a DCGAN_G whose width differs
from its encoder's, as Xiao's code builds for an odd ngf, is refused).
"""

from __future__ import annotations

import re

import torch

from oodbench.published.base import Converted, ImportRefused, Source, State, take
from oodbench.units import N_LEVELS  # the decoder's classes per sub-pixel

NAME = "likelihood-regret-vae"
REPOSITORY = "XavierXiao/Likelihood-Regret"
ENCODER_FILE, DECODER_FILE = "netE_pixel.pth", "netG_pixel.pth"
SUPPORTED = (f"supported: the two files of {REPOSITORY}'s DCGAN_VAE_pixel at 5517c9b, the encoder "
             f"({ENCODER_FILE}: main.input-conv, main.pyramid:*, conv1, conv2) and the decoder "
             f"({DECODER_FILE}: main.initial:*, main.pyramid:*, main.final:*)")
# The settings that make oodbench's encoder Xiao's (see the module docstring).
XIAO_ENCODER = {"encoder_activation": "relu", "encoder_input_norm": True, "input_range": "0..1"}
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _batch_norm(theirs: str, ours: str) -> dict[str, str]:
    return {f"{theirs}.{name}": f"{ours}.{name}" for name in _BN}


def _only(state: State, pattern: str, what: str) -> tuple[str, torch.Tensor]:
    """The one key of `state` matching `pattern`, and its tensor."""
    keys = [key for key in state if re.fullmatch(pattern, key)]
    if len(keys) != 1:
        raise ImportRefused(f"the {what} file has {len(keys)} keys like {pattern!r} (one expected); {SUPPORTED}")
    return keys[0], state[keys[0]]


def _stages(state: State, kind: str) -> int:
    """Strided stages of a half: its pyramid layers, plus the first (encoder) or the last (decoder) one."""
    return 1 + sum(bool(re.fullmatch(rf"main\.pyramid:\d+-\d+:{kind}\.weight", key)) for key in state)


def _split(states: list[State]) -> tuple[State, State]:
    """(encoder, decoder) from two state dicts in any order: the encoder is the one with the conv1 head."""
    if len(states) != 2:
        raise ImportRefused(f"{NAME} takes 2 files, got {len(states)}; {SUPPORTED}")
    encoders = [state for state in states if "conv1.weight" in state]
    decoders = [state for state in states if any(key.startswith("main.final:") for key in state)]
    if len(encoders) != 1 or len(decoders) != 1 or encoders[0] is decoders[0]:
        keys = "; ".join(", ".join(list(state)[:3]) for state in states)
        raise ImportRefused(f"{NAME} needs one encoder and one decoder file, got {len(encoders)} encoder(s) and "
                            f"{len(decoders)} decoder(s) (keys: {keys}, ...); {SUPPORTED}")
    return encoders[0], decoders[0]


def convert(states: list[State]) -> Converted:
    encoder, decoder = _split(states)
    where_e, where_g = f"{REPOSITORY} encoder ({ENCODER_FILE})", f"{REPOSITORY} decoder ({DECODER_FILE})"

    # Sizes, read off the encoder: input-conv is (ngf, nc, 4, 4), conv1 (nz, ngf * 2^(stages-1), 4, 4).
    ngf, nc = take(encoder, "main.input-conv.weight", where_e).shape[:2]
    nz = take(encoder, "conv1.weight", where_e).shape[0]
    stages = _stages(encoder, "conv")
    # ... and checked against the decoder's: initial (nz, top width, 4, 4), final (ngf, nc * 256, 4, 4).
    _, initial = _only(decoder, r"main\.initial:\d+-\d+:convt\.weight", "decoder")
    _, final = _only(decoder, r"main\.final:\d+-\d+:convt\.weight", "decoder")
    found = {"output channels (nc x 256)": (nc * N_LEVELS, final.shape[1]), "base width": (ngf, final.shape[0]),
             "latent size": (nz, initial.shape[0]), "stage count": (stages, _stages(decoder, "convt"))}
    for what, (in_encoder, in_decoder) in found.items():
        if in_encoder != in_decoder:
            why = " (Xiao's DCGAN_G builds ngf - 1 for an odd ngf)" if what == "base width" else ""
            raise ImportRefused(f"the encoder's {what} is {in_encoder}, the decoder's {in_decoder}: oodbench's VAE has one "
                                f"for both halves{why}; {SUPPORTED}")

    # Their key -> ours. Module names follow DCGAN_VAE_pixel.py; ours are nn.Sequential indices, three
    # per stage (convolution, batch norm, activation) in both.
    names = {"main.input-conv.weight": "encoder.net.0.weight", **_batch_norm("main.input-BN", "encoder.net.1")}
    for stage in range(1, stages):
        width = ngf * 2 ** (stage - 1)
        names[f"main.pyramid:{width}-{2 * width}:conv.weight"] = f"encoder.net.{3 * stage}.weight"
        names.update(_batch_norm(f"main.pyramid:{2 * width}:batchnorm", f"encoder.net.{3 * stage + 1}"))
    top = ngf * 2 ** (stages - 1)
    decoder_names = {f"main.initial:{nz}-{top}:convt.weight": "decoder.body.0.weight",
                     **_batch_norm(f"main.initial:{top}:batchnorm", "decoder.body.1")}
    for stage in range(1, stages):
        width = top // 2 ** (stage - 1)
        decoder_names[f"main.pyramid:{width}-{width // 2}:convt.weight"] = f"decoder.body.{3 * stage}.weight"
        decoder_names.update(_batch_norm(f"main.pyramid:{width // 2}:batchnorm", f"decoder.body.{3 * stage + 1}"))
    decoder_names[f"main.final:{ngf}-{nc}:convt.weight"] = "decoder.head.weight"

    heads = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")
    for file, mapping, where, extra in ((encoder, names, where_e, heads), (decoder, decoder_names, where_g, ())):
        unused = [key for key in file if key not in mapping and key not in extra]
        if unused:
            raise ImportRefused(f"the {where} has keys of another layout ({', '.join(unused[:4])}"
                                f"{', ...' if len(unused) > 4 else ''}); {SUPPORTED}")
    ours = {mine: take(encoder, theirs, where_e) for theirs, mine in names.items()}
    ours.update({mine: take(decoder, theirs, where_g) for theirs, mine in decoder_names.items()})

    # One head for (mean, log_std): conv1 as it is, conv2 halved (log_std = logvar / 2, exactly).
    mean_w, mean_b, logvar_w, logvar_b = (take(encoder, key, where_e) for key in heads)
    if mean_w.shape != logvar_w.shape or mean_b.shape != logvar_b.shape:
        raise ImportRefused(f"the encoder's conv1 {tuple(mean_w.shape)} and conv2 {tuple(logvar_w.shape)} heads differ "
                            f"in shape; {SUPPORTED}")
    ours[f"encoder.net.{3 * stages}.weight"] = torch.cat([mean_w, logvar_w / 2])
    ours[f"encoder.net.{3 * stages}.bias"] = torch.cat([mean_b, logvar_b / 2])
    ours["decoder.head.bias"] = final.new_zeros(nc * N_LEVELS)  # Xiao's last layer has no bias

    image_size = 4 * 2**stages
    settings = {"in_channels": int(nc), "image_size": image_size, "base_channels": int(ngf),
                "latent_dim": int(nz), **XIAO_ENCODER}
    theirs = {mine: f"{ENCODER_FILE}'s {key}" for key, mine in names.items()}  # for the refusals
    theirs |= {mine: f"{DECODER_FILE}'s {key}" for key, mine in decoder_names.items()}
    theirs |= {f"encoder.net.{3 * stages}.{p}": f"{ENCODER_FILE}'s conv1.{p} + conv2.{p}" for p in ("weight", "bias")}
    _check_shapes(ours, settings, theirs)
    return Converted(
        family="vae", model_settings=settings, state=ours, image_size=image_size,
        resize_small=nc == 1,  # Xiao's Fashion-MNIST models saw 28x28 images resized bilinearly to 32x32
        architecture={"layout": f"{REPOSITORY} DCGAN_VAE_pixel Encoder + DCGAN_G", "nc": int(nc), "ngf": int(ngf),
                      "nz": int(nz), "isize": image_size, "encoder": "conv + batch norm + ReLU, conv1/conv2 heads",
                      "decoder_head_bias": "none (set to 0)"},
    )


def _check_shapes(state: State, settings: dict, theirs: dict[str, str]) -> None:
    """Refuse, naming the file's key, a tensor whose shape is not the one the sizes read off the files give
    (built on the meta device: shapes only, no memory)."""
    from oodbench.models.families import build_model, model_config

    with torch.device("meta"):
        expected = build_model("vae", model_config("vae", settings, where="the converted model settings")).state_dict()
    for key, tensor in state.items():
        if key in expected and tensor.shape != expected[key].shape:
            raise ImportRefused(f"{theirs.get(key, key)} has shape {tuple(tensor.shape)}, not {tuple(expected[key].shape)} "
                                f"as a {settings['in_channels']}x{settings['image_size']}x{settings['image_size']} model "
                                f"with ngf {settings['base_channels']}, nz {settings['latent_dim']} has; {SUPPORTED}")


_DRIVE = "https://drive.google.com/drive/folders/1nX7PmSUq7APE4hTNzAjspIbgAxkChPuM"
_HOW = ("none: the README and code give no test bits/dim (the paper reports OOD-detection AUROCs); "
        "pass --reported-bpd to record one")
SOURCE = Source(
    name=NAME,
    repository=REPOSITORY,
    family="vae",
    files=2,
    description=f"the encoder ({ENCODER_FILE}) and decoder ({DECODER_FILE}) of Xiao et al. (2020)'s VAE, in any order",
    convert=convert,
    published={
        "fashionmnist": {"files": [ENCODER_FILE, DECODER_FILE], "bpd": None, "how": _HOW,
                         "where": f"the README's Google Drive folder ({_DRIVE}); also committed at saved_models/fmnist/ "
                                  "in ee170a2 and removed in 75814f1 (nc 1, ngf 32, nz 100, 32x32)"},
        "cifar10": {"files": [ENCODER_FILE, DECODER_FILE], "bpd": None, "how": _HOW,
                    "where": f"the README's Google Drive folder ({_DRIVE}); committed at saved_models/cifar/ in ee170a2 "
                             "and removed in 75814f1"},
    },
)
