"""The likelihood over training (runner/ood_curve.py): its rows, that it changes nothing the run learns,
that a killed and resumed run ends with an uninterrupted run's curve, and the paper's finding read from it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from oodbench import failpoints
from oodbench.config import TrainConfig, to_plain
from oodbench.data import ImageSet
from oodbench.models.families import model_config
from oodbench.models.module import LikelihoodModule
from oodbench.runner.callbacks import checkpoint_progress
from oodbench.runner.layout import RunPaths
from oodbench.runner.ood_curve import curve_on, early_stopping_finding, kept_rows, read_curve, set_bpd
from oodbench.runner.train import TrainRequest, train

GLOW = {"levels": 2, "steps": 1, "hidden_channels": 8}
# 64 images in batches of 16: 4 steps an epoch, a point every 2 steps: steps 0, 2, ..., 8 over 2 epochs.
CFG = TrainConfig(epochs=2, batch_size=16, limit_train=64, val_size=16, warmup_steps=2, logger="none",
                  accelerator="cpu", devices="1", curve_every=2)
# svhn has 3 channels (the model takes 1) and cifar100 is not staged: both skipped with a notice.
OOD = ("mnist", "kmnist", "svhn", "cifar100")


def request(run_dir: Path, data_root: Path, notices: list[str] | None = None, **changes) -> TrainRequest:
    fields = {"train": CFG, "ood_sets": OOD, "curve_images": 40, **changes}
    return TrainRequest(model="glow", dataset="fashionmnist", run_dir=run_dir, model_settings=GLOW,
                        data_root=str(data_root), quiet=True,
                        notify=notices.append if notices is not None else lambda message: None, **fields)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, staged_root) -> tuple[RunPaths, list[str]]:
    """A run trained without interruption, keeping its curve; and the notices it gave."""
    notices: list[str] = []
    result = train(request(tmp_path_factory.mktemp("straight"), staged_root, notices))
    return result.paths, notices


def test_the_curve_has_every_set_at_every_point(straight):
    paths, notices = straight
    curve = read_curve(paths.ood_curve)
    assert curve["step"].unique().tolist() == [0, 2, 4, 6, 8]
    assert curve["epoch"].unique().tolist() == [0, 0.5, 1, 1.5, 2]
    for _, point in curve.groupby("step"):
        assert list(zip(point["set"], point["dataset"], point["split"], strict=True)) == [
            ("in_train", "fashionmnist", "train"), ("in_test", "fashionmnist", "test"),
            ("ood", "mnist", "test"), ("ood", "kmnist", "test")]
    assert (curve["n"] == 40).all()
    assert np.isfinite(curve[["bpd_mean", "bpd_std"]].to_numpy()).all() and (curve["bpd_std"] > 0).all()
    # training lowers the bits/dim of the images it trains on
    in_train = curve[curve["set"] == "in_train"]["bpd_mean"].to_numpy()
    assert in_train[-1] < in_train[0]
    assert len(notices) == 2 and all(len(n.splitlines()) == 1 for n in notices)
    assert "svhn" in notices[0] and "matching channels" in notices[0] and "cifar100" in notices[1]
    finding = early_stopping_finding(curve)
    assert finding["steps"] == 4 and finding["points"] == 8 and set(finding["sets"]) == {"mnist@test", "kmnist@test"}


def test_the_curve_changes_nothing_the_run_learns(straight, tmp_path, staged_root):
    paths, _ = straight
    # The default (curve_every=None) with no OOD set named is off.
    plain = train(request(tmp_path, staged_root, train=dataclasses.replace(CFG, curve_every=None), ood_sets=())).paths
    assert not plain.ood_curve.exists()
    with_curve, without = (torch.load(p.last, weights_only=True) for p in (paths, plain))
    assert with_curve["state_dict"].keys() == without["state_dict"].keys()
    for name, value in with_curve["state_dict"].items():
        assert torch.equal(value, without["state_dict"][name]), name
    moments = [torch.cat([s["exp_avg"].flatten() for s in ckpt["optimizer_states"][0]["state"].values()])
               for ckpt in (with_curve, without)]
    assert torch.equal(*moments)


class Killed(Exception):
    """Stands in for the SIGKILL of a failpoint, in-process."""


def test_a_run_killed_after_a_point_resumes_to_the_uninterrupted_curve(straight, tmp_path, staged_root, monkeypatch):
    paths, _ = straight
    batches = []

    def reached(point: str) -> None:
        batches.append(point)
        if point == "train-batch" and batches.count(point) == 6:  # epoch 2's second batch: step 6 is scored
            raise Killed

    monkeypatch.setenv(failpoints.ENV, "train-batch:6")  # arms the failpoint callback
    monkeypatch.setattr(failpoints, "reached", reached)
    with pytest.raises(Killed):
        train(request(tmp_path, staged_root))
    killed = RunPaths(tmp_path)
    assert checkpoint_progress(torch.load(killed.last, weights_only=True))[0] == 1  # its checkpoint: step 4
    assert read_curve(killed.ood_curve)["step"].max() == 6  # a row after the checkpoint, to be dropped
    train(request(tmp_path, staged_root))
    assert killed.ood_curve.read_text() == paths.ood_curve.read_text()


def tiny_module() -> LikelihoodModule:
    settings = to_plain(model_config("glow", GLOW, image_shape=(1, 32, 32)))
    module = LikelihoodModule(family="glow", model_settings=settings, train_settings={}, bpd_dims=784)
    with torch.no_grad():
        module.model.training_log_prob(torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8))  # actnorm
    return module


def test_scoring_leaves_the_generators_and_the_module_as_they_were(monkeypatch):
    module = tiny_module().train()
    frozen = next(m for m in module.model.modules() if m is not module.model)
    frozen.eval()  # a submodule out of training mode stays so
    modes = {m: m.training for m in module.modules()}
    images = ImageSet(name="noise", split="test", images=torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8),
                      index=torch.arange(12, dtype=torch.int64), source="test")
    expected = set_bpd(module, images, batch_size=5)
    log_prob = module.model.log_prob

    def drawing(x, noise=None):  # a likelihood that draws from the global generator (a VAE without noise)
        torch.rand(3)
        assert not module.training and not torch.is_grad_enabled()
        return log_prob(x, noise)

    monkeypatch.setattr(module.model, "log_prob", drawing)
    state = torch.get_rng_state()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a mixed-precision trainer's context: scored in float32
        again = set_bpd(module, images, batch_size=12)
    assert torch.equal(torch.get_rng_state(), state)
    assert {m: m.training for m in module.modules()} == modes
    np.testing.assert_allclose(again, expected, rtol=1e-6)  # batching and autocast change nothing
    assert again.shape == (12,) and np.isfinite(again).all()


def test_a_resumed_run_keeps_the_rows_up_to_its_checkpoint():
    curve = pd.DataFrame({"step": [0, 0, 2, 2, 4, 6], "set": ["in_test", "ood"] * 2 + ["in_test", "in_test"]})
    assert kept_rows(curve, 4)["step"].tolist() == [0, 0, 2, 2, 4]
    assert kept_rows(curve, 0).empty  # a fresh start scores step 0 again
    assert kept_rows(curve.iloc[0:0], 4).empty
    assert curve_on(None, ("mnist",)) and curve_on(5, ()) and not curve_on(None, ()) and not curve_on(0, ("mnist",))


def test_the_finding_holds_only_where_every_ood_point_is_lower():
    rows = []
    for step, in_test, low, high in ((0, 3.0, 3.5, 3.5), (2, 2.9, 2.0, 2.5), (4, 2.8, 1.9, 2.9), (6, 2.7, 1.8, 2.0)):
        rows += [{"step": step, "set": "in_test", "dataset": "fashionmnist", "split": "test", "bpd_mean": in_test},
                 {"step": step, "set": "ood", "dataset": "mnist", "split": "test", "bpd_mean": low},
                 {"step": step, "set": "ood", "dataset": "kmnist", "split": "test", "bpd_mean": high},
                 {"step": step, "set": "in_train", "dataset": "fashionmnist", "split": "train", "bpd_mean": 0.0}]
    curve = pd.DataFrame(rows)
    finding = early_stopping_finding(curve)  # step 0, the untrained model, is not counted
    assert finding["holds"] is False and finding["steps"] == 3 and finding["points"] == 6
    assert finding["sets"]["mnist@test"] == {"points": 3, "ood_lower": 3, "holds": True, "first_not_lower": None}
    assert finding["sets"]["kmnist@test"] == {"points": 3, "ood_lower": 2, "holds": False, "first_not_lower": 4}
    only_mnist = early_stopping_finding(curve[curve["dataset"] != "kmnist"])
    assert only_mnist["holds"] is True and only_mnist["points"] == 3
    assert early_stopping_finding(curve, min_step=0)["sets"]["mnist@test"]["first_not_lower"] == 0
    nothing = early_stopping_finding(curve[curve["set"] != "ood"])
    assert nothing == {"holds": None, "points": 0, "steps": 0, "sets": {}}


def test_the_curve_gives_bits_per_dimension_of_a_28x28_image():
    """A model uniform on the padded 32x32 image gives log p = -1024 ln 256: 8 x 1024 / 784 = 10.449 bits
    per dimension of the 28x28 image, the unit every other number of the run is in (dividing by the
    model's 1,024 would give 8.0)."""
    from oodbench.models.base import DequantizedFlow

    class Uniform(DequantizedFlow):
        def flow_parts(self, y):
            zeros = torch.zeros(y.shape[0], dtype=y.dtype)
            return {"log_pz": torch.where(((y >= 0) & (y < 1)).flatten(1).all(dim=1), zeros, -math.inf), "logdet": zeros}

    module = tiny_module()
    module.model = Uniform()
    images = ImageSet(name="noise", split="test", images=torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8),
                      index=torch.arange(5, dtype=torch.int64), source="test")
    np.testing.assert_allclose(set_bpd(module, images, batch_size=2), np.full(5, 8 * 1024 / 784), rtol=1e-6)
