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
