"""The Lightning module: loss in bits/dim, NaN guard, warm-up, and checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from oodbench.config import TrainConfig, to_plain
from oodbench.data.quantize import index_noise
from oodbench.errors import OodbenchError
from oodbench.models.base import DequantizedFlow
from oodbench.models.module import LikelihoodModule, TrainingDiverged, make_optimizer

TINY = {"in_channels": 1, "levels": 2, "steps": 1, "hidden_channels": 8}


def make_module(**train) -> LikelihoodModule:
    return LikelihoodModule(family="glow", model_settings=TINY, train_settings=to_plain(TrainConfig(**train)))


def batch(n=8):
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.arange(n)


def test_training_loss_is_mean_bits_per_dim():
    module = make_module()
    x, index = batch()
    torch.manual_seed(0)
    loss = module.training_step((x, index), 0)
    torch.manual_seed(0)
    # Written out, not through units.bits_per_dim: nats over (64 dimensions x ln 2), averaged over the batch.
    expected = -module.model.log_prob(x).mean() / (64 * math.log(2))
    assert torch.allclose(loss, expected)


def test_nan_loss_stops_with_a_clear_error():
    module = make_module()
    module.model.log_prob = lambda x, noise=None: torch.full((x.shape[0],), float("nan"))
    with pytest.raises(TrainingDiverged, match="diverged .* last good checkpoint"):
        module.training_step(batch(), 0)
    assert TrainingDiverged.exit_code == 1


def test_linear_warmup_schedule():
    module = make_module(lr=1e-2, warmup_steps=4)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


def test_predict_uses_index_seeded_noise():
    module = make_module().eval()
    x, index = batch()
    with torch.no_grad():
        out = module.predict_step((x, index), 0)
        again = module.predict_step((x[3:5], index[3:5]), 0)
        manual = module.model.log_prob(x, index_noise(index, (1, 8, 8), seed=0))
    assert torch.equal(out["index"], index)
    assert torch.allclose(out["log_px"][3:5], again["log_px"], atol=1e-5)
    assert torch.allclose(out["log_px"], manual)


def test_checkpoint_round_trip_keeps_actnorm_init(tmp_path):
    module = make_module(epochs=1)
    x, index = batch(16)
    loader = DataLoader(TensorDataset(x, index), batch_size=8)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module, loader)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    reloaded = LikelihoodModule.load_from_checkpoint(path, weights_only=False).eval()
    module.eval()
    noise = index_noise(index, (1, 8, 8), seed=1)
    with torch.no_grad():
        # A fresh batch of very different statistics must not trigger a second data-dependent init.
        other = torch.full_like(x, 255)
        assert torch.allclose(module.model.log_prob(other, noise), reloaded.model.log_prob(other, noise))
        assert torch.allclose(module.model.log_prob(x, noise), reloaded.model.log_prob(x, noise))
        assert math.isfinite(float(reloaded.model.log_prob(x, noise).mean()))


@pytest.mark.parametrize("family, settings", [
    ("glow", TINY),
    ("pixelcnn", {"in_channels": 1, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0}),
    ("vae", {"in_channels": 1, "image_size": 8, "base_channels": 4, "latent_dim": 4, "iw_samples": 3}),
])
def test_scores_and_validation_under_bf16_mixed_equal_float32(family, settings):
    # A trainer at bf16-mixed runs its steps under bf16 autocast; the likelihoods it reports (predict) and
    # picks the best checkpoint by (validate) must still be float32. Under autocast they moved by nats.
    module = LikelihoodModule(family=family, model_settings=settings, train_settings=to_plain(TrainConfig()))
    x, index = batch(16)
    with torch.no_grad():
        module.model.training_log_prob(x)  # actnorm's data-dependent init, for Glow
    module.eval()
    loader = DataLoader(TensorDataset(x, index), batch_size=8)
    with torch.no_grad():
        reference = module.predict_step((x, index), 0)["log_px"]

    def trainer(precision: str) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, enable_model_summary=False)

    predicted = torch.cat([b["log_px"] for b in trainer("bf16-mixed").predict(module, loader)])
    assert predicted.dtype == torch.float32
    # float32 to a few ulps (batches of 8 vs 16 sum in another order; one ulp at ~365 nats is 3e-5);
    # bf16 autocast would be off by ~1e-2 relative
    torch.testing.assert_close(predicted, reference, rtol=1e-6, atol=1e-5)
    val_bf16 = trainer("bf16-mixed").validate(module, loader, verbose=False)[0]["val_bpd"]
    val_fp32 = trainer("32-true").validate(module, loader, verbose=False)[0]["val_bpd"]
    assert abs(val_bf16 - val_fp32) < 1e-6


def test_half_precision_weights_are_refused():
    from oodbench.config import resolve
    from oodbench.errors import OodbenchError

    with pytest.raises(OodbenchError, match="bf16-true.*--precision"):
        resolve(TrainConfig(), {"precision": "bf16-true"})


def test_the_training_optimizer_is_fused_adam_with_the_reference_update():
    """make_optimizer's fused Adam takes the steps torch's default (foreach) Adam takes, to float rounding;
    an unknown name is refused by name."""
    torch.manual_seed(0)
    reference, fused = make_module().model, make_module().model
    x, _ = batch()
    reference.training_log_prob(x), fused.training_log_prob(x)  # actnorm's data-dependent init, on both
    fused.load_state_dict(reference.state_dict())
    start = [p.detach().clone() for p in reference.parameters()]
    optimizers = {"reference": torch.optim.Adam(reference.parameters(), lr=1e-2, weight_decay=1e-3),
                  "fused": make_optimizer(fused.parameters(), "adam", lr=1e-2, weight_decay=1e-3)}
    assert optimizers["fused"].defaults["fused"] is True
    for _ in range(5):
        for model, optimizer in ((reference, optimizers["reference"]), (fused, optimizers["fused"])):
            optimizer.zero_grad()
            torch.manual_seed(1)  # the same dequantization noise for both
            (-model.training_log_prob(x).mean()).backward()
            optimizer.step()
    assert max(float((p - p0).abs().max()) for p, p0 in zip(reference.parameters(), start, strict=True)) > 1e-3
    for (name, a), b in zip(reference.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(OodbenchError, match="unknown optimizer 'sgd'"):
        make_optimizer(fused.parameters(), "sgd", lr=1e-2)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "bf16"])  # "bf16": Lightning's alias of bf16-mixed
def test_training_steps_with_gradient_clipping_in_each_precision(precision, tmp_path, monkeypatch):
    """`oodbench train` clips gradients; Lightning's mixed-precision plugin refuses to clip for a fused
    optimizer, so the fused Adam is for 32-true only (bf16 is faked native here: emulated is fine for a test)."""
    from oodbench.runner.lightning import make_trainer

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    module = make_module(precision=precision, warmup_steps=1)
    trainer = make_trainer(root=tmp_path, accelerator="cpu", devices="1", precision=precision, quiet=True,
                           logger=False, enable_checkpointing=False, max_steps=3, gradient_clip_val=1.0,
                           gradient_clip_algorithm="norm")
    x, index = batch(16)
    trainer.fit(module, DataLoader(TensorDataset(x, index), batch_size=8))
    assert trainer.global_step == 3
    assert trainer.optimizers[0].defaults["fused"] is (True if precision == "32-true" else None)


class _UniformOnUnitCube(DequantizedFlow):
    """p(y) = 1 on [0,1)^D: log p(x) = -D ln 256 exactly, D the model's input size (tests/test_units.py)."""

    def flow_parts(self, y):
        zeros = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        inside = ((y >= 0) & (y < 1)).flatten(1).all(dim=1)
        return {"log_pz": torch.where(inside, zeros, -math.inf), "logdet": zeros}


def test_logged_bits_per_dim_of_a_28x28_set_are_per_its_784_own_dimensions():
    """A 28x28 grey image is zero-padded to 32x32 for the model; a model uniform on the padded image's
    1,024 dimensions gives it log p = -1024 ln 256, which is 8 x 1024 / 784 = 10.449 bits per dimension
    of the 28x28 image (units.py), the number the validation log and the training loss must show
    (dividing by the model's 1,024 would show 8.0)."""
    module = LikelihoodModule(family="glow", model_settings=TINY, train_settings=to_plain(TrainConfig()), bpd_dims=784)
    module.model = _UniformOnUnitCube()
    x = torch.nn.functional.pad(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), (2, 2, 2, 2))
    index = torch.arange(16)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False)
    logged = trainer.validate(module, DataLoader(TensorDataset(x, index), batch_size=6), verbose=False)[0]["val_bpd"]
    assert logged == pytest.approx(8 * 1024 / 784, rel=1e-6)
    module.log = lambda *args, **kwargs: None  # training_step outside a trainer
    assert module.training_step((x, index), 0).item() == pytest.approx(8 * 1024 / 784, rel=1e-6)


def test_float32_likelihood_turns_tf32_off_and_restores_it():
    """torch lets cuDNN run float32 convolutions in TF32 on GPUs by default; a reported likelihood must not
    (tests/test_gpu.py checks the numbers on a GPU). The flags are process-wide: they come back on exit."""
    from oodbench.models.module import float32_likelihood

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with float32_likelihood(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
            assert not torch.is_autocast_enabled("cpu")
        assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.slow  # compiles a tiny Glow's objective: about half a minute on 2 cores
def test_compiled_training_takes_the_same_steps_as_eager_and_keeps_the_checkpoint_keys(tmp_path):
    """`--compile` (models/module.training_objective) fuses the same arithmetic: three optimizer steps through
    torch.compile reach the eager steps' weights to float rounding, and the checkpoint's keys do not change
    (the compiled function is not a wrapper module, whose `_orig_mod.` prefix would break loading)."""
    from oodbench.runner.lightning import make_trainer

    trained, initial = {}, {}
    for compile in (False, True):
        torch.manual_seed(0)
        module = make_module(compile=compile, warmup_steps=1)
        x, index = batch(16)
        with torch.no_grad():
            module.model.training_log_prob(x)  # actnorm's data-dependent initialisation, as train.py does
        initial[compile] = {name: value.clone() for name, value in module.state_dict().items()}
        trainer = make_trainer(root=tmp_path / str(compile), accelerator="cpu", devices="1", precision="32-true",
                               quiet=True, logger=False, enable_checkpointing=False, max_steps=3,
                               gradient_clip_val=50.0, gradient_clip_algorithm="norm")
        trainer.fit(module, DataLoader(TensorDataset(x, index), batch_size=8))
        assert trainer.global_step == 3
        assert (module._objective == module.model.training_log_prob) is not compile  # the bound method itself, or not
        trained[compile] = module.state_dict()
    assert list(trained[True]) == list(trained[False])
    for name in initial[False]:
        torch.testing.assert_close(initial[True][name], initial[False][name])  # the same start...
    moved = [(trained[False][name].float() - initial[False][name].float()).abs().max() for name in trained[False]]
    assert max(moved) > 1e-3  # the steps did change the weights,
    for name, eager in trained[False].items():  # and both ways alike
        torch.testing.assert_close(trained[True][name], eager, rtol=1e-4, atol=1e-5, msg=name)
    # Adam's first steps follow the gradients' signs more than their sizes: the gradients themselves, too
    parameters = list(module.model.parameters())
    results = []
    for objective in (module.model.training_log_prob, module.objective):
        torch.manual_seed(1)
        loss = objective(x[:8]).mean()
        results.append((loss, torch.autograd.grad(loss, parameters)))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=0)
    for eager, compiled in zip(eager_grads, compiled_grads, strict=True):
        assert float((compiled - eager).norm()) <= 1e-3 * float(eager.norm()) + 1e-7
