"""The GPU path (marker `gpu`, skipped without CUDA): on a CUDA device every family scores each image as
the CPU does, trains through the Lightning trainer `oodbench train` builds, keeps the likelihoods it
reports float32 under bf16-mixed training, and draws the same index-seeded dequantization noise;
`--devices all` takes every GPU; `scripts/bench.py` measures there.

"float32" here is strict, and it is the product that makes it so: torch lets cuDNN run float32
convolutions in TF32 by default, and these tests leave that default alone, so scoring matches the CPU only
because `models.module.float32_likelihood` turns TF32 off (`scripts/bench.py --device cuda` reports how far
TF32 would move bits/dim).

`OODBENCH_TEST_DEVICE=cpu` runs the same tests on the CPU (the CPU against itself), so that this code has
run before the day a GPU runs it: `scripts/gpu_check.sh`'s smoke mode (GPU_CHECK_DEVICE=cpu) does.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from torch.utils.data import DataLoader, TensorDataset

from oodbench.config import TrainConfig, to_plain
from oodbench.data.quantize import index_noise
from oodbench.models.module import LikelihoodModule
from oodbench.runner.lightning import make_trainer, native_bf16
from oodbench.units import bits_per_dim

DEVICE = torch.device(os.environ.get("OODBENCH_TEST_DEVICE", "cuda"))
ACCELERATOR = "gpu" if DEVICE.type == "cuda" else "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]

TESTS = Path(__file__).resolve().parent
SHAPE = (3, 8, 8)
N_DIMS = math.prod(SHAPE)
# The tiny configurations of the CPU tests (tests/models/test_module.py), on 3 channels.
FAMILIES = {
    "glow": {"in_channels": 3, "levels": 2, "steps": 2, "hidden_channels": 16},
    "cv-glow": {"in_channels": 3, "levels": 2, "steps": 2, "hidden_channels": 16},
    "pixelcnn": {"in_channels": 3, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0},
    "vae": {"in_channels": 3, "image_size": 8, "base_channels": 4, "latent_dim": 4, "iw_samples": 3},
}
FLOWS = ("glow", "cv-glow")
# Per-image log-likelihoods of these ~-1000-nat images agree between devices in strict float32 to float
# rounding (different kernels sum in different orders): 0.05 nats + 1e-5 relative, about 5e-4 bits/dim.
# TF32 or bf16 arithmetic moves them by tenths of a nat to nats.
NATS = {"rtol": 1e-5, "atol": 0.05}


def _flow_checks():
    """tests/models/flow_checks.py, the CPU flow tests' helpers (imported there as a top-level module)."""
    if "flow_checks" not in sys.modules:
        spec = importlib.util.spec_from_file_location("flow_checks", TESTS / "models" / "flow_checks.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["flow_checks"] = module
    return sys.modules["flow_checks"]


def _images(n: int, *, narrow: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, dataset indices) on the CPU; `narrow`: pixels in 96..159, quick to learn."""
    generator = torch.Generator().manual_seed(seed)
    low, high = (96, 160) if narrow else (0, 256)
    return torch.randint(low, high, (n, *SHAPE), dtype=torch.uint8, generator=generator), torch.arange(n) * 7 + 3


def _module(family: str, **train) -> LikelihoodModule:
    """A module on the CPU, initialised as `oodbench train` does (actnorm on a first batch); a flow's
    zero-initialised couplings perturbed as the CPU flow tests do, so that none is an identity."""
    torch.manual_seed(0)
    module = LikelihoodModule(family=family, model_settings=FAMILIES[family],
                              train_settings=to_plain(TrainConfig(**train)))
    with torch.no_grad():
        module.model.training_log_prob(_images(32, seed=1)[0])
    if family in FLOWS:
        _flow_checks().perturb(module.model, scale=0.05)
    return module


def _trainer(tmp_path: Path, precision: str, **kwargs):
    return make_trainer(root=tmp_path, accelerator=ACCELERATOR, devices="1", precision=precision, quiet=True,
                        logger=False, enable_checkpointing=False, **kwargs)


class DevicesSeen(pl.Callback):
    """Where the training steps ran (Lightning moves the module back to the CPU when `fit` ends)."""

    def __init__(self) -> None:
        self.devices: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.devices.add(pl_module.device.type)
        self.devices.update(tensor.device.type for tensor in batch)


def _mean_bpd(module: LikelihoodModule, x: torch.Tensor, index: torch.Tensor) -> float:
    """The validation bits/dim (what picks the best checkpoint) of `x`, in float32, on the device."""
    module = module.to(DEVICE).eval()
    with torch.no_grad():
        x, index = x.to(DEVICE), index.to(DEVICE)
        return float(bits_per_dim(module.model.validation_log_prob(x, module._eval_noise(x, index)), N_DIMS).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_each_images_log_likelihood_on_the_device_equals_the_cpus(family):
    module = _module(family).eval()
    x, index = _images(16)
    with torch.no_grad():
        on_cpu = module.predict_step((x, index), 0)
        on_device = copy.deepcopy(module).to(DEVICE).predict_step((x.to(DEVICE), index.to(DEVICE)), 0)
    assert set(on_device) == set(on_cpu)
    for name, value in on_cpu.items():
        assert on_device[name].device.type == DEVICE.type and on_device[name].dtype == value.dtype, name
        torch.testing.assert_close(on_device[name].cpu(), value, **NATS, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_steps_on_the_device_lower_the_loss(family, tmp_path):
    module = _module(family, lr=1e-2, warmup_steps=1)
    x, index = _images(64, narrow=True)
    before = _mean_bpd(module, x, index)
    seen = DevicesSeen()
    trainer = _trainer(tmp_path, "32-true", max_steps=24, gradient_clip_val=50.0, gradient_clip_algorithm="norm",
                       callbacks=[seen])
    trainer.fit(module.train(), DataLoader(TensorDataset(x, index), batch_size=16, shuffle=True))
    assert trainer.global_step == 24 and seen.devices == {DEVICE.type}
    after = _mean_bpd(module, x, index)
    assert math.isfinite(after) and after < before - 0.1, (before, after)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_mixed_training_on_the_device_reports_float32_likelihoods(family, tmp_path):
    native = torch.cuda.is_bf16_supported() if DEVICE.type == "cuda" else native_bf16(CPUAccelerator())
    if not native:
        pytest.skip(f"no native bf16 on this {DEVICE.type}")
    module = _module(family, lr=1e-3, warmup_steps=1, precision="bf16-mixed")
    x, index = _images(16)
    loader = DataLoader(TensorDataset(x, index), batch_size=8)
    seen = DevicesSeen()
    _trainer(tmp_path, "bf16-mixed", max_steps=3, callbacks=[seen]).fit(module, loader)
    assert seen.devices == {DEVICE.type}
    assert all(p.dtype == torch.float32 for p in module.parameters())  # mixed: the weights stay float32
    predicted = _trainer(tmp_path, "bf16-mixed").predict(module, loader)
    log_px = torch.cat([batch["log_px"] for batch in predicted])
    assert log_px.dtype == torch.float32
    module = module.to(DEVICE).eval()
    with torch.no_grad():
        xd, id_ = x.to(DEVICE), index.to(DEVICE)
        reference = module.predict_step((xd, id_), 0)["log_px"].cpu()  # no autocast anywhere
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            in_bf16 = module.model.log_prob(xd, module._eval_noise(xd, id_)).float().cpu()
    torch.testing.assert_close(log_px.cpu(), reference, **NATS)
    # ...and the check can tell: the same images scored under bf16 autocast lie further from float32
    float32_gap, bf16_gap = float((log_px.cpu() - reference).abs().max()), float((in_bf16 - reference).abs().max())
    assert bf16_gap > float32_gap, (bf16_gap, float32_gap)


def test_index_seeded_noise_on_the_device_equals_the_cpus():
    # dataset positions, up to the largest whose hash stays inside int64 (2**31 - 1 times the 32-bit multiplier)
    index = torch.cat([torch.arange(0, 50_000, 371), torch.tensor([2**31 - 1])])
    for seed in (0, 12345):
        on_cpu = index_noise(index, SHAPE, seed)
        on_device = index_noise(index.to(DEVICE), SHAPE, seed)
        assert on_device.device.type == DEVICE.type
        assert torch.equal(on_device.cpu(), on_cpu)  # integer hashing: bit for bit
    for family in FAMILIES:  # each family's own evaluation noise (the VAE's latent draws: erfinv, to rounding)
        model = _module(family).model
        x = _images(len(index))[0]
        on_cpu = model.eval_noise(x, index, 0)
        on_device = copy.deepcopy(model).to(DEVICE).eval_noise(x.to(DEVICE), index.to(DEVICE), 0)
        if on_cpu is None:
            assert on_device is None, family
        else:
            torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=1e-6, atol=1e-6, msg=family)


def test_devices_all_takes_every_device(tmp_path):
    trainer = make_trainer(root=tmp_path, accelerator=ACCELERATOR, devices="all", precision="32-true", quiet=True,
                           logger=False)
    assert trainer.num_devices == (torch.cuda.device_count() if DEVICE.type == "cuda" else 1)


def test_bench_measures_speed_and_peak_memory_on_the_device():
    spec = importlib.util.spec_from_file_location("bench", TESTS.parent / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = bench  # its dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
        from oodbench.models.glow import Glow, GlowConfig

        config = GlowConfig(in_channels=3, levels=2, steps=1, hidden_channels=8)
        tiny = bench.BenchSpec(description="tiny glow", build=lambda: Glow(config), make_input=bench._images(3, 8),
                               config={})
        result = bench.measure(tiny, device=DEVICE, steps=2, warmup=1, train_batch=4, eval_batches=[4])
    finally:
        sys.modules.pop("bench", None)
    assert result["train"]["images_per_s"] > 0 and math.isfinite(result["train"]["final_loss_bpd"])
    assert result["eval"]["inference_mode"]["best"]["images_per_s"] > 0
    if DEVICE.type == "cuda":
        assert result["train"]["cuda_peak_mib"] > 0 and result["eval"]["inference_mode"]["best"]["cuda_peak_mib"] > 0
        tf32 = result["eval"]["tf32"]  # torch's default, which training keeps and scoring turns off
        assert tf32["cudnn_conv"] is torch.backends.cudnn.allow_tf32 and math.isfinite(tf32["max_abs_bpd_difference"])
    else:
        assert result["train"]["cuda_peak_mib"] is None and "tf32" not in result["eval"]
