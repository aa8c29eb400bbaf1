"""`make bench`'s roofline: the peaks count the FLOPs of their own kernels, and a family's fraction of them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench"]


def test_roofline_counts_each_kernels_flops(bench):
    peaks = bench.roofline(torch.device("cpu"), steps=1, warmup=0, matmul_n=64, conv_shape=(2, 8, 6, 6))
    assert set(peaks) == {"fp32_matmul", "fp32_conv3x3", "bf16_matmul", "bf16_conv3x3"}
    # by hand: a 64^3 product is 2 * 64^3 FLOPs; a 3x3 conv 8 -> 8 on 2 x 6x6 (padded) is 2 * 2*8*8*9*36
    assert peaks["fp32_matmul"]["gflop"] == pytest.approx(2 * 64**3 / 1e9)
    assert peaks["fp32_conv3x3"]["gflop"] == pytest.approx(2 * 2 * 8 * 8 * 9 * 36 / 1e9)
    assert all(p["gflops"] > 0 for p in peaks.values())
    fractions = bench.fraction_of_peak(peaks["fp32_matmul"]["gflops"] / 2, peaks)
    assert fractions["fp32_matmul"] == pytest.approx(0.5) and set(fractions) == {"fp32_matmul", "fp32_conv3x3"}


def test_bf16_mixed_trains_under_autocast_and_scores_in_float32(bench):
    from oodbench.models.glow import Glow, GlowConfig

    seen = []

    class Probe(Glow):  # records whether autocast was on in each kind of pass
        inside_training = False

        def training_log_prob(self, x):
            seen.append(("train", torch.is_autocast_enabled("cpu")))
            Probe.inside_training = True  # Glow's training objective calls log_prob: not a scoring pass
            try:
                return super().training_log_prob(x)
            finally:
                Probe.inside_training = False

        def log_prob(self, x, noise=None):
            if not Probe.inside_training:
                seen.append(("eval", torch.is_autocast_enabled("cpu")))
            return super().log_prob(x, noise)

    config = GlowConfig(in_channels=1, levels=1, steps=1, hidden_channels=4)
    spec = bench.BenchSpec(description="probe", build=lambda: Probe(config), make_input=bench._images(1, 4),
                           config={})
    result = bench.measure(spec, device=torch.device("cpu"), steps=2, warmup=0, train_batch=2, eval_batches=[2],
                           precision="bf16-mixed")
    assert result["train"]["precision"] == "bf16-mixed"
    # the timed training steps ran under autocast (the untimed init and FLOP count need not)...
    assert sum(on for kind, on in seen if kind == "train") == 2
    # ...and no scoring pass did: reported likelihoods are float32
    assert [on for kind, on in seen if kind == "eval"] and not any(on for kind, on in seen if kind == "eval")
    assert set(bench.fraction_of_peak(1.0, {"bf16_matmul": {"gflops": 4.0}, "fp32_matmul": {"gflops": 2.0}},
                                      dtype="bf16")) == {"bf16_matmul"}


def test_bf16_mixed_is_refused_where_it_would_be_emulated(bench, monkeypatch, capsys, tmp_path):
    """The same test and message as `oodbench train` (runner/lightning.check_precision), before any timing."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--precision", "bf16-mixed", "--families", "glow", "--out", str(tmp_path / "b.json")])
    assert stop.value.code == 2 and "no native bf16" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
