"""A randomised checkpoint in y0ast/Glow-PyTorch's released layout, for trying `oodbench import` and timing an
imported paper-size Glow where the real file is not at hand (scripts/gpu_check.sh's import step).

The keys and shapes are the ones the converter checks a file against (published/glow.layout), at the size of
a profile's Glow (benchmarks.yaml's `paper`: L=3, K=32, 512 hidden, the released model's); the values are
small random numbers around a near-identity flow (identity permutations, positive signs, a zero prior_h as
y0ast's buffer is), so that its likelihoods are finite. Not a trained model: its bits/dim mean nothing.

    python scripts/random_release.py OUT.pt [--profile paper] [--config benchmarks.yaml] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from oodbench.config import load_profile
from oodbench.published.glow import layout


def random_state(arch: dict, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout(arch).items():
        if key.endswith("invconv.p"):
            value = torch.eye(shape[0])
        elif key.endswith("invconv.sign_s"):
            value = torch.ones(shape)
        elif key == "prior_h":
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=generator) * 0.02
        state[key] = value
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--config", default="benchmarks.yaml")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    glow = load_profile(args.profile, args.config).models.get("glow", {})
    arch = {"in_channels": 3, "levels": glow.get("levels", 3), "steps": glow.get("steps", 32),
            "hidden_channels": glow.get("hidden_channels", 512), "coupling": "affine", "learn_top": True,
            "LU_decomposed": True, "image_size": 32}
    torch.save(random_state(arch, args.seed), args.out)
    print(f"wrote {args.out}: a random y0ast Glow, {arch}")


if __name__ == "__main__":
    main()
