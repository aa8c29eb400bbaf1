"""Progress while training and scoring: rich bars on a terminal, compact lines in logs and pipes.

On a terminal, Lightning's rich bar, with epochs counted from 1 ("Epoch 1/6", not "Epoch 0/5"; "Epoch
1" under a time budget alone). When stdout is not a terminal (CI logs, `> file`, a scheduler's log),
a bar redraws into nothing useful for minutes, so `LineProgress` prints one line every
`OODBENCH_PROGRESS_SECONDS` (default 30) and one per finished epoch.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

DEFAULT_SECONDS = 30.0
# A scoring run says how long it will take once it has run this long (the first batches include start-up,
# so the estimate errs long) and only if what is left is longer than SAY_IF_LONGER seconds.
ESTIMATE_AFTER_SECONDS = 5.0
SAY_IF_LONGER = 60.0


def epoch_label(trainer: pl.Trainer, epoch: int) -> str:
    """"epoch 3/6" (1-based), or "epoch 3" when only a time budget bounds training."""
    bounded = trainer.max_epochs is not None and trainer.max_epochs > 0
    return f"epoch {epoch + 1}/{trainer.max_epochs}" if bounded else f"epoch {epoch + 1}"


def _metric(trainer: pl.Trainer, name: str) -> str | None:
    value = trainer.callback_metrics.get(name)
    return f"{name.removesuffix('_epoch')} {float(value):.4f}" if value is not None else None


class EpochsFromOne(RichProgressBar):
    """Lightning's rich bar with `epoch_label`'s description."""

    def _get_train_description(self, current_epoch: int) -> str:
        return epoch_label(self.trainer, current_epoch).capitalize()


class LineProgress(ProgressBar):
    """Compact progress lines for output that is not a terminal."""

    def __init__(self, every_seconds: float | None = None) -> None:
        super().__init__()
        self.every = every_seconds if every_seconds is not None else float(
            os.environ.get("OODBENCH_PROGRESS_SECONDS", DEFAULT_SECONDS))
        self._enabled = True
        self._last = self._epoch_started = 0.0
        self._batches_done = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _say(self, text: str) -> None:
        if self._enabled:
            print(text, file=sys.stdout, flush=True)

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        self._last = now
        return True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = self._last = time.monotonic()
        self._batches_done = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batches_done = batch_idx + 1
        if not self._due():
            return
        done, total = batch_idx + 1, self.total_train_batches
        rate = done / max(time.monotonic() - self._epoch_started, 1e-9)
        parts = [epoch_label(trainer, trainer.current_epoch), f"batch {done}/{total}", _metric(trainer, "train_bpd_step"),
                 f"{rate:.2f} batches/s"]
        self._say("  ".join(p for p in parts if p))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.monotonic() - self._epoch_started
        done, total = self._batches_done, self.total_train_batches
        ended = "done" if done >= total else f"stopped after {done} of {total} batches"
        parts = [f"{epoch_label(trainer, trainer.current_epoch)} {ended} in {seconds:.0f}s",
                 _metric(trainer, "train_bpd_epoch"), _metric(trainer, "val_bpd")]
        self._say("  ".join(p for p in parts if p))

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()
        sizes = [len(loader.dataset) for loader in trainer.predict_dataloaders]
        self._say(f"scoring {len(sizes)} set(s): {' + '.join(f'{n:,}' for n in sizes)} images")

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._due():
            total = trainer.num_predict_batches[dataloader_idx]
            self._say(f"scoring set {dataloader_idx + 1}: batch {batch_idx + 1}/{total}")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def scoring_estimate(images_done: int, seconds: float, images_total: int, bound: str) -> str | None:
    """What a long scoring run says after its first batches: its size, the bound it computes and the
    time left at the rate so far; None when what is left is short."""
    if images_done <= 0 or seconds <= 0:
        return None
    rate = images_done / seconds
    left = (images_total - images_done) / rate
    if left < SAY_IF_LONGER:
        return None
    hint = "; --iw-samples and --limit make it shorter" if bound.startswith("iwae") else "; --limit makes it shorter"
    return (f"scoring {images_total:,} images ({bound}) will take about {_duration(left)} more at "
            f"{rate:,.1f} images/s{hint}")


class ScoringEstimate(pl.Callback):
    """Says once, after ESTIMATE_AFTER_SECONDS of a predict run, how long the rest will take (`scoring_estimate`)."""

    def __init__(self, say: Any = None) -> None:
        self.say = say
        self._started = 0.0
        self._done = 0
        self._said = False

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._done, self._said = time.monotonic(), 0, False

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._done += len(batch[0])
        elapsed = time.monotonic() - self._started
        if self._said or elapsed < ESTIMATE_AFTER_SECONDS:
            return
        self._said = True
        total = sum(len(loader.dataset) for loader in trainer.predict_dataloaders)
        # what is computed: the likelihood's bound, or an optional statistic such as the VAE's regret refits
        statistic = getattr(pl_module, "statistic", "likelihood")
        what = pl_module.model.bound if statistic == "likelihood" else statistic
        text = scoring_estimate(self._done * trainer.world_size, elapsed, total, what)
        if text is None or not trainer.is_global_zero:
            return
        if self.say is not None:
            self.say(text)
        else:  # through the bar, which prints above itself
            bar = trainer.progress_bar_callback
            (bar.print if bar is not None else print)(text)


def progress_bar(quiet: bool) -> ProgressBar | None:
    """The progress display for this output: none when quiet, a rich bar on a terminal, lines otherwise."""
    if quiet:
        return None
    return EpochsFromOne(leave=True) if sys.stdout.isatty() else LineProgress()
