"""Building Lightning trainers the same way for training and scoring.

Hardware settings (accelerator, devices, nodes, strategy, precision) pass straight through to
Lightning, so the same command runs on a laptop CPU, one GPU, or DDP across GPUs and nodes.
Checkpoints are written atomically through `AtomicCheckpointIO`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from oodbench.atomic import atomic_path

# Lightning's informational banner ("GPU available: ...") and data-loader hints are noise in a CLI.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
# Per-process epoch means of the training loss are logged as they are; syncing them costs a collective.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the process instead of returning it to the OS after every tensor.

    glibc's defaults unmap (or trim) the large blocks that activations live in, so every new tensor
    page-faults its memory back in; on a CPU that costs ~10% of a Glow training step. Returns whether
    the settings were applied (False where there is no glibc). The math is untouched.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and moves it into place, so a kill leaves no half file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def device_count(devices: str) -> int | str | list[int]:
    """Lightning's `devices` from a CLI string: "auto", "2", "-1" or "0,1"."""
    text = str(devices).strip()
    if text == "auto":
        return "auto"
    if "," in text:
        return [int(part) for part in text.split(",") if part]
    return int(text)


def make_trainer(*, root: Path, accelerator: str, devices: str, precision: str, quiet: bool,
                 num_nodes: int = 1, strategy: str = "auto", **kwargs: Any) -> pl.Trainer:
    tune_glibc_malloc()
    callbacks = list(kwargs.pop("callbacks", []))
    if not quiet:
        callbacks.append(pl.callbacks.RichProgressBar(leave=True))
    os.makedirs(root, exist_ok=True)
    return pl.Trainer(
        default_root_dir=root,
        accelerator=accelerator,
        devices=device_count(devices),
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        callbacks=callbacks,
        enable_progress_bar=not quiet,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        **kwargs,
    )
