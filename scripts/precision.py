"""fp32 against bf16-mixed training on the staged data: images/s and the final validation bits/dim after
the same steps (issue 23's "within 0.02 bits/dim of fp32"). Every validation bits/dim is computed in
float32 whatever the training precision (models/module.py), so the two columns compare like with like.

    .venv/bin/python scripts/precision.py --data-root ../shared/data [--families glow,vae,pixelcnn,diffusion]
                                          [--epochs glow=6,vae=6,pixelcnn=4,diffusion=6] [--compile]
                                          [--seeds 0,1,2] [--out precision.json]

Each (family, precision) trains a fresh run with `oodbench train` on CIFAR-10 at the `quick` profile's size
and training settings (benchmarks.yaml: its model, its limit_train), seed 0 or each of `--seeds`, in turn, in
this process; nothing else should run on the machine meanwhile. `--compile` trains both through
torch.compile. Several seeds say how far the final bits/dim moves from seed to seed, the scale on which a
bf16 - fp32 difference means something.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from oodbench.config import DEFAULT_BENCHMARKS, load_profile, resolve
from oodbench.runner.train import TrainRequest, train

PRECISIONS = ("32-true", "bf16-mixed")
# Epochs per family: a few hundred steps where a step is fast, fewer for PixelCNN++ (README's speed section).
EPOCHS = {"glow": 6, "cv-glow": 6, "vae": 6, "pixelcnn": 4, "diffusion": 6}


def measure(family: str, precision: str, *, data_root: str, epochs: int, folder: Path, compile: bool = False,
            seed: int = 0) -> dict:
    profile = load_profile("quick", DEFAULT_BENCHMARKS)
    cfg = resolve(profile.train_for(family), dict(epochs=epochs, precision=precision, compile=compile, seed=seed,
                                                  logger="none", accelerator="cpu"))
    start = time.perf_counter()
    result = train(TrainRequest(model=family, dataset="cifar10", run_dir=folder / f"{family}-{precision}-{seed}", train=cfg,
                                model_settings=dict(profile.models.get(family, {})), data_root=data_root, quiet=True))
    wall = time.perf_counter() - start
    return {"family": family, "precision": precision, "compile": compile, "seed": seed, "steps": result.steps,
            "train_seconds": round(result.seconds, 1),
            "images_per_s": round(result.steps * cfg.batch_size / result.seconds, 1), "wall_seconds": round(wall, 1),
            "val_bpd": round(result.val_bpd, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", default="", help="FAMILY=N,... over the defaults " + str(EPOCHS))
    parser.add_argument("--families", default="glow,vae,pixelcnn,diffusion")
    parser.add_argument("--compile", action="store_true", help="train through torch.compile (train --compile)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds, each trained in both precisions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="precision.json")
    args = parser.parse_args()
    epochs = dict(EPOCHS)
    for item in filter(None, args.epochs.split(",")):
        family, _, count = item.partition("=")
        if family not in EPOCHS or not count.isdigit():
            parser.error(f"--epochs {item!r}: expected FAMILY=N with FAMILY one of {', '.join(EPOCHS)}")
        epochs[family] = int(count)
    families = [f for f in args.families.split(",") if f]
    if any(f not in EPOCHS for f in families):
        parser.error(f"--families {args.families!r}: valid: {', '.join(EPOCHS)}")
    if not all(s.isdigit() for s in args.seeds.split(",")):
        parser.error(f"--seeds {args.seeds!r}: expected non-negative integers separated by commas")
    seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))  # a repeated seed would reuse its run folder
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for family in families:
            for seed in seeds:
                for precision in PRECISIONS:
                    rows.append(measure(family, precision, data_root=args.data_root, epochs=epochs[family],
                                        folder=Path(scratch), compile=args.compile, seed=seed))
                    print(json.dumps(rows[-1]), flush=True)
    for family in families:
        for seed in seeds:
            fp32, bf16 = (next(r for r in rows if (r["family"], r["seed"], r["precision"]) == (family, seed, p))
                          for p in PRECISIONS)
            print(f"{family} seed {seed}: bf16-mixed {bf16['images_per_s'] / fp32['images_per_s']:.2f}x the fp32 "
                  f"images/s; validation bits/dim {bf16['val_bpd']:.4f} vs {fp32['val_bpd']:.4f} "
                  f"({bf16['val_bpd'] - fp32['val_bpd']:+.4f}) after {fp32['steps']} steps")
    Path(args.out).write_text(json.dumps({"cpu_threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
