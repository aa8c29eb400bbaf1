"""The paper's headline on real data, in seconds: a small Glow trained on the staged Fashion-MNIST gives
MNIST's test images lower bits/dim than Fashion-MNIST's own test images, so the likelihood's AUROC is
below 0.5 (Nalisnick et al. 2019, Figure 1). A model that fails to learn, a sign flipped in the
likelihood or the metrics, or sets swapped in the evaluation all make it fail."""

from __future__ import annotations

import pytest
from evaluation_files import likelihood_row

from oodbench.cli import main


@pytest.mark.slow
def test_fashionmnist_glow_rates_mnist_more_likely(tmp_path, staged_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.yaml").write_text(
        "profiles:\n  headline:\n    train: {epochs: 2, batch_size: 32, lr: 0.002, warmup_steps: 20, limit_train: 2000}\n"
        "    models:\n      glow: {levels: 2, steps: 2, hidden_channels: 32}\n")
    common = ["--data-root", str(staged_root), "--quiet", "--profile", "headline"]
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", "glow", "--dataset", "fashionmnist", *common])
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--pair", "fashionmnist:mnist", "--model", "glow", "--limit", "500", "--train-sample", "500",
              *common])
    assert done.value.code == 0
    row = likelihood_row(tmp_path / "runs/glow-fashionmnist-seed0/eval/fashionmnist_vs_mnist")
    # Learned something: well below the 10.45 bits/dim (8 x 1024 / 784) of a model uniform on the padded image.
    assert row["bpd_in_test_mean"] < 9.0
    assert row["bpd_out_test_mean"] < row["bpd_in_test_mean"] and row["ood_lower_bpd"]
    assert row["auroc"] < 0.5
