"""scripts/profile_ops.py (issue 23's profile): each operator lands in the kind it is, and a profiled
training step's shares are of real work: the convolutions of a Glow are matrix work, and the kinds add up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def profile_ops():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import profile_ops

        yield profile_ops
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.mark.parametrize("op, kind", [
    ("aten::mkldnn_convolution", "matrix work (conv / matmul)"),
    ("aten::convolution_backward", "matrix work (conv / matmul)"),
    ("aten::addmm", "matrix work (conv / matmul)"),
    ("aten::_to_copy", "cast"),
    ("aten::contiguous", "layout reorder / copy"),
    ("aten::_fused_adam_", "optimizer"),
    ("aten::threshold_backward", "elementwise / reductions / other"),
    ("aten::mul", "elementwise / reductions / other"),
])
def test_each_operator_has_its_kind(profile_ops, op, kind):
    assert profile_ops.kind_of(op) == kind


def test_a_profiled_glow_step_is_mostly_its_convolutions(profile_ops):
    result = profile_ops.profile_step("glow-default-1ch", "32-true", steps=1, batch=4)
    shares = result["share_by_kind"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert shares["matrix work (conv / matmul)"] > 0.2 and result["ms_per_step"] > 0
    assert result["top_operators"][0]["share"] >= result["top_operators"][-1]["share"]


def test_bad_arguments_exit_2_with_one_line():
    run = subprocess.run([sys.executable, str(SCRIPTS / "profile_ops.py"), "--families", "nosuch"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "unknown families ['nosuch']" in run.stderr and "Traceback" not in run.stderr


def test_the_convolution_recorder_counts_each_signature_and_replays_it(profile_ops):
    """`--convolutions` replays the step's convolutions alone: each call is counted under its full signature
    (a transposed one and a strided one are not the 3x3 one), and each replays forward and backward."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(2, 4, 8, 8)
    w3, w1, wt = torch.randn(6, 4, 3, 3), torch.randn(6, 4, 1, 1), torch.randn(4, 5, 4, 4)
    recorder = profile_ops._ConvolutionRecorder()
    with recorder:
        for _ in range(3):
            F.conv2d(x, w3, padding=1)
        F.conv2d(x, w1, torch.zeros(6), stride=2)
        F.conv_transpose2d(x, wt, stride=2, padding=1)
    calls = {(sig[1], sig[3], sig[6]): count for sig, count in recorder.calls.items()}  # weight, stride, transposed
    assert calls == {((6, 4, 3, 3), (1, 1), False): 3, ((6, 4, 1, 1), (2, 2), False): 1,
                     ((4, 5, 4, 4), (2, 2), True): 1}
    for signature in recorder.calls:
        assert profile_ops._convolution_ms(signature, torch.float32, repeats=1) > 0
