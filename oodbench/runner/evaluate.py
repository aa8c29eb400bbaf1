"""`oodbench evaluate`: score a trained model on in-train, in-test and OOD-test images.

Writes, atomically, into the run's `eval/<in>_vs_<out>/` folder:
- `scores.csv`: one row per sample, in dataset index order (columns in `SCORE_COLUMNS`);
- `metrics.json`: one row of bits/dim summaries and OOD metrics of the BPD score (OOD = positive);
- `config.yaml`: the resolved evaluation settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from oodbench.atomic import write_json, write_with, write_yaml
from oodbench.config import EvalConfig, to_plain
from oodbench.data import ImageSet, Pair, load_images, match_channels, parse_dataset_ref, parse_pair
from oodbench.errors import OodbenchError
from oodbench.metrics import ood_metrics
from oodbench.models.module import LikelihoodModule
from oodbench.runner.layout import RunPaths
from oodbench.runner.lightning import make_trainer
from oodbench.scores import bits_per_dim, likelihood_score

SETS = ("in_train", "in_test", "out_test")
SCORE_COLUMNS = ("set", "dataset", "split", "index", "log_px", "bpd", "log_pz", "logdet")


@dataclass(frozen=True)
class EvalRequest:
    run: RunPaths
    pair: str
    eval: EvalConfig = field(default_factory=EvalConfig)
    data_root: str | None = None
    download: bool = False
    checkpoint: str = "best"
    quiet: bool = False


@dataclass(frozen=True)
class EvalResult:
    folder: Path
    metrics: dict[str, Any]
    scores: pd.DataFrame
    written: bool = True  # False on DDP processes other than global zero


def load_module(path: Path) -> LikelihoodModule:
    """A trained module from a checkpoint; an unreadable or foreign file is a clear error."""
    try:
        module = LikelihoodModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except OodbenchError:
        raise
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise OodbenchError(
            f"checkpoint {path} is corrupt or not an oodbench checkpoint ({type(exc).__name__}); retrain the run"
        ) from None
    return module.eval()


def _load_sets(pair: Pair, run_config: dict[str, Any], request: EvalRequest) -> dict[str, ImageSet]:
    cfg = request.eval
    trained_on = str(run_config["dataset"])
    if pair.in_ref.name != parse_dataset_ref(trained_on).name:
        raise OodbenchError(
            f"run {request.run.root} was trained on {trained_on}, not {pair.in_ref.name}; "
            f"use --pair {trained_on}:OUT or another --run"
        )
    data_root = request.data_root if request.data_root is not None else run_config.get("data_root")

    def load(name: str, split: str, limit: int | None) -> ImageSet:
        return load_images(name, split, data_root=data_root, download=request.download, limit=limit)

    sets = {
        "in_train": load(pair.in_ref.name, "train", cfg.train_sample),
        "in_test": load(pair.in_ref.name, pair.in_ref.split or "test", cfg.limit),
        "out_test": load(pair.out_ref.name, pair.out_ref.split or "test", cfg.limit),
    }
    want = tuple(run_config["image_shape"])
    out = sets["out_test"]
    if out.shape[0] != want[0]:
        if not cfg.match_channels:
            raise OodbenchError(
                f"{out.name} has {out.shape[0]} channels but the model takes {want[0]}; pass --match-channels "
                f"to convert it, or use gray:{out.name} / an OOD set with {want[0]} channels"
            )
        sets["out_test"] = match_channels(out, want[0])
    for images in sets.values():
        if tuple(images.shape) != want:
            raise OodbenchError(f"{images.name} images are {tuple(images.shape)}, the model takes {want}")
    return sets


class GatherPredictions(pl.Callback):
    """Collects `predict_step` outputs per dataloader and, under DDP, gathers every process's share.

    Lightning's predict sampler splits a set unevenly across processes (no padding) and
    `all_gather` needs equal shapes, so each share is padded with index -1 rows that are dropped
    after gathering. The result equals a single-process run, in dataset index order.
    """

    def __init__(self) -> None:
        self.local: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.gathered: dict[int, dict[str, torch.Tensor]] = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.local.setdefault(dataloader_idx, []).append({k: v.detach() for k, v in outputs.items()})

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        for idx, batches in sorted(self.local.items()):
            parts = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
            if trainer.world_size > 1:
                parts = _gather_padded(pl_module, parts)
            parts = {key: value.cpu() for key, value in parts.items()}
            order = torch.argsort(parts["index"])
            self.gathered[idx] = {key: value[order] for key, value in parts.items()}


def _gather_padded(pl_module: pl.LightningModule, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n_local = parts["index"].new_tensor([parts["index"].numel()])
    n_max = int(pl_module.all_gather(n_local).max())
    padded = {}
    for key, value in parts.items():
        filler = -1 if key == "index" else 0
        pad = value.new_full((n_max - value.numel(),), filler)
        padded[key] = pl_module.all_gather(torch.cat([value, pad])).reshape(-1)
    keep = padded["index"] >= 0
    return {key: value[keep] for key, value in padded.items()}


def score_sets(module: LikelihoodModule, sets: dict[str, ImageSet], cfg: EvalConfig, quiet: bool,
               root: Path) -> tuple[pd.DataFrame, bool]:
    """Per-sample log-likelihood parts and bits/dim of every set, each in dataset index order, from one
    Lightning predict run (one DDP launch). Returns the scores and whether this is the global-zero process."""
    loaders = [DataLoader(TensorDataset(images.images, images.index), batch_size=cfg.batch_size, shuffle=False)
               for images in sets.values()]
    gather = GatherPredictions()
    trainer = make_trainer(root=root, accelerator=cfg.accelerator, devices=cfg.devices, precision=cfg.precision,
                           num_nodes=cfg.num_nodes, strategy=cfg.strategy, quiet=quiet, logger=False,
                           callbacks=[gather])
    trainer.predict(module, loaders, return_predictions=False)
    frames = []
    for idx, (name, images) in enumerate(sets.items()):
        columns = {key: value.numpy().astype(np.float64) for key, value in gather.gathered[idx].items()}
        index = columns.pop("index").astype(np.int64)
        log_px = columns.pop("log_px")
        frame = pd.DataFrame({"set": name, "dataset": images.name, "split": images.split, "index": index,
                              "log_px": log_px, "bpd": bits_per_dim(log_px, math.prod(images.shape)), **columns})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), trainer.is_global_zero


def summary_row(scores: pd.DataFrame, *, run_config: dict[str, Any], pair: Pair, request: EvalRequest,
                checkpoint: Path, discretization: str, bound: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": run_config["model"], "in_dataset": str(pair.in_ref), "out_dataset": str(pair.out_ref),
        "pair": str(pair), "seed": int(run_config["seed"]), "score": "likelihood", "unit": "bits/dim",
        "discretization": discretization, "bound": bound,
    }
    by_set = {name: scores[scores["set"] == name]["bpd"].to_numpy() for name in SETS}
    for name in SETS:
        row[f"n_{name}"] = int(by_set[name].size)
        row[f"bpd_{name}_mean"] = float(by_set[name].mean())
        row[f"bpd_{name}_std"] = float(by_set[name].std(ddof=1)) if by_set[name].size > 1 else 0.0
    metrics = ood_metrics(likelihood_score(by_set["in_test"]), likelihood_score(by_set["out_test"]))
    row.update(metrics.as_dict())
    row.update({"run": str(request.run.root), "checkpoint": checkpoint.name})
    return row


def _set_iw_samples(module: LikelihoodModule, k: int, run_config: dict[str, Any]) -> None:
    if not hasattr(module.model, "iw_samples"):
        raise OodbenchError(f"--iw-samples applies to latent-variable models (vae); this run is a {run_config['model']}, "
                            "whose likelihood needs no samples: drop --iw-samples")
    if k < 1:
        raise OodbenchError(f"bad --iw-samples {k}: must be at least 1 (1 scores the ELBO)")
    module.model.iw_samples = k


def evaluate(request: EvalRequest) -> EvalResult:
    pair = parse_pair(request.pair)
    cfg = request.eval
    if cfg.batch_size < 1:
        raise OodbenchError(f"bad batch size {cfg.batch_size}: must be at least 1")
    run_config = yaml.safe_load(request.run.config.read_text()) if request.run.config.is_file() else None
    if not isinstance(run_config, dict) or "dataset" not in run_config:
        raise OodbenchError(f"{request.run.root} is not an oodbench run folder (no valid config.yaml)")
    checkpoint = request.run.checkpoint(request.checkpoint)
    module = load_module(checkpoint)
    module.noise_seed = cfg.noise_seed
    if cfg.iw_samples is not None:
        _set_iw_samples(module, cfg.iw_samples, run_config)
    sets = _load_sets(pair, run_config, request)

    folder = request.run.eval_dir(str(pair.in_ref), str(pair.out_ref))
    scores, writer = score_sets(module, sets, cfg, request.quiet, request.run.root)
    scores = scores[[c for c in SCORE_COLUMNS if c in scores] + [c for c in scores if c not in SCORE_COLUMNS]]
    if not np.isfinite(scores["bpd"]).all():
        raise OodbenchError(f"the model in {checkpoint} gives non-finite likelihoods; retrain it")
    row = summary_row(scores, run_config=run_config, pair=pair, request=request, checkpoint=checkpoint,
                      discretization=module.model.discretization, bound=module.model.bound)
    if not writer:  # under DDP only the global-zero process writes
        return EvalResult(folder=folder, metrics=row, scores=scores, written=False)
    write_with(folder / "scores.csv", lambda tmp: scores.to_csv(tmp, index=False, float_format="%.6f"))
    write_yaml(folder / "config.yaml", {"pair": str(pair), "checkpoint": str(checkpoint),
                                        "data_root": request.data_root, "eval": to_plain(cfg)})
    write_json(folder / "metrics.json", row)
    return EvalResult(folder=folder, metrics=row, scores=scores)
