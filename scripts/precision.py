"""fp32 against bf16-mixed training on the staged data: images/s and the final validation bits/dim after
the same steps (issue "Speed where it still lags", part 2). Every validation bits/dim is computed in
float32 whatever the training precision (models/module.py), so the two columns compare like with like.

    .venv/bin/python scripts/precision.py --data-root ../shared/data --out precision.json

Each (family, precision) trains a fresh run with `oodbench train` (same seed, data, steps), in turn, in
this process; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from oodbench.config import TrainConfig
from oodbench.runner.train import TrainRequest, train

# The quick profile's sizes (benchmarks.yaml), on CIFAR-10's staged training images.
FAMILIES = {
    "glow": ({"levels": 3, "steps": 4, "hidden_channels": 64}, 2000),
    "pixelcnn": ({"nr_resnet": 1, "nr_filters": 32, "nr_logistic_mix": 5}, 640),
}
PRECISIONS = ("32-true", "bf16-mixed")


def measure(family: str, precision: str, *, data_root: str, epochs: int, folder: Path) -> dict:
    settings, images = FAMILIES[family]
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, warmup_steps=50, val_size=200, limit_train=images,
                      precision=precision, seed=0, logger="none", accelerator="cpu")
    start = time.perf_counter()
    result = train(TrainRequest(model=family, dataset="cifar10", run_dir=folder / f"{family}-{precision}", train=cfg,
                                model_settings=settings, data_root=data_root, quiet=True))
    wall = time.perf_counter() - start
    return {"family": family, "precision": precision, "steps": result.steps, "train_seconds": round(result.seconds, 1),
            "images_per_s": round(result.steps * cfg.batch_size / result.seconds, 1), "wall_seconds": round(wall, 1),
            "val_bpd": round(result.val_bpd, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="precision.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for family in args.families.split(","):
            for precision in PRECISIONS:
                rows.append(measure(family, precision, data_root=args.data_root, epochs=args.epochs,
                                    folder=Path(scratch)))
                print(json.dumps(rows[-1]), flush=True)
    for family in {row["family"] for row in rows}:
        fp32, bf16 = (next(r for r in rows if r["family"] == family and r["precision"] == p) for p in PRECISIONS)
        print(f"{family}: bf16-mixed {bf16['images_per_s'] / fp32['images_per_s']:.2f}x the fp32 images/s; "
              f"validation bits/dim {bf16['val_bpd']:.4f} vs {fp32['val_bpd']:.4f} "
              f"({bf16['val_bpd'] - fp32['val_bpd']:+.4f}) after {fp32['steps']} steps")
    Path(args.out).write_text(json.dumps({"cpu_threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
