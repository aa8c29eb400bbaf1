"""`oodbench train`: fit one model family on one dataset and leave a run folder (see layout.py).

Which images: a fixed permutation of the training split (the same for every training seed, so all
seeds of a setup validate on the same images) holds out its first `val_size` images (at most a fifth)
for validation and the "best" checkpoint, and trains on the next `limit_train` (or all the rest). A
slice from the start or the end of the split would be biased where files are sorted by class, as
Tiny-ImageNet's training folder is. The dataset indices of both parts are recorded in `splits.npz`,
so that evaluation's "in-train" set holds only images the model was trained on.

Rerunning the same command is always safe:
- a folder with no checkpoint (nothing, or a start that failed or was killed before the first epoch
  ended) is started afresh;
- an unfinished run (a checkpoint, no `trained.json`) with the same settings resumes from its last
  epoch-end checkpoint, which replays exactly what an uninterrupted run computes;
- a finished run with the same settings is left as it is.
`--resume` continues a run that has a checkpoint, e.g. with a larger `--epochs`; `--overwrite` starts over.

Actnorm's data-dependent initialisation runs on a fixed batch before fitting, so every DDP process
starts from identical parameters.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import platform
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning import loggers
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Sampler, TensorDataset

import oodbench
from oodbench import failpoints
from oodbench.atomic import check_writable, write_json
from oodbench.config import TrainConfig, to_plain
from oodbench.data import DatasetRef, get_dataset, load_images, parse_dataset_ref
from oodbench.data.loading import canonical_root
from oodbench.data.perturb import perturb
from oodbench.errors import Interrupted, OodbenchError
from oodbench.models.families import model_config
from oodbench.models.module import LikelihoodModule
from oodbench.runner.callbacks import EpochLog, Failpoints, SessionTimer, checkpoint_progress
from oodbench.runner.layout import RunPaths
from oodbench.runner.locking import hold_run
from oodbench.runner.ood_curve import CURVE_IMAGES, OodCurve, curve_on, curve_sets
from oodbench.runner.lightning import make_trainer
from oodbench.schema import BUDGET_KEYS, RunRecord, write_splits

INIT_BATCH = 256  # images for actnorm's data-dependent initialisation (Glow used 512)
SPLIT_SEED = 0  # the validation hold-out's permutation: one for every training seed


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
    epochs: int  # complete epochs
    steps: int  # optimizer steps taken
    val_bpd: float | None  # best validation bits/dim, if there was a validation set
    seconds: float  # training time over every session of the run
    partial_steps: int = 0  # steps of an epoch that --max-minutes cut short
    first_process: bool = True  # False on DDP processes other than global zero
    already_trained: bool = False  # the run was complete before this call; nothing ran


@dataclass(frozen=True)
class TrainRequest:
    model: str
    dataset: str
    run_dir: Path
    train: TrainConfig = field(default_factory=TrainConfig)
    model_settings: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    download: bool = False
    resume: bool = False  # continue a run that has a checkpoint, possibly with a larger budget
    overwrite: bool = False
    quiet: bool = False
    notify: Callable[[str], None] = field(default=lambda message: None, compare=False)
    # A user's own images (`folder:` / `npz:`, data/user.py): the side they are brought to (None: 32),
    # and whether unreadable files are left out instead of being an error.
    image_size: int | None = None
    skip_unreadable: bool = False
    # The likelihood over training (runner/ood_curve.py; on as TrainConfig.curve_every says): the OOD sets
    # scored beside the run's own training and test images ("mnist", "gray:cifar10", "svhn@train"), the
    # images per set, and whether an OOD set of other channels is converted (as evaluate's --match-channels).
    ood_sets: tuple[str, ...] = ()
    curve_images: int = CURVE_IMAGES
    curve_match_channels: bool = False


def versions() -> dict[str, str]:
    return {"oodbench": oodbench.__version__, "torch": str(torch.__version__), "pytorch_lightning": str(pl.__version__),
            "python": platform.python_version()}


def holdout(n: int, cfg: TrainConfig, *, test_part: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) positions into a split of `n` images, each sorted; see the module docstring.
    `test_part`: a set that is its own test split (a flat folder, an npz file) also leaves out as many
    images again, after the validation ones, for evaluation's in-distribution test set (evaluate.held_out):
    the images the best checkpoint and the fitted scores are picked on are never the ones they are
    tested on."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = min(cfg.val_size, n // 5)
    rest = order[2 * n_val:] if test_part else order[n_val:]
    n_train = min(len(rest), cfg.limit_train) if cfg.limit_train is not None else len(rest)
    if n_train < 1:
        raise OodbenchError(f"too few training images ({n}) to train on")
    return rest[:n_train].sort().values, order[:n_val].sort().values


# --logger NAME -> the package it needs (csv and none need none)
_LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _loggers(paths: RunPaths, name: str) -> list:
    """Lightning's logger for `--logger` (the per-epoch CSV of the run is `EpochLog`'s, always); a logger
    whose package is missing is an error naming it; "auto" is TensorBoard when it is installed."""
    if name == "auto":
        name = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"
    package = _LOGGER_PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise OodbenchError(f"--logger {name} needs the {package} package, which is not installed: pip install {package} "
                            "(or pick --logger csv)")
    root = str(paths.logs)
    made = {
        "none": lambda: [],
        "csv": lambda: [loggers.CSVLogger(save_dir=str(paths.root), name="logs", version="csv")],
        "tensorboard": lambda: [loggers.TensorBoardLogger(save_dir=str(paths.root), name="logs", version="tensorboard")],
        "wandb": lambda: [loggers.WandbLogger(save_dir=root, project="oodbench", name=paths.root.name)],
        "mlflow": lambda: [loggers.MLFlowLogger(experiment_name="oodbench", run_name=paths.root.name,
                                                tracking_uri=f"file:{paths.logs / 'mlruns'}")],
    }
    return made[name]()


def _limits(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.epochs is None and cfg.max_minutes is None:
        raise OodbenchError("give --epochs or --max-minutes (or both) to bound training")
    return {"max_epochs": cfg.epochs if cfg.epochs is not None else -1}


def _first_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str | None:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} is {a!r} there, {b!r} now"
    return None


def _clear(paths: RunPaths) -> None:
    for sub in (paths.checkpoints, paths.logs, paths.statistics, paths.root / "eval"):
        shutil.rmtree(sub, ignore_errors=True)
    for path in (paths.config, paths.trained, paths.splits):
        path.unlink(missing_ok=True)


def _checkpoint_epoch(path: Path) -> int:
    """Complete epochs in a checkpoint (read through mmap: only the few bytes needed)."""
    try:
        return checkpoint_progress(torch.load(path, mmap=True, weights_only=True, map_location="cpu"))[0]
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported when it is loaded
        return 0


def _plan(request: TrainRequest, paths: RunPaths, record: RunRecord) -> str:
    """"fresh", "resume" or "done" for this folder and request (first process only); see the module docstring."""
    has_checkpoint = paths.last.is_file()
    if request.overwrite or not has_checkpoint:
        if request.resume and not request.overwrite:
            raise OodbenchError(f"--resume: {paths.root} has no checkpoint to resume from; drop --resume to start "
                                "the run")
        return "fresh"
    old = RunRecord.read(paths.config)
    old = dataclasses.replace(old, data_root=canonical_root(old.data_root))  # a record of an older oodbench
    difference = _first_difference(old.learning_settings(), record.learning_settings())
    if difference:
        raise OodbenchError(f"run folder {paths.root} holds a run with other settings ({difference}); pass "
                            "--overwrite to start over, or another --run-dir")
    if not paths.trained.is_file() or request.resume:
        return "resume"
    budget_changed = any(old.train.get(k) != record.train.get(k) for k in BUDGET_KEYS)
    if budget_changed:
        done = _finished(paths)
        cut = f" and {plural(done.partial_steps, 'step')} (stopped by --max-minutes)" if done.partial_steps else ""
        raise OodbenchError(f"run {paths.root} is already trained ({plural(done.epochs, 'complete epoch')}{cut}); "
                            "pass --resume with the new --epochs/--max-minutes to train it further, or --overwrite to "
                            "retrain")
    return "done"


def plural(n: int, word: str) -> str:
    """"1 epoch", "2 epochs": a count in words, for messages."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _finished(paths: RunPaths) -> TrainResult:
    done = json.loads(paths.trained.read_text())
    return TrainResult(paths=paths, epochs=int(done["epochs"]), steps=int(done["steps"]), val_bpd=done.get("val_bpd"),
                       seconds=float(done["seconds"]), partial_steps=int(done.get("partial_steps", 0)),
                       already_trained=True)


def train(request: TrainRequest) -> TrainResult:
    cfg = request.train
    limits = _limits(cfg)
    ref = parse_dataset_ref(request.dataset)
    ood_refs = [parse_dataset_ref(name) for name in request.ood_sets]  # a misspelt OOD set fails here, not later
    model_config(request.model, request.model_settings)  # bad names and settings fail before any data loads
    paths = RunPaths(Path(request.run_dir))
    check_writable(paths.root, "--run-dir")
    logger = _loggers(paths, cfg.logger)  # a missing package fails before any data loads
    with hold_run(paths, shared=False):  # a second process on this run is refused now, before any data loads
        return _train(request, paths, ref, ood_refs, logger, limits)


def _train(request: TrainRequest, paths: RunPaths, ref: DatasetRef, ood_refs: list[DatasetRef], logger: list,
           limits: dict[str, Any]) -> TrainResult:
    cfg = request.train
    # Under DDP every process runs this function; only the first decides, prepares the folder and writes
    # (Lightning re-launches the command for the other ranks, which then find the folder already made).
    first_process = rank_zero_only.rank == 0

    spec = get_dataset(ref.base)
    if request.image_size is not None and spec.user is None:
        raise OodbenchError(f"--image-size applies to folder: and npz: datasets; {ref.base} is "
                            f"{spec.shape[1]}x{spec.shape[2]} as registered: drop --image-size")
    data = load_images(ref.name, ref.split or "train", data_root=request.data_root, download=request.download,
                       size=request.image_size, skip_unreadable=request.skip_unreadable)
    train_pos, val_pos = holdout(len(data), cfg, test_part=spec.user is not None and spec.user.shared_splits)
    train_set = TensorDataset(data.images[train_pos], data.index[train_pos])
    val_set = TensorDataset(data.images[val_pos], data.index[val_pos]) if len(val_pos) else None
    model_cfg = model_config(request.model, request.model_settings, image_shape=tuple(data.shape))
    record = RunRecord(
        model=request.model, dataset=ref.name if spec.user is not None else request.dataset, seed=cfg.seed,
        data_root=canonical_root(request.data_root), data_source=data.source, data_digest=data.digest, image_shape=tuple(data.shape),
        data_shape=spec.native_shape if spec.user is None else tuple(data.shape),
        n_train=len(train_set), n_val=len(val_set) if val_set else 0, model_settings=to_plain(model_cfg),
        train=to_plain(cfg), versions=versions())
    plan = _plan(request, paths, record) if first_process else ("resume" if paths.last.is_file() else "fresh")
    if plan == "done":
        return _finished(paths)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = LikelihoodModule(family=request.model, model_settings=to_plain(model_cfg), train_settings=to_plain(cfg),
                              bpd_dims=record.bpd_dims)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=EpochShuffle(len(train_set), cfg.seed),
                              drop_last=len(train_set) > cfg.batch_size, num_workers=cfg.num_workers,
                              pin_memory=torch.cuda.is_available())
    val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size, 256), num_workers=cfg.num_workers) if val_set else None
    # `last.ckpt` after every epoch (Lightning keeps the most recent when nothing is monitored): resuming
    # from an epoch end is exact, see EpochShuffle and LikelihoodModule.on_train_batch_start; a kill
    # mid-epoch repeats that epoch identically. `best.ckpt` follows the validation bits/dim.
    epoch_log = EpochLog(paths.epoch_log)
    callbacks: list[pl.Callback] = [epoch_log, ModelCheckpoint(
        dirpath=paths.checkpoints, filename="last", save_top_k=1, enable_version_counter=False)]
    best_checkpoint = None
    if val_loader is not None:
        best_checkpoint = ModelCheckpoint(dirpath=paths.checkpoints, filename="best", monitor="val_bpd", mode="min",
                                          save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
        callbacks.append(best_checkpoint)
    if first_process and curve_on(cfg.curve_every, request.ood_sets):  # global zero scores the curve alone
        sets = curve_sets(data, train_set.tensors[1].numpy(), ref, ood_refs, run=paths.root, n=request.curve_images,
                          val_index=data.index[val_pos].numpy(), data_root=request.data_root, download=request.download,
                          match=request.curve_match_channels, notify=request.notify)
        callbacks.append(OodCurve(paths.ood_curve, sets, every=cfg.curve_every, batch_size=max(cfg.batch_size, 256)))
    if cfg.max_minutes is not None:  # whichever comes first, these minutes or the epochs
        callbacks.append(SessionTimer(duration=timedelta(minutes=cfg.max_minutes)))
    if failpoints.armed():
        callbacks.append(Failpoints(resuming=plan == "resume"))
    # Built before anything is written: hardware this machine lacks fails here, leaving the folder as it was.
    trainer = make_trainer(
        root=paths.root, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=cfg.precision, quiet=request.quiet, callbacks=callbacks,
        logger=logger, gradient_clip_val=cfg.grad_clip_norm,
        gradient_clip_algorithm="norm", log_every_n_steps=10, deterministic=False, **limits,
    )
    if first_process:
        if plan == "fresh":
            _clear(paths)
        else:
            request.notify(f"resuming {paths.root} after epoch {_checkpoint_epoch(paths.last)}")
            paths.trained.unlink(missing_ok=True)  # a run trained further is unfinished until it ends again
        record.write(paths.config)
        write_splits(paths.splits, train_index=train_set.tensors[1].numpy(),
                     val_index=val_set.tensors[1].numpy() if val_set else torch.empty(0, dtype=torch.int64).numpy())
    failpoints.reached("startup")
    if plan == "fresh":
        init = train_set.tensors[0][:INIT_BATCH]
        if cfg.background is not None:  # a background model initialises on what it trains on
            init = perturb(init, cfg.background, torch.Generator().manual_seed(cfg.seed))
        with torch.no_grad():
            module.model.training_log_prob(init)

    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(paths.last) if plan == "resume" else None)
    except Interrupted as stop:
        done = epoch_log.epochs
        stop.detail = (f"{paths.root} keeps its {done} complete epoch(s) in checkpoints/last.ckpt; rerun the same "
                       "command to resume" if done and paths.last.is_file() else
                       f"no epoch of {paths.root} was complete; rerun the same command to start it again")
        raise
    if not paths.last.is_file():
        trainer.save_checkpoint(paths.last)
    best = best_checkpoint.best_model_score if best_checkpoint is not None else None
    steps, per_epoch = trainer.global_step, max(1, trainer.num_training_batches)
    result = TrainResult(paths=paths, epochs=steps // per_epoch, steps=steps, partial_steps=steps % per_epoch,
                         val_bpd=float(best) if best is not None else None, seconds=epoch_log.seconds,
                         first_process=trainer.is_global_zero)
    if trainer.is_global_zero:
        write_json(paths.trained, {"epochs": result.epochs, "steps": result.steps, "partial_steps": result.partial_steps,
                                   "val_bpd": result.val_bpd, "seconds": round(result.seconds, 1)})
    return result
