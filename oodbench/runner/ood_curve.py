"""The likelihood over training: bits/dim of fixed image subsets at points during a run (`logs/ood_curve.csv`).

Nalisnick et al. (ICLR 2019, PAPER.md) report that early stopping does not help: the OOD test set gets
the higher likelihood (lower bits/dim) throughout training, not only at its end. `OodCurve` records
that curve for one run: every `curve_every` optimizer steps (TrainConfig) it scores, on the global-zero
process, fixed seeded subsets of `curve_images` images (TrainRequest) each of
- in_train: images the run trains on (the first of the seeded order evaluation's in-train set uses);
- in_test: the training dataset's test split;
- ood: each OOD set the request names (`TrainRequest.ood_sets`, dataset references such as "mnist",
  "gray:cifar10", "svhn@train"; default split "test"), one row per set.
A set whose data is missing, or whose images are not the model's shape (pass "gray:NAME", or
`curve_match_channels`, as evaluation's --match-channels), is skipped with a one-line notice: the
curve is a diagnostic and never fails training.

When it runs: `curve_every` N >= 1 scores at step 0 (the initialised model, fresh runs only) and
every N steps after; None ("auto") is about four points per epoch (every batches-per-epoch // 4 steps)
when the request names OOD sets, and off otherwise; 0 is off.

Scoring is evaluation's: float32 with autocast off, the model in eval mode under `no_grad`,
index-seeded dequantisation noise, the likelihood (`log_prob`) in bits/dim of the dataset's own
image. It must not change what is learned: the random generators (CPU and the model's accelerator)
are restored afterwards, each submodule gets its training flag back, and the optimizer is untouched;
tests/runner/test_ood_curve.py checks that the final weights are identical with and without it.

The file has the fixed columns `CURVE_COLUMNS` and is rewritten whole and atomically at each point
(as `EpochLog` writes `metrics.csv`), so a kill leaves every row of the points before it. On resume
the rows after the checkpoint's step are dropped before training goes on, so a killed and resumed run
ends with the rows of an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from oodbench.atomic import write_with
from oodbench.data import DatasetRef, ImageSet, get_dataset, load_images, match_channels, parse_dataset_ref
from oodbench.errors import OodbenchError
from oodbench.models.module import LikelihoodModule, float32_likelihood
from oodbench.runner.run_loading import held_out, images_among
from oodbench.schema import ood_gets_lower_bpd
from oodbench.units import bits_per_dim

CURVE_COLUMNS = ("step", "epoch", "set", "dataset", "split", "n", "bpd_mean", "bpd_std")
CURVE_IMAGES = 200  # images per scored set: enough for a mean to 0.01 bits/dim, cheap beside an epoch
POINTS_PER_EPOCH = 4  # curve_every=None (auto)


class CurveSet(NamedTuple):
    role: str  # "in_train", "in_test" or "ood"
    images: ImageSet


def curve_on(curve_every: int | None, ood_sets: Sequence[str]) -> bool:
    """Whether a run keeps the curve: `curve_every` >= 1, or None (auto) with OOD sets named."""
    return bool(curve_every) or (curve_every is None and len(ood_sets) > 0)


def curve_sets(training: ImageSet, train_index: np.ndarray, dataset: DatasetRef, ood: Sequence[DatasetRef], *,
               run: Path, n: int, data_root: str | None, download: bool, match: bool = False,
               val_index: np.ndarray | None = None,
               notify: Callable[[str], None] = lambda message: None) -> list[CurveSet]:
    """The fixed subsets the curve scores (see the module docstring); `training` is the loaded training
    split, `train_index` the dataset indices the run trains on and `val_index` those it validates on."""
    if n < 1:
        raise OodbenchError(f"the likelihood curve needs at least 1 image per set, not {n}")
    channels, size = training.shape[0], training.shape[1]

    def load(role: str, name: str, split: str) -> ImageSet:
        # As evaluation loads them: a user's own images at the model's channels and size (data/user.py);
        # the in-test set of a user's set without a test/ part is the images it neither trains nor validates on.
        user = get_dataset(parse_dataset_ref(name).base).user
        if role == "in_test" and user is not None and user.shared_splits:
            used = train_index if val_index is None else np.concatenate([train_index, val_index])
            return held_out(training, used, None, run)
        return load_images(name, split, data_root=data_root, download=download, channels=channels, size=size)

    # The same seeded choice as evaluation's in-train set, so these are among the images it scores.
    sets = [CurveSet("in_train", images_among(training, train_index, n, "trains on"))]
    wanted = [("in_test", dataset.name, "test"), *(("ood", ref.name, ref.split or "test") for ref in ood)]
    for role, name, split in wanted:
        try:
            images = load(role, name, split)
            if match and images.shape[0] != channels:
                images = match_channels(images, channels)
        except OodbenchError as exc:
            notify(f"likelihood curve: skipping {name} {split}: {str(exc).splitlines()[0]}")
            continue
        if images.shape != training.shape or len(images) == 0:
            converts = " (matching channels would convert it)" if images.shape[0] != channels else ""
            notify(f"likelihood curve: skipping {name} {split}: {len(images)} images of shape {images.shape}, the "
                   f"model takes {training.shape}{converts}")
            continue
        # Test splits may be sorted (by class, by source file): a seeded sample, not the first n.
        sets.append(CurveSet(role, images_among(images, images.index.numpy(), n, "is scored on")))
    return sets


def set_bpd(module: LikelihoodModule, images: ImageSet, batch_size: int) -> np.ndarray:
    """Per-image bits/dim of `images` as evaluation computes it, leaving the module and every random
    generator as they were (training goes on exactly as without it)."""
    device = module.device
    modes = {sub: sub.training for sub in module.modules()}
    accelerators = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    dims = module.bpd_dims or math.prod(images.shape)
    values = []
    # fork_rng: a model whose likelihood draws from the global generator must not shift training's draws.
    with torch.random.fork_rng(devices=accelerators), torch.no_grad(), float32_likelihood(device):
        module.eval()
        try:
            for start in range(0, len(images), batch_size):
                x = images.images[start:start + batch_size].to(device)
                index = images.index[start:start + batch_size].to(device)
                log_px = module.model.log_prob(x, module._eval_noise(x, index))
                values.append(bits_per_dim(log_px.float(), dims).cpu())
        finally:
            for sub, training in modes.items():
                sub.training = training
    return torch.cat(values).numpy().astype(np.float64)


def read_curve(path: Path) -> pd.DataFrame:
    """The rows of an `ood_curve.csv` (empty, with the columns, when missing or unreadable)."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, ValueError):  # missing, empty, or cut short by hand
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    return frame if set(CURVE_COLUMNS) <= set(frame.columns) else pd.DataFrame(columns=list(CURVE_COLUMNS))


def kept_rows(curve: pd.DataFrame, resumed_step: int) -> pd.DataFrame:
    """The rows a run resumed at `resumed_step` keeps: those of the points up to its checkpoint (a fresh
    start, step 0, keeps none: it scores step 0 again). Later rows came from a session that was killed
    after the checkpoint; the resumed run computes them again."""
    if resumed_step <= 0 or curve.empty:
        return curve.iloc[0:0]
    return curve[curve["step"].astype(int) <= resumed_step].reset_index(drop=True)


class OodCurve(pl.Callback):
    """Scores `sets` every `every` optimizer steps (None: POINTS_PER_EPOCH a epoch) into `path`."""

    def __init__(self, path: Path, sets: Sequence[CurveSet], *, every: int | None, batch_size: int) -> None:
        self.path, self.sets, self.every, self.batch_size = Path(path), list(sets), every, batch_size
        self.rows = pd.DataFrame(columns=list(CURVE_COLUMNS))
        self._last_step: int | None = None

    def _interval(self, trainer: pl.Trainer) -> int:
        if self.every is not None:
            return self.every
        return max(1, int(trainer.num_training_batches) // POINTS_PER_EPOCH)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only global zero scores and writes; the others wait for it at the next gradient all-reduce.
        if not trainer.is_global_zero:
            return
        step = trainer.global_step  # restored from the checkpoint by now, on resume
        self.rows = kept_rows(read_curve(self.path), step)
        if step == 0:
            self._score(trainer, pl_module)
        elif self.path.is_file():
            self._write()  # drop the killed session's later rows even if no point follows
        self._last_step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        # The last-step guard: under gradient accumulation several batches end at one optimizer step.
        if trainer.is_global_zero and step != self._last_step and step % self._interval(trainer) == 0:
            self._last_step = step
            self._score(trainer, pl_module)

    def _score(self, trainer: pl.Trainer, module: LikelihoodModule) -> None:
        step, per_epoch = trainer.global_step, max(1, int(trainer.num_training_batches))
        new = []
        for role, images in self.sets:
            bpd = set_bpd(module, images, self.batch_size)
            new.append({"step": step, "epoch": step / per_epoch, "set": role, "dataset": images.name,
                        "split": images.split, "n": len(bpd), "bpd_mean": float(bpd.mean()),
                        "bpd_std": float(bpd.std(ddof=1)) if len(bpd) > 1 else math.nan})
        self.rows = pd.concat([frame for frame in (self.rows, pd.DataFrame(new, columns=list(CURVE_COLUMNS)))
                               if not frame.empty], ignore_index=True)
        self._write()

    def _write(self) -> None:
        write_with(self.path, lambda tmp: self.rows.to_csv(tmp, index=False, float_format="%.6f"))


def early_stopping_finding(curve: pd.DataFrame, *, min_step: int = 1) -> dict[str, Any]:
    """Whether the paper's "early stopping does not help" holds in `curve` (an `ood_curve.csv`): at every
    step from `min_step` on (default: after the first update, not the untrained model), each OOD set's
    mean bits/dim is below the in-distribution test set's. Only steps that have both rows count.

    Returns {"holds": True/False (None when nothing could be compared), "points": (step, OOD set) pairs
    compared, "steps": distinct steps compared, "sets": {"DATASET@SPLIT": {"points", "ood_lower",
    "holds", "first_not_lower": the first step where it was not, or None}}}.
    """
    curve = curve[curve["step"].astype(int) >= min_step]
    in_test = curve[curve["set"] == "in_test"].groupby("step")["bpd_mean"].first()
    sets: dict[str, dict[str, Any]] = {}
    compared_steps: set[int] = set()
    for (dataset, split), rows in curve[curve["set"] == "ood"].groupby(["dataset", "split"], sort=True):
        ood = rows.groupby("step")["bpd_mean"].first()
        steps = ood.index.intersection(in_test.index).sort_values()
        lower = [ood_gets_lower_bpd(in_test[s], ood[s]) for s in steps]
        compared_steps.update(int(s) for s in steps)
        sets[f"{dataset}@{split}"] = {
            "points": len(steps), "ood_lower": sum(lower), "holds": all(lower) if len(steps) else None,
            "first_not_lower": next((int(s) for s, low in zip(steps, lower, strict=True) if not low), None)}
    verdicts = [entry["holds"] for entry in sets.values() if entry["holds"] is not None]
    return {"holds": all(verdicts) if verdicts else None, "points": sum(e["points"] for e in sets.values()),
            "steps": len(compared_steps), "sets": sets}
