"""Compare the two likelihood-regret variants (Xiao, Yan & Amit 2020) on one trained VAE run -> JSON on stdout.

`posterior_regret` refits each image's posterior mean and log-std (batched, fast); `encoder_regret`
refits a copy of the encoder per image (the paper's variant, slow). For the first n test images of
IN and of OUT, each variant reports the AUROC of regret as an OOD score (OOD the positive class,
larger regret = more OOD), the mean regret per set in nats, and its wall-clock seconds. Both variants
see the same fixed latent draws (seeded).

    python scripts/regret_variants.py --run runs/vae-cifar10-seed0 --pair cifar10:svhn --n 200 \\
        --data-root /work/shared/data [--steps 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from oodbench.data import load_images, match_channels, parse_pair
from oodbench.models.vae import VAE
from oodbench.models.vae.regret import encoder_regret, posterior_regret
from oodbench.runner.run_loading import load_module
from oodbench.runner.layout import RunPaths


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained oodbench VAE run folder")
    parser.add_argument("--pair", required=True, help="IN:OUT, e.g. cifar10:svhn")
    parser.add_argument("--n", type=int, default=200, help="test images per set")
    parser.add_argument("--steps", type=int, default=20, help="Adam steps of each refit")
    parser.add_argument("--posterior-lr", type=float, default=0.1)
    parser.add_argument("--encoder-lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=50, help="images per posterior refit (memory)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed latent draws")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def load_vae(run: Path, device: str) -> VAE:
    module, _ = load_module(RunPaths(run).checkpoint("best"))
    if not isinstance(module.model, VAE):
        raise SystemExit(f"{run} is a {module.family} run; likelihood regret needs a VAE")
    return module.model.float().to(device).eval()


def images(name: str, vae: VAE, n: int, data_root: str | None) -> torch.Tensor:
    return match_channels(load_images(name, "test", data_root=data_root, limit=n), vae.config.in_channels).images


def main() -> None:
    args = parse_args()
    pair = parse_pair(args.pair)
    vae = load_vae(args.run, args.device)
    sets = [images(ref.name, vae, args.n, args.data_root) for ref in (pair.in_ref, pair.out_ref)]
    x = torch.cat(sets).to(args.device)
    is_ood = [0] * len(sets[0]) + [1] * len(sets[1])
    eps = torch.randn(len(x), vae.config.latent_dim, generator=torch.Generator().manual_seed(args.seed)).to(args.device)

    def chunks(size: int):
        return zip(x.split(size), eps.split(size), strict=True)

    variants = {
        "posterior": (lambda xb, eb: posterior_regret(vae, xb, eb, steps=args.steps, lr=args.posterior_lr), args.batch),
        # encoder_regret refits one image at a time anyway; the chunks only bound what is held at once.
        "encoder": (lambda xb, eb: encoder_regret(vae, xb, eb, steps=args.steps, lr=args.encoder_lr), args.batch),
    }
    report: dict[str, object] = {"run": str(args.run), "pair": str(pair), "n": [len(s) for s in sets], "steps": args.steps}
    for name, (variant, size) in variants.items():
        start = time.perf_counter()
        regret = torch.cat([variant(xb, eb)["regret"].cpu() for xb, eb in chunks(size)])
        seconds = time.perf_counter() - start
        report[name] = {
            "auroc": float(roc_auc_score(is_ood, regret.numpy())),
            "mean_regret_nats": {"in": regret[: len(sets[0])].mean().item(), "out": regret[len(sets[0]):].mean().item()},
            "seconds": round(seconds, 2),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
