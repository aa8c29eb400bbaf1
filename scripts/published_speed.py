"""Images/s of scoring at the released checkpoints' sizes (README, "Published models"): `log_prob_parts` in
float32 under no_grad, batch 64, 2 threads, random weights of the published shapes (the speed does not depend
on the values), median of 3 batches after one warm-up. Arguments: parts of case names to run (default all).

    .venv/bin/python scripts/published_speed.py [glow] [pixelcnn] [vae]
"""

from __future__ import annotations

import json
import sys
import time

import torch

from oodbench.models.families import build_model, model_config

BATCH, REPEATS = 64, 3
CASES = {
    "glow (y0ast, L3 K32 h512)": ("glow", dict(in_channels=3, levels=3, steps=32, hidden_channels=512)),
    "pixelcnn (pclucas14, 5x160, 10 mix)": ("pixelcnn", dict(in_channels=3, nr_resnet=5, nr_filters=160,
                                                             nr_logistic_mix=10, weight_norm=False)),
    "vae (Xiao, ngf 64, k=256)": ("vae", dict(in_channels=3, base_channels=64, latent_dim=100, iw_samples=256)),
    "vae (Xiao, ngf 64, k=1)": ("vae", dict(in_channels=3, base_channels=64, latent_dim=100, iw_samples=1)),
}


def images_per_second(family: str, settings: dict) -> tuple[float, int]:
    model = build_model(family, model_config(family, settings)).eval()
    x = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8)
    index = torch.arange(BATCH)
    times = []
    with torch.no_grad():
        for _ in range(REPEATS + 1):  # the first call also initialises Glow's actnorm
            noise = model.eval_noise(x, index, 0)
            start = time.perf_counter()
            model.log_prob_parts(x, noise)
            times.append(time.perf_counter() - start)
    median = sorted(times[1:])[REPEATS // 2]
    return BATCH / median, sum(p.numel() for p in model.parameters())


def main(only: list[str]) -> None:
    torch.set_num_threads(2)
    out = {}
    for name, (family, settings) in CASES.items():
        if only and not any(part in name for part in only):
            continue
        rate, n_params = images_per_second(family, settings)
        out[name] = {"params_M": round(n_params / 1e6, 2), "images_per_s": round(rate, 1)}
        print(name, out[name], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
