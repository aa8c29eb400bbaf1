"""The statistics cache: a run scores each set once per checkpoint and settings; other OOD sets,
added scores and reports reuse it; a changed checkpoint, noise seed or k is never served stale.
And scores that cannot apply to a family are skipped with a reason, not an error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from oodbench.config import EvalConfig, TrainConfig
from oodbench.models.module import LikelihoodModule
from oodbench.runner import EvalRequest, RunPaths, TrainRequest, evaluate, train
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
    first = evaluate(request(run, "fashionmnist:mnist", staged_root))
    assert set(first.computed) == {"in_train", "in_val", "in_test", "out_test"}
    forwarded.clear()
    second = evaluate(request(run, "fashionmnist:kmnist", staged_root))
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
def test_a_changed_checkpoint_noise_seed_or_k_is_not_served_stale(run, staged_root, tmp_path, forwarded):
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
def test_a_score_for_another_family_is_skipped_with_its_reason(run, staged_root, monkeypatch):
    class VaeOnly(Likelihood):
        name = "vae_only"
        families = ("vae",)

    monkeypatch.setitem(SCORES._items, "vae_only", (VaeOnly(),))
    result = evaluate(request(run, "fashionmnist:mnist", staged_root, scores=("vae_only",)))
    assert result.skipped == {"vae_only": "vae_only applies to vae, not glow"}
    assert [row["score"] for row in result.rows] == ["likelihood"]
    assert json.loads((result.folder / "metrics.json").read_text())["skipped"] == result.skipped
