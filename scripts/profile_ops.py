"""Where a family's training step spends its time, by operator kind (issue 23's profile).

    python scripts/profile_ops.py [--families glow,pixelcnn,vae] [--precision 32-true,bf16-mixed]
                                  [--steps 5] [--batch 64] [--threads 2] [--compile] [--convolutions]
                                  [--out profile.json]

Each family of `make bench` (`scripts/bench.py`'s BENCHES, the same sizes and the same training step:
forward of the training objective, mean bits/dim, backward, Adam) runs `--steps` steps under
torch.profiler after two untimed ones, and every operator's self CPU time goes into one of a few kinds:
matrix work (convolutions and matrix products, oneDNN's included), casts (dtype conversions: what
bf16 autocast adds), layout reorders and copies (contiguous, oneDNN reorders, permutes that copy),
elementwise and reductions (everything else a kernel does), and the optimizer. The JSON and the printed
table give each kind's share of the step and the top operators, so a change can be aimed at what the
step actually does beyond the matrix units' work.

glibc's malloc is tuned as `oodbench train` tunes it: untuned, freshly mapped pages are zeroed inside
whichever operator touches them first, which made ReLU's backward look like a fifth of a Glow step (a
406 ms profiled step; tuned, 264 ms). The unprofiled wall time of the same steps is printed beside the
profiled one, as a check that the profiler's own cost per call does not distort the shares.

`--convolutions` times each family's training-step convolutions alone (recorded from one pass, replayed
forward and backward, channels-last) in fp32 and in bf16: what bf16 does for the matrix units' share of
the step, the part the rest of the step's work is to be weighed against.

A machine without bf16 matrix units (lscpu: neither amx_bf16 nor avx512_bf16) would run bf16 emulated:
its bf16 rows are skipped with that said, as `make bench` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BENCHES  # noqa: E402  (scripts/bench.py: the families at make bench's sizes)

from oodbench.machine import cpu_model  # noqa: E402
from oodbench.models.module import make_optimizer, training_objective  # noqa: E402
from oodbench.runner.lightning import tune_glibc_malloc  # noqa: E402
from oodbench.units import bits_per_dim  # noqa: E402

# Operator name fragments -> kind; the first match wins, so the specific kinds come first.
KINDS = (
    ("optimizer", ("adam", "_foreach_", "optimizer")),
    ("cast", ("aten::to", "aten::_to_copy", "_autocast", "aten::type_as")),
    ("layout reorder / copy", ("reorder", "aten::contiguous", "aten::copy_", "aten::clone", "to_dense", "to_mkldnn",
                               "aten::cat", "aten::stack", "aten::pad", "constant_pad")),
    ("matrix work (conv / matmul)", ("conv", "mkldnn_convolution", "aten::mm", "aten::bmm", "aten::addmm",
                                     "aten::matmul", "aten::linear", "aten::baddbmm", "slow_conv", "_mkldnn")),
)
OTHER = "elementwise / reductions / other"


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(fragment.lower() in lowered for fragment in fragments):
            return kind
    return OTHER


def bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16), from /proc/cpuinfo's flags."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


class _ConvolutionRecorder(TorchDispatchMode):
    """Counts the forward convolutions a pass makes, by their full signature (shapes, stride, padding...)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            x, weight, bias, *rest = args
            self.calls[(tuple(x.shape), tuple(weight.shape), bias is not None,
                        *(tuple(a) if isinstance(a, (list, tuple)) else a for a in rest))] += 1
        return func(*args, **(kwargs or {}))


def _convolution_ms(signature: tuple, dtype: torch.dtype, *, repeats: int) -> float:
    """Median ms of one convolution's forward and backward (input, weight and bias gradients) alone, in
    `dtype`, channels-last (oneDNN's own layout), on random data."""
    x_shape, w_shape, has_bias, stride, padding, dilation, transposed, output_padding, groups = signature
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(w_shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    leaves = [x.requires_grad_(), w.requires_grad_()]
    bias = torch.zeros(w_shape[1] * groups if transposed else w_shape[0], dtype=dtype, requires_grad=True)
    leaves += [bias] if has_bias else []

    def run() -> None:
        out = torch.ops.aten.convolution(x, w, bias if has_bias else None, stride, padding, dilation, transposed,
                                         output_padding, groups)
        torch.autograd.grad(out, leaves, torch.ones_like(out))

    run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1e3


def convolution_ceiling(family: str, *, batch: int, repeats: int = 5) -> dict:
    """The family's training-step convolutions timed alone, forward and backward, in fp32 and in bf16: the
    step's matrix work without anything around it. Their fp32 / bf16 ratio is the speed-up bf16 brings to the
    work the matrix units do; a whole step gains less as far as its other work does not shrink with bf16."""
    spec = BENCHES[family]
    torch.manual_seed(0)
    model = spec.build()
    x = spec.make_input(batch, torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.training_log_prob(x)  # initialisation first, as training does
    recorder = _ConvolutionRecorder()
    with recorder:
        model.training_log_prob(x)
    times = {name: sum(count * _convolution_ms(signature, dtype, repeats=repeats)
                       for signature, count in recorder.calls.items())
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {"family": family, "batch": batch, "convolutions_per_step": sum(recorder.calls.values()),
            "distinct_convolutions": len(recorder.calls), "fp32_ms": times["fp32"], "bf16_ms": times["bf16"],
            "fp32_over_bf16": times["fp32"] / times["bf16"]}


def profile_step(family: str, precision: str, *, steps: int, batch: int, compile: bool = False) -> dict:
    spec = BENCHES[family]
    torch.manual_seed(0)
    model = spec.build()
    x = spec.make_input(batch, torch.device("cpu"), torch.Generator().manual_seed(0))
    dims = x[0].numel()
    with torch.no_grad():
        model.training_log_prob(x)  # data-dependent initialisation, as training does first
    model.train()
    optimizer = make_optimizer(model.parameters(), "adam", lr=1e-3, precision=precision)
    objective = training_objective(model, compile=compile)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = bits_per_dim(objective(x), dims).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    wall = []
    for _ in range(steps):  # unprofiled: the profiler's own cost per operator call inflates its step
        start = time.perf_counter()
        step()
        wall.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for event in events:
        by_kind[kind_of(event.key)] += event.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {
        "family": family, "precision": precision, "compile": compile, "batch": batch, "steps": steps,
        "ms_per_step": total / steps / 1e3,
        "wall_ms_per_step_unprofiled": statistics.median(wall) * 1e3,
        "share_by_kind": {kind: round(us / total, 4) for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_operators": [{"op": e.key, "kind": kind_of(e.key), "share": round(e.self_cpu_time_total / total, 4),
                           "calls_per_step": e.count / steps} for e in top],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="glow,pixelcnn,vae")
    parser.add_argument("--precision", default="32-true,bf16-mixed")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="the objective through torch.compile (train --compile)")
    parser.add_argument("--convolutions", action="store_true",
                        help="also time each family's convolutions alone in fp32 and bf16 (convolution_ceiling)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in BENCHES]
    if unknown:
        parser.error(f"unknown families {unknown}; valid: {', '.join(BENCHES)}")
    precisions = [p for p in args.precision.split(",") if p]
    if any(p not in ("32-true", "bf16-mixed") for p in precisions):
        parser.error("--precision takes 32-true and/or bf16-mixed")
    if "bf16-mixed" in precisions and not bf16_matrix_units():
        print("this CPU has no bf16 matrix units (no amx_bf16 or avx512_bf16 in /proc/cpuinfo): bf16 would be "
              "emulated, so its rows are skipped", file=sys.stderr)
        precisions.remove("bf16-mixed")
    torch.set_num_threads(args.threads)
    tune_glibc_malloc()  # as `oodbench train` and `make bench` run: untuned, page faults pose as elementwise work
    results = []
    for family in families:
        for precision in precisions:
            print(f"profiling {family} {precision} ...", file=sys.stderr, flush=True)
            result = profile_step(family, precision, steps=args.steps, batch=args.batch, compile=args.compile)
            results.append(result)
            shares = ", ".join(f"{kind} {share:.0%}" for kind, share in result["share_by_kind"].items())
            print(f"{family:10s} {precision:10s} {result['ms_per_step']:8.1f} ms/step profiled "
                  f"({result['wall_ms_per_step_unprofiled']:.1f} unprofiled)  {shares}")
    ceilings = []
    if args.convolutions and bf16_matrix_units():
        for family in families:
            ceiling = convolution_ceiling(family, batch=args.batch)
            ceilings.append(ceiling)
            print(f"{family:10s} convolutions alone: {ceiling['fp32_ms']:.1f} ms fp32, {ceiling['bf16_ms']:.1f} ms bf16 "
                  f"({ceiling['fp32_over_bf16']:.2f}x) over {ceiling['convolutions_per_step']} convolutions")
    report = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "results": results,
              "convolutions_alone": ceilings}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
