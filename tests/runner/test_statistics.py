"""The statistics cache: a run scores each set once per checkpoint and settings; other OOD sets,
added scores and reports reuse it; a changed checkpoint, noise seed, k or regret setting is never served
stale. The compressed lengths' units (bits of the whole file per dimension of the dataset's own image).
And scores that cannot apply to a family are skipped with a reason, not an error."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from fake_runs import fake_run
from PIL import Image

from oodbench.config import EvalConfig, TrainConfig, to_plain
from oodbench.data import ImageSet, load_images
from oodbench.data.quantize import index_noise
from oodbench.models.module import LikelihoodModule
from oodbench.models.vae import VAE, VAEConfig
from oodbench.models.vae.regret import posterior_regret
from oodbench.runner import EvalRequest, RunPaths, TrainRequest, evaluate, train
from oodbench.runner.run_loading import load_module
from oodbench.runner.statistics import assemble, cache_key, extra_settings, set_statistics
from oodbench.schema import read_splits
from oodbench.scores import SCORES
from oodbench.scores.likelihood import Likelihood

SMALL = EvalConfig(batch_size=100, train_sample=40, limit=60)


@pytest.fixture(scope="module")
def run(tmp_path_factory, staged_root) -> RunPaths:
    root = tmp_path_factory.mktemp("stat-runs") / "glow"
    train(TrainRequest(model="glow", dataset="fashionmnist", run_dir=root, data_root=str(staged_root), quiet=True,
                       train=TrainConfig(epochs=1, limit_train=128, batch_size=32, val_size=50),
                       model_settings={"levels": 2, "steps": 1, "hidden_channels": 8}))
    return RunPaths(root)


@pytest.fixture
def forwarded(monkeypatch) -> list[int]:
    """How many images go through the model (LikelihoodModule.predict_step), batch by batch."""
    seen: list[int] = []
    original = LikelihoodModule.predict_step

    def counting(self, batch, batch_idx, dataloader_idx=0):
        seen.append(int(batch[0].shape[0]))
        return original(self, batch, batch_idx, dataloader_idx)

    monkeypatch.setattr(LikelihoodModule, "predict_step", counting)
    return seen


def request(run: RunPaths, pair: str, staged_root, **settings) -> EvalRequest:
    return EvalRequest(run=run, pair=pair, eval=EvalConfig(**{**SMALL.__dict__, **settings}),
                       data_root=str(staged_root), quiet=True)


@pytest.mark.slow
def test_a_second_ood_set_scores_only_itself(run, staged_root, forwarded):
    # The scores of the likelihood alone: each image goes through the model once (the gradient scores would
    # add a pass per image of the sets they compare; tests/scores/test_gradients.py counts theirs).
    alone = ("likelihood", "input_complexity", "typicality", "dose")
    first = evaluate(request(run, "fashionmnist:mnist", staged_root, scores=alone))
    assert set(first.computed) == {"in_train", "in_val", "in_test", "out_test"}
    forwarded.clear()
    second = evaluate(request(run, "fashionmnist:kmnist", staged_root, scores=alone))
    assert second.computed == ("out_test",) and sum(forwarded) == 60  # only the 60 KMNIST images went through
    # The cached statistics are the ones a fresh computation gives.
    ours = first.scores[first.scores["set"] == "in_test"].reset_index(drop=True)
    again = second.scores[second.scores["set"] == "in_test"].reset_index(drop=True)
    assert ours[["index", "log_px", "bpd", "log_pz_level1"]].equals(again[["index", "log_px", "bpd", "log_pz_level1"]])


@pytest.mark.slow
def test_adding_a_score_reads_the_cache_and_keeps_the_others(run, staged_root, forwarded):
    evaluate(request(run, "fashionmnist:mnist", staged_root, scores=("likelihood",)))
    forwarded.clear()
    added = evaluate(request(run, "fashionmnist:mnist", staged_root, scores=("dose",)))
    assert added.computed == () and forwarded == []
    metrics = json.loads((added.folder / "metrics.json").read_text())
    assert metrics["scores"][:1] == ["likelihood"] and "dose" in metrics["scores"]
    assert {row["score"] for row in metrics["rows"]} >= {"likelihood", "dose"}


@pytest.mark.slow
def test_a_changed_checkpoint_or_noise_seed_is_not_served_stale(run, staged_root, tmp_path, forwarded):
    # (A changed k: test_evaluate_with_another_k_scores_the_sets_again, on a VAE run; this run is a Glow.)
    evaluate(request(run, "fashionmnist:mnist", staged_root))
    assert evaluate(request(run, "fashionmnist:mnist", staged_root, noise_seed=5)).computed  # other noise: scored
    copy = RunPaths(tmp_path / "copy")
    shutil.copytree(run.root, copy.root)
    assert evaluate(request(copy, "fashionmnist:mnist", staged_root)).computed == ()  # same bytes: the cache holds
    checkpoint = torch.load(copy.best, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.endswith("top_prior.mean"))
    checkpoint["state_dict"][name] += 1.0
    torch.save(checkpoint, copy.best)
    changed = evaluate(request(copy, "fashionmnist:mnist", staged_root))
    assert set(changed.computed) == {"in_train", "in_val", "in_test", "out_test"}


@pytest.mark.slow
def test_the_logged_validation_bits_per_dim_are_per_the_784_dimensions_of_a_28x28_image(run, staged_root):
    """trained.json's val_bpd (the one epoch's logged validation bits/dim) against the checkpoint's
    likelihood of the hold-out computed here, with the same index-seeded noise: -mean log p / (784 ln 2)
    for Fashion-MNIST's 28x28 images padded to 32x32 (a run that divided by the model's 1,024 logs 0.77x)."""
    done = json.loads(run.trained.read_text())
    _, val_index = read_splits(run.splits)
    training_split = load_images("fashionmnist", "train", data_root=str(staged_root))
    chosen = torch.from_numpy(np.flatnonzero(np.isin(training_split.index.numpy(), val_index)))
    x, index = training_split.images[chosen], training_split.index[chosen]
    assert len(x) == 50 and tuple(x.shape[1:]) == (1, 32, 32)
    module, _ = load_module(run.best)
    with torch.no_grad():
        log_px = module.model.log_prob(x, index_noise(index, (1, 32, 32), seed=0)).double()
    assert done["val_bpd"] == pytest.approx(-log_px.mean().item() / (784 * math.log(2)), rel=1e-5)


@pytest.mark.slow
def test_a_score_for_another_family_is_skipped_with_its_reason(run, staged_root, monkeypatch):
    class VaeOnly(Likelihood):
        name = "vae_only"
        families = ("vae",)

    monkeypatch.setitem(SCORES._items, "vae_only", (VaeOnly(),))
    result = evaluate(request(run, "fashionmnist:mnist", staged_root, scores=("vae_only",)))
    assert result.skipped == {"vae_only": "vae_only applies to vae, not glow"}
    assert [row["score"] for row in result.rows] == ["likelihood"]
    assert json.loads((result.folder / "metrics.json").read_text())["skipped"] == result.skipped


# --- fast checks of the cache key and of the units of the assembled statistics -----------------------


def _tiny_images(n: int = 6, shape=(1, 8, 8), seed: int = 0) -> ImageSet:
    pixels = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return ImageSet(name="tiny", split="test", images=pixels, index=torch.arange(100, 100 + n), source="a test")


def test_every_setting_that_changes_a_statistic_changes_its_cache_key():
    images = _tiny_images()
    vae = VAE(VAEConfig(in_channels=1, image_size=8, base_channels=4, latent_dim=3, iw_samples=1))
    bounds = []
    for k in (1, 2, 256):
        vae.iw_samples = k
        bounds.append(vae.bound)
    likelihood_keys = {cache_key("digest", images, 0, bound) for bound in bounds}
    assert len(likelihood_keys) == 3  # the VAE's k: IWAE-1, IWAE-2, IWAE-256 are three statistics
    assert cache_key("digest", images, 1, bounds[0]) not in likelihood_keys  # the noise seed
    assert cache_key("other digest", images, 0, bounds[0]) not in likelihood_keys  # the checkpoint
    fewer = ImageSet(name="tiny", split="test", images=images.images[:5], index=images.index[:5], source="a test")
    assert cache_key("digest", fewer, 0, bounds[0]) not in likelihood_keys  # the images scored
    # Likelihood regret's refit: its steps and learning rate, through the settings the runner keys it by.
    settings = [extra_settings("regret", EvalConfig(regret_steps=steps, regret_lr=lr))
                for steps, lr in ((20, 0.1), (21, 0.1), (20, 0.05))]
    regret_keys = {cache_key("digest", images, 0, bounds[2], "regret", s) for s in settings}
    assert len(regret_keys) == 3 and not regret_keys & likelihood_keys
    # ... while what changes no number (batch size, devices) keeps the key.
    same = extra_settings("regret", EvalConfig(regret_steps=20, regret_lr=0.1, batch_size=7, devices="2"))
    assert cache_key("digest", images, 0, bounds[2], "regret", same) in regret_keys


def test_a_changed_k_or_regret_setting_is_computed_again_not_served_stale(tmp_path, one_thread):
    """A tiny VAE scored through the cache: after k (or the regret's steps, or its learning rate) changes,
    the statistics are those the model gives at the new setting, computed directly, not the cached ones."""
    torch.manual_seed(0)
    module = LikelihoodModule(family="vae", model_settings={"in_channels": 1, "image_size": 8, "base_channels": 4,
                                                            "latent_dim": 3, "iw_samples": 2},
                              train_settings=to_plain(TrainConfig())).eval()
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"the same weights throughout")  # the cache keys on the checkpoint's bytes
    paths, images = RunPaths(tmp_path / "run"), _tiny_images()
    x, index = images.images, images.index

    def scored(**settings):
        cfg = EvalConfig(batch_size=6, accelerator="cpu", **settings)
        found, computed, _ = set_statistics(module, {"in_test": images}, cfg, paths=paths, checkpoint=checkpoint,
                                            bpd_dims=64, quiet=True, extras=("regret",) if settings else ())
        return found["in_test"], computed

    def direct_log_px() -> np.ndarray:
        with torch.no_grad():
            return module.model.log_prob(x, module.model.eval_noise(x, index, 0)).double().numpy()

    first, computed = scored()
    assert computed == ["in_test"] and np.allclose(first["log_px"], direct_log_px(), rtol=0, atol=1e-4)
    assert scored()[1] == []  # the same settings: served from the cache
    module.model.iw_samples = 8
    changed, computed = scored()
    assert computed == ["in_test"]
    assert np.allclose(changed["log_px"], direct_log_px(), rtol=0, atol=1e-4)
    assert np.abs(changed["log_px"] - first["log_px"]).max() > 1e-2  # k = 8 really differs from k = 2

    eps = module.model.eval_noise(x, index, 0)[:, 0]
    for steps, lr in ((2, 0.1), (5, 0.1), (5, 0.5)):
        frame, computed = scored(regret_steps=steps, regret_lr=lr)
        assert computed == ["in_test"], (steps, lr)
        want = posterior_regret(module.model, x, eps, steps=steps, lr=lr)["regret"].double().numpy()
        assert np.allclose(frame["regret"], want, rtol=1e-4, atol=1e-4), (steps, lr)
    assert scored(regret_steps=5, regret_lr=0.5)[1] == []


def test_evaluate_with_another_k_scores_the_sets_again(tmp_path, staged_root, one_thread):
    """`oodbench evaluate --iw-samples` end to end on a (tiny, untrained) VAE run: the same k reads the
    cache, another k scores every set again, and what it reports is the model's IWAE at that k, computed
    here directly, not the cached IWAE at the first k."""
    run = fake_run(tmp_path / "vae", staged_root, model="vae")

    def evaluated(k: int):
        return evaluate(EvalRequest(run=run, pair="fashionmnist:mnist", data_root=str(staged_root), quiet=True,
                                    eval=EvalConfig(batch_size=64, train_sample=10, limit=10, iw_samples=k,
                                                    scores=("likelihood",))))

    first = evaluated(2)
    assert set(first.computed) == {"in_train", "in_val", "in_test", "out_test"}
    assert evaluated(2).computed == ()
    changed = evaluated(8)
    assert set(changed.computed) == {"in_train", "in_val", "in_test", "out_test"}
    assert changed.metrics["bound"] == "iwae-8"
    module, _ = load_module(run.best)
    module.model.iw_samples = 8
    in_test = changed.scores[changed.scores["set"] == "in_test"]
    x = load_images("fashionmnist", "test", data_root=str(staged_root), limit=10)
    assert in_test["index"].tolist() == x.index.tolist()
    with torch.no_grad():
        direct = module.model.log_prob(x.images, module.model.eval_noise(x.images, x.index, 0)).double().numpy()
    assert np.allclose(in_test["log_px"], direct, rtol=0, atol=1e-3)
    stale = first.scores[first.scores["set"] == "in_test"]["log_px"].to_numpy()
    assert np.abs(direct - stale).max() > 1e-2  # k = 8 really differs from k = 2 here


def test_compressed_lengths_are_bits_of_the_whole_file_over_the_datasets_own_dimensions():
    """A 28x28 grey image zero-padded to 32x32, as the models see it, with bits/dim per its 784 own
    dimensions: png_bpd is 8 x the bytes of the PNG Pillow writes for the padded image / 784, and bpd is
    -log_px / (784 ln 2), both per 784 (not per the padded 1,024), so input complexity subtracts like from like."""
    g = torch.Generator().manual_seed(3)
    small = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=g)
    small[1] = 0  # a blank image: a few dozen bytes
    padded = torch.nn.functional.pad(small, (2, 2, 2, 2))
    images = ImageSet(name="tiny", split="test", images=padded, index=torch.arange(3), source="a test")
    log_px = np.array([-1500.0, -200.0, -4000.0])
    frame = assemble(pd.DataFrame({"index": np.arange(3), "log_px": log_px}), images, bpd_dims=784)
    for i, image in enumerate(padded[:, 0].numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=9)
        assert frame["png_bpd"][i] == pytest.approx(8 * len(buffer.getvalue()) / 784, rel=1e-12)
        assert frame["bpd"][i] == pytest.approx(-log_px[i] / (784 * math.log(2)), rel=1e-12)
    # Noise costs more than 8 bits per own dimension (its file has the padding and headers too); a blank, under 1.
    assert frame["png_bpd"][0] > 8 and frame["png_bpd"][1] < 1
    assert frame.attrs["bpd_dims"] == 784
