"""Lightning callbacks of the training run: the per-epoch log, `--max-minutes` and the test failpoints.

`EpochLog` keeps `logs/metrics.csv`, one row per completed epoch, and the training time summed over
every session of a run. It replaces Lightning's CSV logger, which deletes or rewrites the previous
session's file on resume (a run killed during its first epochs could then never finish: the resumed
logger failed on the shorter header the killed one had left). The file is rewritten whole and
atomically at each epoch end, keeping the rows of the epochs before the one just finished, so a kill
at any moment leaves the rows of the epochs whose checkpoint exists (or one more, which the resumed
run replaces). Its state (seconds trained) travels in every checkpoint, so `trained.json` counts the
time of all sessions, not only the last.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

from oodbench import failpoints
from oodbench.atomic import write_text

LOG_COLUMNS = ("epoch", "step", "train_bpd", "val_bpd", "lr", "seconds")


def read_epoch_log(path: Path) -> list[dict[str, str]]:
    """The rows of a `metrics.csv` written by `EpochLog` (empty when missing or unreadable)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return []
    return [row for row in rows if row.get("epoch", "").isdigit()]


def _number(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return "" if math.isnan(value) else f"{value:.6f}"


def checkpoint_progress(checkpoint: dict[str, Any]) -> tuple[int, float | None]:
    """(complete epochs, seconds trained) when `checkpoint` was saved, from `EpochLog`'s saved state."""
    state = checkpoint.get("callbacks", {}).get(EpochLog.__qualname__, {})
    return int(state.get("epochs", 0)), (float(state["seconds"]) if "seconds" in state else None)


class SessionTimer(Timer):
    """`--max-minutes`: Lightning's Timer (stops after the batch that uses up the budget, all DDP processes
    together), counting this command's training only. Lightning's own restores the time of earlier
    sessions from the checkpoint, so a `--resume` after a run that used up its minutes stopped before its
    first step and reported success; here each command trains for the minutes it is given."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # the earlier sessions' time is EpochLog's (trained.json counts every session)


class EpochLog(pl.Callback):
    """One row per completed epoch in `path`, and the seconds trained across resumed sessions."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.seconds_before = 0.0  # trained in earlier sessions, restored from the checkpoint
        self.epochs = 0  # complete epochs so far (saved in every checkpoint: how far a checkpoint got)
        self._session_started: float | None = None
        self._batches = 0

    @property
    def seconds(self) -> float:
        running = time.monotonic() - self._session_started if self._session_started is not None else 0.0
        return self.seconds_before + running

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds_before = float(state_dict.get("seconds", 0.0))
        self.epochs = int(state_dict.get("epochs", 0))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._session_started = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch cut short by --max-minutes gets no row: its "mean" would be of a part of the data.
        if self._batches < trainer.num_training_batches:
            return
        epoch = self.epochs = trainer.current_epoch + 1
        if not trainer.is_global_zero:
            return
        row = {"epoch": str(epoch), "step": str(trainer.global_step),
               "train_bpd": _number(trainer.callback_metrics.get("train_bpd_epoch")),
               "val_bpd": _number(trainer.callback_metrics.get("val_bpd")),
               "lr": _number(trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None),
               "seconds": f"{self.seconds:.1f}"}
        rows = [r for r in read_epoch_log(self.path) if int(r["epoch"]) < epoch] + [row]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, text.getvalue())
        failpoints.reached("epoch-logged")  # the row is written, the epoch's checkpoint not yet


class Failpoints(pl.Callback):
    """Calls `failpoints.reached` at the moments of a training or scoring run (tests only)."""

    def __init__(self, resuming: bool) -> None:
        self.resuming = resuming

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resuming:
            failpoints.reached("resumed")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        failpoints.reached("train-batch")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        failpoints.reached("validation")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        failpoints.reached("scoring")
