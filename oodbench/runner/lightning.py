"""Building Lightning trainers the same way for training and scoring, and reading checkpoints safely.

Hardware settings (accelerator, devices, nodes, strategy, precision) pass straight through to
Lightning, so the same command runs on a laptop CPU, one GPU, or DDP across GPUs and nodes; settings
the machine cannot honour (`--accelerator gpu` without one) are a one-line error before anything is
written. Checkpoints are written atomically and read with `weights_only=True` (`read_checkpoint`):
a checkpoint from elsewhere whose pickle would run code is refused, never executed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from oodbench.atomic import atomic_path
from oodbench.errors import OodbenchError
from oodbench.runner.progress import progress_bar

# Lightning's informational banner ("GPU available: ...") and data-loader hints are noise in a CLI.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
# A resumed run writes into its own checkpoint folder on purpose.
warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
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


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, unpickled with `weights_only=True`: tensors and plain values only.

    A pickle that would import or call anything else (code that runs on load) is refused with a
    one-line error; so is a truncated or foreign file. oodbench's own checkpoints hold plain values only.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise OodbenchError(
                f"checkpoint {path} holds pickled objects other than tensors and plain values, which could run code "
                "when loaded; refusing to load it (use checkpoints that oodbench wrote, or retrain the run)") from None
        raise _corrupt(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise _corrupt(path, exc) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise _corrupt(path, TypeError("no state_dict"))
    return checkpoint


def _corrupt(path: str | Path, exc: BaseException) -> OodbenchError:
    return OodbenchError(f"checkpoint {path} is corrupt or not an oodbench checkpoint ({type(exc).__name__}); "
                         "retrain the run")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and moves it into place, so a kill leaves no half file;
    reads one only through `read_checkpoint` (a resumed run too)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def device_count(devices: str, accelerator: str = "auto") -> int | str | list[int]:
    """Lightning's `devices` from a CLI string: "auto", "all", "2", "-1" or "0,1".

    "all" is every visible device (Lightning's -1), except on a CPU, whose "devices" are processes and
    which Lightning refuses -1 for: there it is one process, which uses every core."""
    text = str(devices).strip()
    if text == "auto":
        return "auto"
    if text == "all":
        gpu_here = CUDAAccelerator.is_available() or MPSAccelerator.is_available()
        return 1 if accelerator == "cpu" or (accelerator == "auto" and not gpu_here) else -1
    if "," in text:
        return [int(part) for part in text.split(",") if part]
    return int(text)


def make_trainer(*, root: Path, accelerator: str, devices: str, precision: str, quiet: bool,
                 num_nodes: int = 1, strategy: str = "auto", **kwargs: Any) -> pl.Trainer:
    """A Lightning trainer; hardware it cannot have is an OodbenchError naming the settings."""
    tune_glibc_malloc()
    callbacks = list(kwargs.pop("callbacks", []))
    bar = progress_bar(quiet)
    if bar is not None:
        callbacks.append(bar)
    try:
        trainer = pl.Trainer(
            default_root_dir=root,
            accelerator=accelerator,
            devices=device_count(devices, accelerator),
            num_nodes=num_nodes,
            strategy=strategy,
            precision=precision,
            callbacks=callbacks,
            enable_progress_bar=bar is not None,
            enable_model_summary=False,
            plugins=[AtomicCheckpointIO()],
            **kwargs,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:  # TypeError: -1 on a CPU
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OodbenchError(f"this machine cannot run --accelerator {accelerator} --devices {devices} --strategy "
                            f"{strategy} --precision {precision}: {first}") from None
    check_precision(trainer.accelerator, precision)
    os.makedirs(root, exist_ok=True)
    return trainer


def native_bf16(accelerator: Any) -> bool:
    """Whether the device computes bf16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16
    or AMX (elsewhere autocast emulates bf16, slower than float32)."""
    if isinstance(accelerator, CUDAAccelerator):
        return torch.cuda.is_bf16_supported()
    if isinstance(accelerator, CPUAccelerator):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return True  # other accelerators (MPS, XLA) decide for themselves


def check_precision(accelerator: Any, precision: str) -> None:
    """bf16 training only where the hardware has it: an emulated bf16 is slower than float32, so it is an error
    rather than a silent slowdown."""
    if str(precision).startswith("bf16") and not native_bf16(accelerator):
        device = "GPU" if isinstance(accelerator, CUDAAccelerator) else "CPU"
        raise OodbenchError(f"--precision {precision}: this {device} has no native bf16 (AVX512-BF16 / AMX on a CPU, "
                            "Ampere or newer on a GPU), so it would run slower than float32; use --precision 32-true "
                            "(or 16-mixed on a GPU)")
