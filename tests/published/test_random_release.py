"""scripts/random_release.py writes a file in y0ast/Glow-PyTorch's released layout that `oodbench import` takes
(the GPU check imports one at the paper size): its keys are exactly the converter's layout, and the model it
becomes scores finite likelihoods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from oodbench.published import glow
from oodbench.published.base import read_state

REPO = Path(__file__).resolve().parents[2]


def test_a_random_release_imports_and_scores(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("profiles:\n  paper:\n    models:\n      glow: {levels: 2, steps: 2, hidden_channels: 8}\n")
    out = tmp_path / "release.pt"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "random_release.py"), str(out), "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    converted = glow.convert([read_state(out)])
    assert converted.model_settings == {"in_channels": 3, "levels": 2, "steps": 2, "hidden_channels": 8,
                                        "coupling": "affine", "learn_top": True}
    model = converted.build()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    log_px = model.log_prob_parts(images, model.eval_noise(images, torch.arange(4), 0))["log_px"]
    assert torch.isfinite(log_px).all()
