"""The model's own samples: n images drawn from a trained model with a seeded generator, as uint8 pixels
that are scored like any image set (Kamkari et al., ICML 2024, "A Geometric Explanation of the Likelihood
OOD Detection Paradox": their tables put a model's own samples against the OOD set, where raw
likelihood fails as it does on real test images; Nalisnick et al. 2019 judge a model by its samples too).

Each family draws with its own sampler (models/):
- Glow and CV-Glow: every latent from its prior at temperature T, decoded (`Glow.sample`); the flow's y
  in [0, 1) becomes pixels by `to_pixels`. T = 1 draws from the density whose likelihoods are compared;
  the Glow paper shows T = 0.7 because lower temperatures look cleaner, which samples another
  distribution (the prior's mass pulled towards its mode), so it is a setting, not the default.
- PixelCNN++: pixel by pixel in raster order, H * W network passes per batch (`PixelCNN.sample`).
- the VAE: z from the prior, then x from the decoder's 256-way categorical (`VAE.sample`).
- the diffusion model: ancestral sampling from z_1 ~ N(0, I) in `sample_steps` denoiser passes, then its
  decoder at t = 0 (`Diffusion.sample`).
A family without a sampler here (a plugin's) has none: `sampler_of` says None.
`compare` puts the samples' bits/dim beside the test and OOD sets' (means, AUROCs); it never sees a model.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from oodbench.errors import OodbenchError
from oodbench.metrics import auroc_interval, ood_metrics
from oodbench.models.diffusion import Diffusion
from oodbench.models.glow import Glow
from oodbench.models.pixelcnn import PixelCNN
from oodbench.models.vae import VAE
from oodbench.units import N_LEVELS

SAMPLERS = {Glow: "glow", PixelCNN: "pixelcnn", VAE: "vae", Diffusion: "diffusion"}


def sampler_of(model: torch.nn.Module) -> str | None:
    """"glow", "pixelcnn", "vae" or "diffusion": how `model` is sampled; None for a model this module cannot sample."""
    return next((name for cls, name in SAMPLERS.items() if isinstance(model, cls)), None)


def to_pixels(y: torch.Tensor) -> torch.Tensor:
    """A flow's y to uint8 pixels: the x whose dequantization bin [x/256, (x+1)/256) holds y, i.e. the
    inverse of data/quantize.dequantize; a sample outside [0, 1) (a flow's tails) goes to the edge bin."""
    return torch.floor(y.float() * N_LEVELS).clamp(0, N_LEVELS - 1).to(torch.uint8)


@torch.no_grad()
def draw_samples(model: torch.nn.Module, n: int, *, image_shape: tuple[int, int, int], temperature: float = 1.0,
                 seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """`n` uint8 images (n, C, H, W) on the CPU drawn from `model` on its own device, in batches of
    `batch_size`, the same for the same seed on the same device; `temperature` is Glow's (the others
    sample their model as it is)."""
    kind = sampler_of(model)
    if kind is None:
        raise OodbenchError(f"a {type(model).__name__} has no sampler here (analysis/samples.py samples Glow, "
                            "PixelCNN++, the VAE and the diffusion model)")
    if n < 1 or batch_size < 1:
        raise OodbenchError(f"bad sample count {n} or batch size {batch_size}: both must be at least 1")
    device = next(model.parameters()).device
    size = tuple(image_shape[1:])
    # Samples come from the trained function: no dropout (PixelCNN++), running batch-norm statistics (the VAE).
    was_training = model.training
    model.eval()
    try:
        images = _draw(model, kind, n, size, temperature, seed, batch_size, device)
    finally:
        model.train(was_training)
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise OodbenchError(f"the model drew {tuple(images.shape[1:])} images, not {tuple(image_shape)}")
    return images


def _draw(model: torch.nn.Module, kind: str, n: int, size: tuple[int, ...], temperature: float, seed: int,
          batch_size: int, device: torch.device) -> torch.Tensor:
    batches = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    if kind == "glow":
        # Glow's priors draw from the global generator: seed a private copy of it, left as it was after.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            drawn = [to_pixels(model.sample(b, temperature, image_size=size)) for b in batches]
    elif kind == "pixelcnn":
        generator = torch.Generator(device=device).manual_seed(seed)  # its draws are made on the model's device
        drawn = [model.sample(b, image_size=size, generator=generator) for b in batches]
    else:
        generator = torch.Generator().manual_seed(seed)  # the VAE and the diffusion model draw on the CPU
        drawn = [model.sample(b, generator=generator) for b in batches]
    return torch.cat(drawn).cpu().contiguous()


def grid_rows(n: int) -> int:
    """Images per row of a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def compare(samples_bpd, in_test_bpd, ood_bpd) -> dict[str, float]:
    """Bits/dim of the model's samples, its in-distribution test images and the OOD images (mean, std, n),
    and the likelihood's AUROC (score = bits/dim, larger = more OOD, the second set positive) of each
    pairing: samples vs OOD (Kamkari et al.'s check: at or below 0.5 the OOD set is rated at least as likely
    as what the model itself generates), in-test vs OOD (the evaluation's), in-test vs samples (above 0.5:
    the samples get more bits/dim than real test images); each AUROC with DeLong's 95% interval."""
    sets = {"samples": samples_bpd, "in_test": in_test_bpd, "ood": ood_bpd}
    values = {name: np.asarray(bpd, dtype=np.float64).ravel() for name, bpd in sets.items()}
    row: dict[str, float] = {}
    for name, bpd in values.items():
        row[f"bpd_{name}_mean"] = float(bpd.mean())
        row[f"bpd_{name}_std"] = float(bpd.std(ddof=1)) if bpd.size > 1 else float("nan")
        row[f"n_{name}"] = int(bpd.size)
    for in_name, out_name in (("samples", "ood"), ("in_test", "ood"), ("in_test", "samples")):
        label = f"auroc_{in_name}_vs_{out_name}"
        row[label] = ood_metrics(values[in_name], values[out_name]).auroc
        row[f"{label}_low"], row[f"{label}_high"] = auroc_interval(values[in_name], values[out_name])
    return row
