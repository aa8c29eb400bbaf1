"""`oodbench evaluate`: score a trained model on in-train, in-test and OOD-test images.

- in-train: `train_sample` images drawn (seeded) from those the run trained on (its `splits.npz`),
  never from its validation hold-out or the rest of the split;
- in-test: the in-distribution dataset's test split (or `IN@SPLIT`);
- out-test: the OOD dataset's test split (or `OUT@SPLIT`).
Scoring runs in float32, whatever precision the run was trained in (models/module.py), and bits/dim is
per dimension of the training dataset's own image (`units.py`).

Writes, atomically, into the run's `eval/<in>_vs_<out>/` folder:
- `scores.csv`: one row per sample, in dataset index order (`schema.SCORE_COLUMNS`, then the family's parts);
- `config.yaml`: the resolved evaluation settings;
- `metrics.json`: one row of `schema.RESULT_COLUMNS`, written last: it marks the evaluation complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from oodbench import failpoints
from oodbench.atomic import check_writable, write_json, write_with, write_yaml
from oodbench.config import EvalConfig, to_plain
from oodbench.data import ImageSet, Pair, load_images, match_channels, parse_pair
from oodbench.errors import Interrupted, OodbenchError
from oodbench.metrics import ood_metrics
from oodbench.models.module import LikelihoodModule
from oodbench.runner.callbacks import Failpoints, checkpoint_progress
from oodbench.runner.layout import RunPaths
from oodbench.runner.lightning import make_trainer, read_checkpoint
from oodbench.schema import RESULT_COLUMNS, SCORE_COLUMNS, SETS, RunRecord, ood_gets_lower_bpd, read_splits, short_hash
from oodbench.scores import likelihood_score
from oodbench.units import bits_per_dim

IN_TRAIN_SEED = 1  # which of the trained-on images the in-train set samples
# Evaluation settings that change no score (index-seeded noise makes scores independent of batching).
_PLACEMENT = ("batch_size", "accelerator", "devices", "num_nodes", "strategy")


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


def load_module(path: Path) -> tuple[LikelihoodModule, dict[str, Any]]:
    """A trained module from a checkpoint read with weights_only=True, and the checkpoint itself;
    an unreadable, foreign or unsafe file is a clear error."""
    checkpoint = read_checkpoint(path)
    try:
        module = LikelihoodModule(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except OodbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing keys, shapes of another model...
        raise OodbenchError(f"checkpoint {path} is not a checkpoint of this oodbench ({type(exc).__name__}); "
                            "retrain the run") from None
    return module.eval(), checkpoint


def trained_images(images: ImageSet, train_index: np.ndarray, n: int) -> ImageSet:
    """`n` images (seeded, in index order) of `images` whose index is among those trained on."""
    positions = np.flatnonzero(np.isin(images.index.numpy(), train_index))
    if len(positions) < len(train_index):
        raise OodbenchError(f"{images.name} {images.split} now holds {len(positions)} of the {len(train_index)} images the "
                            f"run trained on; point --data-root at the data it was trained on")
    order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(IN_TRAIN_SEED))[:n]
    chosen = torch.from_numpy(positions)[order.sort().values]
    return ImageSet(name=images.name, split=images.split, images=images.images[chosen].contiguous(),
                    index=images.index[chosen].contiguous(), source=images.source)


def _load_sets(pair: Pair, record: RunRecord, request: EvalRequest) -> dict[str, ImageSet]:
    cfg = request.eval
    if pair.in_ref.name != record.dataset:
        raise OodbenchError(
            f"run {request.run.root} was trained on {record.dataset}, not {pair.in_ref.name}; "
            f"use --pair {record.dataset}:OUT or another --run"
        )
    data_root = request.data_root if request.data_root is not None else record.data_root
    train_index, _ = read_splits(request.run.splits)

    def load(name: str, split: str, limit: int | None) -> ImageSet:
        return load_images(name, split, data_root=data_root, download=request.download, limit=limit)

    sets = {
        "in_train": trained_images(load(pair.in_ref.name, "train", None), train_index, cfg.train_sample),
        "in_test": load(pair.in_ref.name, pair.in_ref.split or "test", cfg.limit),
        "out_test": load(pair.out_ref.name, pair.out_ref.split or "test", cfg.limit),
    }
    want = tuple(record.image_shape)
    out = sets["out_test"]
    if out.shape[0] != want[0]:
        if not cfg.match_channels:
            raise OodbenchError(
                f"{out.name} has {out.shape[0]} channels but the model takes {want[0]}; pass --match-channels "
                f"to convert it, or use gray:{out.name} / an OOD set with {want[0]} channels"
            )
        sets["out_test"] = match_channels(out, want[0])
    for name, images in sets.items():
        if len(images) == 0:
            raise OodbenchError(f"the {name} set ({images.name} {images.split}) has no images to score; raise "
                                "--limit / --train-sample")
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
               root: Path, bpd_dims: int) -> tuple[pd.DataFrame, bool]:
    """Per-sample log-likelihood parts and bits/dim of every set, each in dataset index order, from one
    Lightning predict run (one DDP launch), in float32. Returns the scores and whether this is the
    global-zero process."""
    loaders = [DataLoader(TensorDataset(images.images, images.index), batch_size=cfg.batch_size, shuffle=False)
               for images in sets.values()]
    gather = GatherPredictions()
    callbacks: list[pl.Callback] = [gather] + ([Failpoints(resuming=False)] if failpoints.armed() else [])
    trainer = make_trainer(root=root, accelerator=cfg.accelerator, devices=cfg.devices, precision="32-true",
                           num_nodes=cfg.num_nodes, strategy=cfg.strategy, quiet=quiet, logger=False,
                           callbacks=callbacks)
    trainer.predict(module, loaders, return_predictions=False)
    frames = []
    for idx, (name, images) in enumerate(sets.items()):
        columns = {key: value.numpy().astype(np.float64) for key, value in gather.gathered[idx].items()}
        index = columns.pop("index").astype(np.int64)
        log_px = columns.pop("log_px")
        frame = pd.DataFrame({"set": name, "dataset": images.name, "split": images.split, "index": index,
                              "log_px": log_px, "bpd": bits_per_dim(log_px, bpd_dims), **columns})
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), trainer.is_global_zero


def _training_done(request: EvalRequest, checkpoint: dict[str, Any]) -> tuple[int, float | None]:
    """(epochs, seconds) the run trained: from trained.json, else (an unfinished run) from the checkpoint."""
    if request.run.trained.is_file():
        done = json.loads(request.run.trained.read_text())
        return int(done["epochs"]), float(done["seconds"])
    return checkpoint_progress(checkpoint)


def summary_row(scores: pd.DataFrame, *, record: RunRecord, pair: Pair, request: EvalRequest, checkpoint: Path,
                discretization: str, bound: str, trained: tuple[int, float | None]) -> dict[str, Any]:
    """One row of `schema.RESULT_COLUMNS`: what was scored against what, bits/dim per set, the metrics."""
    by_set = {name: scores[scores["set"] == name]["bpd"].to_numpy() for name in SETS}
    evaluation = {k: v for k, v in to_plain(request.eval).items() if k not in _PLACEMENT}
    row: dict[str, Any] = {
        "model": record.model, "in_dataset": pair.in_ref.name, "in_split": pair.in_ref.split or "test",
        "out_dataset": pair.out_ref.name, "out_split": pair.out_ref.split or "test", "pair": str(pair),
        "seed": record.seed, "setup": short_hash([record.setup(), evaluation, bound, checkpoint.name]),
        "score": "likelihood", "unit": "bits/dim", "bpd_dims": record.bpd_dims, "discretization": discretization,
        "bound": bound, "n_train": record.n_train, "epochs": trained[0], "train_seconds": trained[1],
    }
    for name in SETS:
        row[f"n_{name}"] = int(by_set[name].size)
    for name in SETS:
        row[f"bpd_{name}_mean"] = float(by_set[name].mean())
        row[f"bpd_{name}_std"] = float(by_set[name].std(ddof=1)) if by_set[name].size > 1 else 0.0
    metrics = ood_metrics(likelihood_score(by_set["in_test"]), likelihood_score(by_set["out_test"]))
    row.update(metrics.as_dict())
    row["ood_lower_bpd"] = ood_gets_lower_bpd(row["bpd_in_test_mean"], row["bpd_out_test_mean"])
    row.update({"run": str(request.run.root), "checkpoint": checkpoint.name})
    assert tuple(row) == RESULT_COLUMNS, "the row must follow schema.RESULT_COLUMNS"
    return row


def _set_iw_samples(module: LikelihoodModule, k: int, record: RunRecord) -> None:
    if not hasattr(module.model, "iw_samples"):
        raise OodbenchError(f"--iw-samples applies to latent-variable models (vae); this run is a {record.model}, "
                            "whose likelihood needs no samples: drop --iw-samples")
    module.model.iw_samples = k


def evaluate(request: EvalRequest) -> EvalResult:
    pair = parse_pair(request.pair)
    cfg = request.eval
    record = RunRecord.read(request.run.config)
    checkpoint_path = request.run.checkpoint(request.checkpoint)
    module, checkpoint = load_module(checkpoint_path)
    module.noise_seed = cfg.noise_seed
    if cfg.iw_samples is not None:
        _set_iw_samples(module, cfg.iw_samples, record)
    sets = _load_sets(pair, record, request)
    check_writable(request.run.root, "--run")
    folder = request.run.eval_dir(str(pair.in_ref), str(pair.out_ref))

    try:
        scores, writer = score_sets(module, sets, cfg, request.quiet, request.run.root, record.bpd_dims)
    except Interrupted as stop:
        stop.detail = f"nothing new was written to {folder}; rerun the same command to score it"
        raise
    scores = scores[[c for c in SCORE_COLUMNS if c in scores] + [c for c in scores if c not in SCORE_COLUMNS]]
    if not np.isfinite(scores["bpd"]).all():
        raise OodbenchError(f"the model in {checkpoint_path} gives non-finite likelihoods; retrain it")
    row = summary_row(scores, record=record, pair=pair, request=request, checkpoint=checkpoint_path,
                      discretization=module.model.discretization, bound=module.model.bound,
                      trained=_training_done(request, checkpoint))
    if not writer:  # under DDP only the global-zero process writes
        return EvalResult(folder=folder, metrics=row, scores=scores, written=False)
    # metrics.json marks the evaluation complete: remove an older one first, so that a kill between the
    # files below never leaves new scores beside old metrics.
    (folder / "metrics.json").unlink(missing_ok=True)
    write_with(folder / "scores.csv", lambda tmp: scores.to_csv(tmp, index=False, float_format="%.6f"))
    write_yaml(folder / "config.yaml", {"pair": str(pair), "checkpoint": str(checkpoint_path),
                                        "data_root": request.data_root, "eval": to_plain(cfg)})
    failpoints.reached("scores-written")
    write_json(folder / "metrics.json", row)
    return EvalResult(folder=folder, metrics=row, scores=scores)
