"""Speed and memory benchmark of the model families -> one JSON file (`make bench`).

For each family: training images/s (forward, mean bits/dim loss, backward, Adam step) at one batch
size, evaluation images/s under `torch.no_grad()` and `torch.inference_mode()` at several batch
sizes, and peak memory. Timings are medians over `--steps` timed steps after `--warmup` untimed
ones. Inputs are random 8-bit images; the models' data-dependent initialisation runs first, untimed.
Each measurement also records the model's floating-point work per image (torch's FlopCounterMode:
convolutions and matrix products) and the rate that implies, `achieved_gflops`, to compare with what
the hardware's convolutions reach at best.

Two sizes (`--size`). `bench` (the default): Glow and CV-Glow at L=3, K=8, 128 hidden on 3x32x32;
PixelCNN++ at nr_resnet=1, 64 filters, 10 mixtures on 3x32x32; the VAE (1.34M parameters) with its
single-sample bound (`vae`) and IWAE-16 (`vae-iwae16`); the sizes issue 3 gives reference speeds for;
and the diffusion family at its CPU default (`diffusion`, 1.5M parameters, its bound from 32 U-Net passes).
`paper`: each family of the `paper` profile in benchmarks.yaml (`--config`) at the size written there
(Glow K=32, L=3, 512 hidden; PixelCNN++ nr_resnet=5, 160 filters; the VAE of Xiao et al.) on 3x32x32,
and the VAE also scored with the profile's k (`vae-iwae256`): the sizes GPUs are for.

Add a family by registering a `BenchSpec` (a builder and an input maker) in `BENCHES`; every family
is measured by the same `measure` function, on the CPU or a GPU alike.

    python scripts/bench.py --out bench.json [--device cuda] [--size paper] [--steps 10]
                            [--families glow,cv-glow] [--precision 32-true,bf16-mixed] [--compile off,on]

Training is measured at each (precision, compile) pair asked for (`train_variants`, each on a fresh model
with the same seed and with its speed relative to the first; `train` is the first): `make bench` asks for
fp32 and bf16-mixed, eager and compiled, the table of issue 23 and the README's speed section. A CPU
without bf16 matrix units (AMX or AVX512-BF16) would emulate bf16, slower than fp32: in a list its rows
are skipped and `skipped` says why; alone, `--precision bf16-mixed` is refused as `oodbench train` refuses it.

On a GPU (`--device cuda`) each measurement also records the peak GPU memory of its timed steps
(`cuda_peak_mib`: torch.cuda.max_memory_allocated: weights, gradients, Adam's moments, activations),
the TF32 settings it ran under (`cuda_tf32`: by torch's default cuDNN convolutions run float32 work in
TF32, so "fp32" there is what `oodbench train --precision 32-true` gets), and how far one batch's
bits/dim under those settings lies from strict float32 (`eval.tf32.max_abs_bpd_difference`): the float32
that evaluation, here as in oodbench (`float32_likelihood`), always runs in.

A roofline in the same run: the machine's fp32 and bf16 throughput on a matrix product (2048^3) and on
a 3x3 convolution of Glow's hidden shape (batch 64, 128 -> 128 channels, 16x16), measured before and
after the families (`roofline`: GFLOP/s of each, FLOPs counted by FlopCounterMode like the families');
each family's `achieved_gflops` is also given as a fraction of the peaks of the dtype it ran in
(`fraction_of_peak`): fp32, or for training under bf16-mixed (bf16 autocast, as
`oodbench train --precision bf16-mixed` runs it) the bf16 peaks. Evaluation always runs in fp32.
Peaks that moved between before and after (`roofline.drift`, after / before) mark a noisy run.

The JSON is rewritten after each family (`"complete": false`, the families so far), so a run stopped by
a time limit keeps what it measured; `"complete": true` once the roofline after them is in.

The machine is shared: other processes on the CPU inflate every number here. The JSON records the
load average before and after, so a noisy run can be recognised (and repeated).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from torch.utils.flop_counter import FlopCounterMode

from oodbench.config import DEFAULT_BENCHMARKS, load_profile
from oodbench.errors import OodbenchError
from oodbench.machine import cpu_model
from oodbench.models.base import LikelihoodModel
from oodbench.models.diffusion import Diffusion, DiffusionConfig
from oodbench.models.families import build_model, model_config
from oodbench.models.glow import Glow, GlowConfig
from oodbench.models.module import float32_likelihood, make_optimizer, training_objective
from oodbench.models.pixelcnn import PixelCNN, PixelCNNConfig
from oodbench.models.vae import VAE, VAEConfig
from oodbench.runner.lightning import check_precision, tune_glibc_malloc
from oodbench.units import bits_per_dim

THREADS = 2  # the target machine: 2 CPU cores
LR = 1e-4  # small, so that random-noise "data" cannot make training diverge mid-benchmark


@dataclass(frozen=True)
class BenchSpec:
    """What to build and what to feed it: uint8 images (B, C, H, W) on a device."""

    description: str
    build: Callable[[], LikelihoodModel]
    make_input: Callable[[int, torch.device, torch.Generator], torch.Tensor]
    config: dict
    eval_batches: tuple[int, ...] | None = None  # instead of --eval-batches, for a family slow to score


def _images(channels: int, size: int):
    def make(batch: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=generator).to(device)

    return make


def _spec(description: str, build: Callable[[], LikelihoodModel], config, size: int,
          eval_batches: tuple[int, ...] | None = None) -> BenchSpec:
    """A family's bench entry: `config` is its config dataclass, inputs are in_channels x size x size."""
    shape = [config.in_channels, size, size]
    return BenchSpec(description=f"{description}, on {'x'.join(map(str, shape))}", build=build,
                     make_input=_images(config.in_channels, size),
                     config={**dataclasses.asdict(config), "input_shape": shape}, eval_batches=eval_batches)


def _glow_spec(config: GlowConfig, size: int = 32) -> BenchSpec:
    return _spec(f"Glow ({config.coupling} coupling), L={config.levels}, K={config.steps}, "
                 f"hidden {config.hidden_channels}", lambda: Glow(config), config, size)


def _pixelcnn_spec(config: PixelCNNConfig, size: int = 32) -> BenchSpec:
    return _spec(f"PixelCNN++, nr_resnet={config.nr_resnet}, {config.nr_filters} filters, "
                 f"{config.nr_logistic_mix} logistic mixtures", lambda: PixelCNN(config), config, size)


def _vae_spec(config: VAEConfig, eval_batches: tuple[int, ...] | None = None) -> BenchSpec:
    return _spec(f"VAE (DCGAN-style, 256-way categorical decoder), {config.base_channels} base channels, "
                 f"latent {config.latent_dim}, scored with k={config.iw_samples}", lambda: VAE(config), config,
                 config.image_size, eval_batches)


BENCHES: dict[str, BenchSpec] = {
    # the reference size for speed targets: L=3, K=8, hidden 128 on CIFAR-shaped images
    "glow": _glow_spec(GlowConfig(in_channels=3, levels=3, steps=8, hidden_channels=128)),
    "cv-glow": _glow_spec(GlowConfig(in_channels=3, levels=3, steps=8, hidden_channels=128, coupling="additive")),
    # GlowConfig's CPU default on Fashion-MNIST-shaped images
    "glow-default-1ch": _glow_spec(GlowConfig(in_channels=1)),
    # issue 3's reference size (public PyTorch code: ~10 img/s training, ~33 img/s evaluation at batch 64)
    "pixelcnn": _pixelcnn_spec(PixelCNNConfig(in_channels=3, nr_resnet=1, nr_filters=64, nr_logistic_mix=10)),
    # issue 3's reference: ~1.3M parameters (public code: ~50 img/s training, ~115 img/s single-sample bound)
    "vae": _vae_spec(VAEConfig(in_channels=3, iw_samples=1)),
    # the same VAE scored with IWAE-16 (the quick profile's k): k decodes per image
    "vae-iwae16": _vae_spec(VAEConfig(in_channels=3, iw_samples=16), eval_batches=(64,)),
    # the diffusion family's CPU default (the quick profile's size): training takes one time point per image,
    # scoring K = 32 U-Net passes per image
    "diffusion": _spec("Diffusion (VDM bound, diffusers U-Net 32 x (1, 2, 2, 2), attention at 8x8), scored with K=32",
                       lambda: Diffusion(DiffusionConfig(in_channels=3)), DiffusionConfig(in_channels=3), 32,
                       eval_batches=(64,)),
}
PAPER_SHAPE = (3, 32, 32)  # CIFAR-10, the paper profile's first in-distribution set
SIZES = ("bench", "paper")


def paper_benches(config: Path = DEFAULT_BENCHMARKS) -> dict[str, BenchSpec]:
    """Each family of the `paper` profile in `config`, at the size written there (read, not typed twice),
    on 3x32x32; the VAE with its single-sample bound and, as `vae-iwae<k>`, with the profile's k."""
    profile = load_profile("paper", config)
    where = f"{config} (profile 'paper')"
    specs: dict[str, BenchSpec] = {}
    for family, settings in profile.models.items():
        cfg = model_config(family, settings, image_shape=PAPER_SHAPE, where=where)
        if isinstance(cfg, GlowConfig):
            specs[family] = _glow_spec(cfg, PAPER_SHAPE[1])
        elif isinstance(cfg, PixelCNNConfig):
            specs[family] = _pixelcnn_spec(cfg, PAPER_SHAPE[1])
        elif isinstance(cfg, VAEConfig):
            specs[family] = _vae_spec(dataclasses.replace(cfg, iw_samples=1))
            k = profile.eval_for(family).iw_samples or cfg.iw_samples
            if k > 1:
                specs[f"{family}-iwae{k}"] = _vae_spec(dataclasses.replace(cfg, iw_samples=k), eval_batches=(64,))
        else:  # a family bench.py has no description for yet: measured all the same
            specs[family] = _spec(family, lambda family=family, cfg=cfg: build_model(family, cfg), cfg, PAPER_SHAPE[1])
    return specs


def benches(size: str, config: Path = DEFAULT_BENCHMARKS) -> dict[str, BenchSpec]:
    """The families measured at `size`: "bench" (fixed reference sizes, `BENCHES`) or "paper" (benchmarks.yaml)."""
    if size not in SIZES:
        raise OodbenchError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    return BENCHES if size == "bench" else paper_benches(config)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _timed(step: Callable[[], None], device: torch.device, *, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _rate(batch: int, seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"batch_size": batch, "images_per_s": batch / median, "median_step_s": median,
            "min_step_s": min(seconds), "max_step_s": max(seconds), "timed_steps": len(seconds)}


def _cuda_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_tf32() -> dict[str, bool]:
    """Whether float32 convolutions (cuDNN) and matrix products (cuBLAS) may run in TF32 on a GPU."""
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32), "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def _tf32_deviation(model: LikelihoodModel, x: torch.Tensor) -> dict:
    """The largest |bits/dim| difference, over one batch, between scoring under the training step's TF32
    settings (`cuda_tf32`) and in strict float32 (`float32_likelihood`, as every reported likelihood is
    scored), with the same index-seeded noise: what scoring would lose if it let TF32 in."""
    n_dims = math.prod(x.shape[1:])
    noise = model.eval_noise(x, torch.arange(x.shape[0], device=x.device), 0)
    with torch.inference_mode():
        current = bits_per_dim(model.log_prob(x, noise), n_dims)
        with float32_likelihood(x.device):
            strict = bits_per_dim(model.log_prob(x, noise), n_dims)
    return {**cuda_tf32(), "batch_size": x.shape[0], "max_abs_bpd_difference": float((current - strict).abs().max())}


def _gflop_per_image(model: LikelihoodModel, x: torch.Tensor, *, train: bool) -> float:
    """Forward (and, for training, backward) floating-point operations per image, in GFLOP."""
    with FlopCounterMode(display=False) as counter:
        if train:
            model.training_log_prob(x).sum().backward()
        else:
            with torch.no_grad():
                model.log_prob(x)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0] / 1e9


MATMUL_N = 2048
CONV_SHAPE = (64, 128, 16, 16)  # Glow L=3, K=8, h=128 on 3x32x32: the first level's coupling networks
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The training precisions measured (Lightning's names) -> the dtype whose peaks are their ceiling.
PRECISIONS = {"32-true": "fp32", "bf16-mixed": "bf16"}


def _kernels(device: torch.device, dtype: torch.dtype, generator: torch.Generator, *, matmul_n: int,
             conv_shape: tuple[int, int, int, int]) -> dict[str, Callable[[], torch.Tensor]]:
    a = torch.randn(matmul_n, matmul_n, generator=generator).to(device, dtype)
    b = torch.randn(matmul_n, matmul_n, generator=generator).to(device, dtype)
    x = torch.randn(*conv_shape, generator=generator).to(device, dtype)
    w = (torch.randn(conv_shape[1], conv_shape[1], 3, 3, generator=generator) * 0.05).to(device, dtype)
    return {"matmul": lambda: a @ b, "conv3x3": lambda: F.conv2d(x, w, padding=1)}


def roofline(device: torch.device, *, steps: int, warmup: int, matmul_n: int = MATMUL_N,
             conv_shape: tuple[int, int, int, int] = CONV_SHAPE) -> dict:
    """GFLOP/s of a matrix product and a 3x3 convolution in fp32 and bf16 on `device` (median of `steps`)."""
    generator = torch.Generator().manual_seed(0)
    peaks = {}
    for label, dtype in PEAK_DTYPES.items():
        for kernel, run in _kernels(device, dtype, generator, matmul_n=matmul_n, conv_shape=conv_shape).items():
            with FlopCounterMode(display=False) as counter:
                run()
            seconds = statistics.median(_timed(run, device, steps=steps, warmup=warmup))
            peaks[f"{label}_{kernel}"] = {"gflop": counter.get_total_flops() / 1e9, "median_s": seconds,
                                          "gflops": counter.get_total_flops() / seconds / 1e9}
    return peaks


def fraction_of_peak(achieved_gflops: float, peaks: dict, *, dtype: str = "fp32") -> dict:
    """A family's achieved GFLOP/s over each peak of the dtype its matrix work ran in (its ceiling)."""
    return {name: achieved_gflops / peak["gflops"] for name, peak in peaks.items() if name.startswith(f"{dtype}_")}


def measure_training(spec: BenchSpec, *, device: torch.device, steps: int, warmup: int, batch: int, seed: int = 0,
                     precision: str = "32-true", compile: bool = False) -> tuple[dict, LikelihoodModel]:
    """Training throughput of one family at one setting, on a freshly built model (the same seed, so every
    setting starts from the same weights): forward of the training objective (the ELBO for a VAE), mean
    bits/dim, backward, Adam step. `precision` is Lightning's name ("32-true", or "bf16-mixed" = bf16
    autocast, as `oodbench train` runs it); `compile` puts the objective through torch.compile as
    `oodbench train --compile` does (models/module.training_objective; the warm-up steps pay the compilation).
    Returns the measurement and the trained-a-little model."""
    if device.type == "cuda":  # the previous measurement's tensors are not this one's peak
        gc.collect()
        torch.cuda.empty_cache()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = spec.build().to(device)
    x_train = spec.make_input(batch, device, generator)
    n_dims = math.prod(x_train.shape[1:])
    with torch.no_grad():
        model.training_log_prob(x_train)  # data-dependent initialisation (actnorm), as training does first
    model.train()
    optimizer = make_optimizer(model.parameters(), "adam", lr=LR, precision=precision)  # as `oodbench train` steps
    objective = training_objective(model, compile=compile)
    losses = []

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = bits_per_dim(objective(x_train), n_dims).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    _reset_cuda_peak(device)
    compile_seconds = None
    if compile:  # the first step compiles: timed on its own, not inside the warm-up's
        start = time.perf_counter()
        train_step()
        compile_seconds = time.perf_counter() - start
    train = _rate(batch, _timed(train_step, device, steps=steps, warmup=warmup))
    train["cuda_peak_mib"] = _cuda_peak_mib(device)  # of the timed steps, before the FLOP count below
    train["precision"] = precision
    train["compile"] = compile
    train["first_step_with_compilation_s"] = compile_seconds
    train["final_loss_bpd"] = float(losses[-1])
    train["gflop_per_image"] = _gflop_per_image(model, x_train[:2], train=True)
    train["achieved_gflops"] = train["gflop_per_image"] * train["images_per_s"]
    train["max_rss_mib_so_far"] = _max_rss_mib()
    optimizer.state.clear()  # Adam's moments are not needed for evaluation
    model.zero_grad(set_to_none=True)
    return train, model


def measure(spec: BenchSpec, *, device: torch.device, steps: int, warmup: int, train_batch: int,
            eval_batches: list[int], seed: int = 0,
            variants: tuple[tuple[str, bool], ...] = (("32-true", False),)) -> dict:
    """Training throughput at each (precision, compile) of `variants`, and evaluation throughput and peak
    memory, of one family. `train` is the first variant's measurement, `train_variants` all of them, each with
    its speed relative to the first. Evaluation always runs in float32 with autocast off, as every reported
    likelihood is computed, on the first variant's model."""
    trains, model = [], None
    for variant_precision, variant_compile in variants:
        train, trained = measure_training(spec, device=device, steps=steps, warmup=warmup, batch=train_batch,
                                          seed=seed, precision=variant_precision, compile=variant_compile)
        train["speedup_vs_first"] = train["images_per_s"] / trains[0]["images_per_s"] if trains else 1.0
        trains.append(train)
        model = trained if model is None else model
    n_params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed + 1)
    x_sample = spec.make_input(min(64, train_batch), device, generator)

    # Evaluation: per-sample log-likelihood only, no autograd graph.
    model.eval()
    eval_gflop = _gflop_per_image(model, x_sample[:2], train=False)
    evaluation = {"gflop_per_image": eval_gflop}
    for mode, context in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        rates = []
        for batch in spec.eval_batches or eval_batches:
            x_eval = spec.make_input(batch, device, generator)
            _reset_cuda_peak(device)

            def eval_step(x_eval=x_eval, context=context) -> None:
                with context(), float32_likelihood(device):  # as oodbench scores: strict float32
                    model.log_prob(x_eval)

            rate = _rate(batch, _timed(eval_step, device, steps=steps, warmup=warmup))
            rate["cuda_peak_mib"] = _cuda_peak_mib(device)
            rate["achieved_gflops"] = eval_gflop * rate["images_per_s"]
            rates.append(rate)
        best = max(rates, key=lambda r: r["images_per_s"])
        evaluation[mode] = {"by_batch_size": rates, "best": {"batch_size": best["batch_size"],
                                                            "images_per_s": best["images_per_s"],
                                                            "cuda_peak_mib": best["cuda_peak_mib"]}}
    if device.type == "cuda":
        evaluation["tf32"] = _tf32_deviation(model, x_sample)
    return {
        "description": spec.description,
        "config": spec.config,
        "parameters": n_params,
        "train": trains[0],
        "train_variants": trains,
        "eval": evaluation,
        "memory": {"max_rss_mib_so_far": _max_rss_mib(),
                   "note": "process peak resident set so far (torch libraries and earlier families included)"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="where to write the JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--size", choices=SIZES, default="bench",
                        help="bench: the fixed reference sizes; paper: benchmarks.yaml's paper profile (for GPUs)")
    parser.add_argument("--config", type=Path, default=DEFAULT_BENCHMARKS,
                        help="benchmarks.yaml holding the paper profile (--size paper)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--families", default=None,
                        help=f"comma-separated (default: every family of --size); bench: {', '.join(BENCHES)}; "
                        "paper: those of the paper profile")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--eval-batches", default="64,128,256", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--precision", default="32-true",
                        help="the training step's precisions, comma-separated: 32-true, bf16-mixed (evaluation is "
                             "always float32). Alone, a bf16 this machine would emulate is refused; in a list, its "
                             "rows are skipped and the JSON says why")
    parser.add_argument("--compile", default="off",
                        help="off, on, or off,on: train eagerly and/or through torch.compile (oodbench train --compile)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (see tune_glibc_malloc)")
    args = parser.parse_args(argv)

    try:
        specs = benches(args.size, args.config)
    except OodbenchError as exc:
        parser.error(str(exc))
    families = [name.strip() for name in (args.families or ",".join(specs)).split(",") if name.strip()]
    unknown = [name for name in families if name not in specs]
    if unknown:
        parser.error(f"unknown families {unknown} at --size {args.size}; valid: {', '.join(specs)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    precisions = list(dict.fromkeys(p.strip() for p in args.precision.split(",") if p.strip()))
    compiles = list(dict.fromkeys(c.strip() for c in args.compile.split(",") if c.strip()))
    if not precisions or any(p not in PRECISIONS for p in precisions):
        parser.error(f"--precision {args.precision!r}: expected a comma-separated list of {', '.join(PRECISIONS)}")
    if not compiles or any(c not in ("off", "on") for c in compiles):
        parser.error(f"--compile {args.compile!r}: expected off, on, or off,on")
    skipped = {}
    accelerator = CUDAAccelerator() if device.type == "cuda" else CPUAccelerator()
    for precision in list(precisions):
        try:  # the test `oodbench train` makes: no emulated bf16
            check_precision(accelerator, precision)
        except OodbenchError as exc:
            if len(precisions) == 1:
                parser.error(str(exc))
            skipped[precision] = str(exc)
            precisions.remove(precision)
            print(f"skipping {precision}: {exc}", file=sys.stderr)
    variants = [(precision, compile == "on") for precision in precisions for compile in compiles]
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    malloc_tuned = False if args.default_malloc else tune_glibc_malloc()
    torch.set_num_threads(args.threads)
    eval_batches = [int(b) for b in args.eval_batches.split(",")]
    header = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cuda_total_mib": torch.cuda.get_device_properties(device).total_memory / 2**20 if device.type == "cuda" else None,
        "cuda_tf32": cuda_tf32() if device.type == "cuda" else None,
        "size": args.size,
        "config": str(args.config) if args.size == "paper" else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "malloc": "glibc tuned (mmap threshold 32 MiB, no trim)" if malloc_tuned else "default",
        "train_precision": precisions[0],
        "train_variants": [{"precision": p, "compile": c} for p, c in variants],
        "skipped": skipped,
        "steps": args.steps,
        "warmup": args.warmup,
        "optimizer": f"oodbench's make_optimizer('adam', lr={LR}) (fused Adam in fp32 where torch has the kernel)",
        "load_average_before": os.getloadavg(),
    }
    print(f"measuring this machine's peaks on {device} ...", file=sys.stderr, flush=True)
    peaks_before = roofline(device, steps=args.steps, warmup=args.warmup)
    results = {}
    for name in families:
        print(f"benchmarking {name} on {device} ...", file=sys.stderr, flush=True)
        results[name] = measure(specs[name], device=device, steps=args.steps, warmup=args.warmup,
                                train_batch=args.train_batch, eval_batches=eval_batches, variants=variants)
        evaluation = results[name]["eval"]["inference_mode"]
        for variant in results[name]["train_variants"]:
            print(f"  train {variant['precision']}{' compiled' if variant['compile'] else ''}: "
                  f"{variant['images_per_s']:.1f} img/s at batch {variant['batch_size']} "
                  f"({variant['speedup_vs_first']:.2f}x the first)", file=sys.stderr)
        print(f"  eval best {evaluation['best']['images_per_s']:.1f} img/s at batch {evaluation['best']['batch_size']}",
              file=sys.stderr)
        # What is measured so far, in case the run is stopped (a time limit) before the end.
        _write_json(args.out, {**header, "complete": False, "roofline": {"peaks_before": peaks_before},
                               "families": results})
    peaks_after = roofline(device, steps=args.steps, warmup=args.warmup)
    peaks = {name: {"gflops": max(peaks_before[name]["gflops"], peaks_after[name]["gflops"]),
                    "before": peaks_before[name], "after": peaks_after[name]} for name in peaks_before}
    for result in results.values():
        for variant in result["train_variants"]:  # `train` is the first of them: the same dict
            variant["fraction_of_peak"] = fraction_of_peak(variant["achieved_gflops"], peaks,
                                                           dtype=PRECISIONS[variant["precision"]])
        for mode in ("no_grad", "inference_mode"):
            for rate in result["eval"][mode]["by_batch_size"]:
                rate["fraction_of_peak"] = fraction_of_peak(rate["achieved_gflops"], peaks)
    report = {
        **header,
        "complete": True,
        "load_average_after": os.getloadavg(),
        "roofline": {"peaks": peaks, "drift": {name: peaks_after[name]["gflops"] / peaks_before[name]["gflops"]
                                               for name in peaks_before},
                     "note": "best of before/after; drift = after / before (far from 1: a noisy run)"},
        "families": results,
    }
    _write_json(args.out, report)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _write_json(path: Path, content: dict) -> None:
    """Write `content` whole or not at all: a run killed mid-write keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
