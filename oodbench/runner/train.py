"""`oodbench train`: fit one model family on one dataset and leave a run folder (see layout.py).

The validation set is held out from the end of the training split, so test sets stay untouched
for evaluation. Actnorm's data-dependent initialisation runs on a fixed batch before fitting, so
every DDP process starts from identical parameters.
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Sampler, TensorDataset

import oodbench
from oodbench.atomic import write_json, write_yaml
from oodbench.config import TrainConfig, to_plain
from oodbench.data import ImageSet, load_images, parse_dataset_ref
from oodbench.errors import OodbenchError
from oodbench.models.families import model_config
from oodbench.models.module import LikelihoodModule
from oodbench.runner.layout import RunPaths
from oodbench.runner.lightning import make_trainer

INIT_BATCH = 256  # images for actnorm's data-dependent initialisation (Glow used 512)


class EpochShuffle(Sampler[int]):
    """A random order that depends only on (seed, epoch); Lightning calls `set_epoch` every epoch,
    so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class TrainResult:
    paths: RunPaths
    epochs: int  # epochs completed
    steps: int  # optimizer steps taken
    val_bpd: float | None  # best validation bits/dim, if there was a validation set
    seconds: float
    first_process: bool = True  # False on DDP processes other than global zero


@dataclass(frozen=True)
class TrainRequest:
    model: str
    dataset: str
    run_dir: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    model_settings: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    download: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False


def versions() -> dict[str, str]:
    return {"oodbench": oodbench.__version__, "torch": str(torch.__version__), "pytorch_lightning": str(pl.__version__),
            "python": platform.python_version()}


def holdout(data: ImageSet, cfg: TrainConfig) -> tuple[TensorDataset, TensorDataset | None]:
    """(train, validation) datasets of (uint8 images, index): validation is the last `val_size` images."""
    n = len(data)
    n_val = min(cfg.val_size, n // 5)
    n_train = n - n_val
    if cfg.limit_train is not None:
        n_train = min(n_train, cfg.limit_train)
    if n_train < 1:
        raise OodbenchError(f"{data.name} has too few training images ({n}) to train on")
    train_set = TensorDataset(data.images[:n_train], data.index[:n_train])
    val_set = TensorDataset(data.images[n - n_val:], data.index[n - n_val:]) if n_val else None
    return train_set, val_set


def _prepare_run_dir(request: TrainRequest, paths: RunPaths) -> None:
    existing = paths.config.is_file() or paths.checkpoints.exists()
    if existing and request.overwrite:
        for sub in (paths.checkpoints, paths.logs, paths.root / "eval"):
            shutil.rmtree(sub, ignore_errors=True)
        paths.config.unlink(missing_ok=True)
        paths.trained.unlink(missing_ok=True)
    elif existing and not request.resume:
        raise OodbenchError(
            f"run folder {paths.root} already holds a run; pass --resume to continue it or --overwrite to start over"
        )


def _loggers(paths: RunPaths) -> list:
    """The per-epoch CSV log, plus TensorBoard's event files when tensorboard is installed."""
    loggers: list = [CSVLogger(save_dir=paths.root, name="logs", version="")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(save_dir=paths.root, name="logs", version="tensorboard"))
    return loggers


def _max_time(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.epochs is None and cfg.max_minutes is None:
        raise OodbenchError("give --epochs or --max-minutes (or both) to bound training")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise OodbenchError(f"bad --epochs {cfg.epochs}: must be at least 1")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise OodbenchError(f"bad --max-minutes {cfg.max_minutes}: must be positive")
    limits: dict[str, Any] = {"max_epochs": cfg.epochs if cfg.epochs is not None else -1}
    if cfg.max_minutes is not None:
        limits["max_time"] = timedelta(minutes=cfg.max_minutes)
    return limits


def train(request: TrainRequest) -> TrainResult:
    started = time.perf_counter()
    cfg = request.train
    limits = _max_time(cfg)
    if cfg.batch_size < 1:
        raise OodbenchError(f"bad batch size {cfg.batch_size}: must be at least 1")
    ref = parse_dataset_ref(request.dataset)
    model_config(request.model, request.model_settings)  # bad names and settings fail before any data loads
    paths = RunPaths(Path(request.run_dir))
    resuming = request.resume and paths.last.is_file()
    # Under DDP every process runs this function; only the first prepares the folder and writes the config
    # (Lightning re-launches the command for the other ranks, which then find the folder already made).
    first_process = rank_zero_only.rank == 0
    if first_process:
        _prepare_run_dir(request, paths)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_images(ref.name, ref.split or "train", data_root=request.data_root, download=request.download)
    train_set, val_set = holdout(data, cfg)
    model_cfg = model_config(request.model, request.model_settings, image_shape=tuple(data.shape))
    module = LikelihoodModule(family=request.model, model_settings=to_plain(model_cfg),
                              train_settings=to_plain(cfg))
    if first_process:
        write_yaml(paths.config, {
            "model": request.model, "dataset": request.dataset, "seed": cfg.seed,
            "data_root": request.data_root, "data_source": data.source, "image_shape": list(data.shape),
            "n_train": len(train_set), "n_val": len(val_set) if val_set else 0,
            "model_settings": to_plain(model_cfg), "train": to_plain(cfg), "versions": versions(),
        })
    if not resuming:
        with torch.no_grad():
            module.model.training_log_prob(train_set.tensors[0][:INIT_BATCH])

    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=EpochShuffle(len(train_set), cfg.seed),
                              drop_last=len(train_set) > cfg.batch_size, num_workers=cfg.num_workers,
                              pin_memory=torch.cuda.is_available())
    val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size, 256), num_workers=cfg.num_workers) if val_set else None
    # `last.ckpt` after every epoch (Lightning keeps the most recent when nothing is monitored): resuming
    # from an epoch end is exact, see EpochShuffle and LikelihoodModule.on_train_batch_start; a kill
    # mid-epoch repeats that epoch identically. `best.ckpt` follows the validation bits/dim.
    callbacks = [ModelCheckpoint(dirpath=paths.checkpoints, filename="last", save_top_k=1, enable_version_counter=False)]
    if val_loader is not None:
        callbacks.append(ModelCheckpoint(dirpath=paths.checkpoints, filename="best", monitor="val_bpd", mode="min",
                                         save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False))
    trainer = make_trainer(
        root=paths.root, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=cfg.precision, quiet=request.quiet, callbacks=callbacks,
        logger=_loggers(paths), gradient_clip_val=cfg.grad_clip_norm,
        gradient_clip_algorithm="norm", log_every_n_steps=10, deterministic=False, **limits,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(paths.last) if resuming else None)
    if not paths.last.is_file():
        trainer.save_checkpoint(paths.last)
    best = callbacks[-1].best_model_score if val_loader is not None else None
    result = TrainResult(paths=paths, epochs=trainer.current_epoch, steps=trainer.global_step,
                         val_bpd=float(best) if best is not None else None, seconds=time.perf_counter() - started,
                         first_process=trainer.is_global_zero)
    if trainer.is_global_zero:
        write_json(paths.trained, {"epochs": result.epochs, "steps": result.steps, "val_bpd": result.val_bpd,
                                   "seconds": round(result.seconds, 1)})
    return result
