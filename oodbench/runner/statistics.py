"""Per-sample statistics of a run's image sets: what the model says about each image, computed once
and cached in the run folder.

For every image of a set: `log_px` (nats) and `bpd` (per the run's `bpd_dims`, units.py), the family's
parts (flows: log_pz, logdet and each level's; the VAE: elbo, kl, reconstruction; schema.py), and the
model-free `png_bpd`, `jpeg2000_bpd` (lossless compressed length, data/compression.py). Scores are
pure functions of these (oodbench/scores/).

The model's outputs of a set are cached in `<run>/statistics/`, keyed by a hash of: the checkpoint's
bytes, the set (dataset, split, the exact image indices, any channel conversion), the evaluation noise
seed and the likelihood's bound (a VAE's k). So a run evaluated against five OOD sets scores its
in-distribution sets once, adding a score reads the cache, and a changed checkpoint, noise seed or k
is never served stale. Sets not in the cache are scored together in one Lightning predict run (one
DDP launch), in float32.

Optional statistics a score asks for (the VAE's `regret`, which refits each image's posterior: ~20
decodes and backward passes per image) are computed by the same predict run with the model's
`extra_statistic` and cached on their own, keyed also by the settings they use (`regret_steps`,
`regret_lr`), so asking for one never recomputes the likelihood and changing its settings never serves
a stale one. A companion run (a background model, an ensemble member) is scored on the same sets into
its own run folder's cache (`runner/evaluate.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from oodbench import failpoints
from oodbench.atomic import write_arrays
from oodbench.config import EvalConfig
from oodbench.data import ImageSet
from oodbench.data.compression import compressed_bits_timed
from oodbench.machine import cpu_model
from oodbench.models.module import LikelihoodModule
from oodbench.runner.callbacks import Failpoints
from oodbench.runner.layout import RunPaths, slug
from oodbench.runner.lightning import make_trainer
from oodbench.runner.progress import ScoringEstimate
from oodbench.schema import file_digest, short_hash
from oodbench.units import bits_per_dim

STATISTICS_VERSION = 1  # part of every cache key: bump when what a model outputs per image changes
CODECS = ("png", "jpeg2000")
# The evaluation settings each optional statistic depends on (part of its cache key).
STATISTIC_SETTINGS = {"regret": ("regret_steps", "regret_lr"), "gradients": (),  # gradients: models/gradients.py
                      "lid": ("lid_fraction", "lid_delta"),  # lid: analysis/lid.py
                      # a diffusion model's (models/diffusion/ood_statistics.py)
                      "diffpath": ("diffpath_steps",), "msma": ("msma_levels",)}


def cache_key(checkpoint_digest: str, images: ImageSet, noise_seed: int, bound: str,
              statistic: str = "likelihood", settings: dict[str, float] | None = None) -> str:
    indices = hashlib.sha256(images.index.numpy().tobytes()).hexdigest()
    parts: list = [STATISTICS_VERSION, checkpoint_digest, images.name, images.split, images.source, indices, noise_seed,
                   bound]
    if statistic != "likelihood":  # an optional statistic and the settings it was computed with
        parts += [statistic, settings or {}]
    return short_hash(parts)


def _cache_path(paths: RunPaths, images: ImageSet, key: str, statistic: str = "likelihood") -> Path:
    group = "" if statistic == "likelihood" else f"{statistic}-"
    return paths.statistics / f"{slug(images.name)}-{images.split}-{group}{key}.npz"


def _read(path: Path, images: ImageSet) -> pd.DataFrame | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            frame = pd.DataFrame({name: archive[name] for name in archive.files})
    except (OSError, ValueError, KeyError):
        return None  # missing or unreadable: computed again
    if not np.array_equal(frame.get("index", pd.Series(dtype=np.int64)).to_numpy(), images.index.numpy()):
        return None
    return frame


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


def model_outputs(module: LikelihoodModule, sets: dict[str, ImageSet], cfg: EvalConfig, quiet: bool,
                  root: Path) -> tuple[dict[str, pd.DataFrame], bool]:
    """The model's per-sample outputs (index, log_px, parts; float64) of every set, each in dataset index
    order, from one Lightning predict run; and whether this is the global-zero process. Each frame also
    says what the statistic cost: "seconds:<statistic>", the predict run's seconds per image (every set of
    the run together), and "machine:<statistic>", the device it ran on (schema.COST_PREFIXES)."""
    loaders = [DataLoader(TensorDataset(images.images, images.index), batch_size=cfg.batch_size, shuffle=False)
               for images in sets.values()]
    gather = GatherPredictions()
    callbacks: list[pl.Callback] = [gather] + ([] if quiet else [ScoringEstimate()])
    callbacks += [Failpoints(resuming=False)] if failpoints.armed() else []
    # inference_mode off: an optional statistic may optimise per image (the VAE's regret refit), which
    # needs autograd inside predict_step; the likelihood itself runs under no_grad either way.
    trainer = make_trainer(root=root, accelerator=cfg.accelerator, devices=cfg.devices, precision="32-true",
                           num_nodes=cfg.num_nodes, strategy=cfg.strategy, quiet=quiet, logger=False,
                           callbacks=callbacks, inference_mode=False)
    started = time.perf_counter()
    trainer.predict(module, loaders, return_predictions=False)
    seconds = (time.perf_counter() - started) / max(1, sum(len(images) for images in sets.values()))
    machine = machine_name(trainer.strategy.root_device, trainer.world_size)
    frames = {}
    for idx, name in enumerate(sets):
        columns = {key: value.numpy().astype(np.float64) for key, value in gather.gathered[idx].items()}
        columns["index"] = columns["index"].astype(np.int64)
        first = {"index": columns.pop("index")}
        if "log_px" in columns:
            first["log_px"] = columns.pop("log_px")
        frame = pd.DataFrame({**first, **columns})
        frame[f"seconds:{module.statistic}"] = seconds
        frame[f"machine:{module.statistic}"] = machine
        frames[name] = frame
    return frames, trainer.is_global_zero


def _plain(values: np.ndarray) -> np.ndarray:
    """`values` as an array np.load reads without pickle: text (an object array) as fixed-width strings."""
    return values.astype(str) if values.dtype == object else values


def machine_name(device: torch.device, processes: int = 1) -> str:
    """The device a statistic was computed on, for the cost columns: a GPU's name, else the CPU's model
    and the threads torch used; "N x" when several processes shared the work."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()}, {torch.get_num_threads()} thread(s)"
    return f"{processes} x {name}" if processes > 1 else name


def extra_settings(statistic: str, cfg: EvalConfig) -> dict[str, float]:
    """The evaluation settings an optional statistic is computed with (part of its cache key)."""
    return {key: getattr(cfg, key) for key in STATISTIC_SETTINGS[statistic]}


def _cached_outputs(module: LikelihoodModule, sets: dict[str, ImageSet], cfg: EvalConfig, *, paths: RunPaths,
                    digest: str, statistic: str, quiet: bool, recompute: bool) -> tuple[dict[str, pd.DataFrame], list[str], bool]:
    """One statistic's model outputs of every set, from the cache where it has them, else computed
    (all missing sets in one predict run) and cached."""
    settings = extra_settings(statistic, cfg) if statistic != "likelihood" else {}
    keys = {name: cache_key(digest, images, cfg.noise_seed, module.model.bound, statistic, settings)
            for name, images in sets.items()}
    outputs = {name: None if recompute else _read(_cache_path(paths, images, keys[name], statistic), images)
               for name, images in sets.items()}
    missing = {name: sets[name] for name, frame in outputs.items() if frame is None}
    writer = True
    if missing:
        module.statistic, module.statistic_settings = statistic, settings
        try:
            computed, writer = model_outputs(module, missing, cfg, quiet, paths.root)
        finally:
            module.statistic, module.statistic_settings = "likelihood", {}
        for name, frame in computed.items():
            outputs[name] = frame
            if writer:
                # text columns (the machine) as fixed-width strings: the cache is read without pickle
                write_arrays(_cache_path(paths, sets[name], keys[name], statistic),
                             {c: _plain(frame[c].to_numpy()) for c in frame.columns})
    return outputs, list(missing), writer


def set_statistics(module: LikelihoodModule, sets: dict[str, ImageSet], cfg: EvalConfig, *, paths: RunPaths,
                   checkpoint: Path, bpd_dims: int, quiet: bool, recompute: bool = False,
                   extras: tuple[str, ...] = (), extra_sets: tuple[str, ...] | None = None,
                   ) -> tuple[dict[str, pd.DataFrame], list[str], bool]:
    """(statistics of every set, the sets that had to be scored, whether this process writes files).
    `extras`: optional statistics of the model to add (its `extra_statistics`, e.g. the VAE's regret),
    each cached on its own, so asking for one never recomputes the likelihood; computed on the sets
    `extra_sets` only (None: all), the others get NaN there. `recompute` scores every set again and
    rewrites its cache entries."""
    digest = file_digest(checkpoint)
    outputs, computed, writer = _cached_outputs(module, sets, cfg, paths=paths, digest=digest, statistic="likelihood",
                                                quiet=quiet, recompute=recompute)
    wanted = {name: seeded_subset(images, cfg.extra_images) for name, images in sets.items()
              if extra_sets is None or name in extra_sets}
    for statistic in extras:
        extra, more, writes = _cached_outputs(module, wanted, cfg, paths=paths, digest=digest, statistic=statistic,
                                              quiet=quiet, recompute=recompute)
        outputs = {name: outputs[name].merge(extra[name], on="index", how="left", validate="one_to_one")
                   if name in extra else outputs[name] for name in sets}
        computed += [name for name in more if name not in computed]
        writer = writer and writes
    return {name: assemble(outputs[name], images, bpd_dims) for name, images in sets.items()}, computed, writer


EXTRA_SEED = 3  # which images of a set get the optional statistics when EvalConfig.extra_images caps them


def seeded_subset(images: ImageSet, n: int | None) -> ImageSet:
    """At most `n` images of `images` (a seeded choice, in index order); all of them when n is None or more."""
    if n is None or n >= len(images):
        return images
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(EXTRA_SEED))[:n].sort().values
    return dataclasses.replace(images, images=images.images[chosen].contiguous(), index=images.index[chosen].contiguous())


def assemble(outputs: pd.DataFrame, images: ImageSet, bpd_dims: int) -> pd.DataFrame:
    """The model's outputs plus bits/dim and the model-free statistics, one row per image of `images`;
    `attrs["bpd_dims"]` says what bits/dim is per (scores that convert nats need it)."""
    frame = outputs.copy()
    frame.insert(2, "bpd", bits_per_dim(frame["log_px"].to_numpy(), bpd_dims))
    for codec in CODECS:
        bits, seconds = compressed_bits_timed(images.images, codec)
        frame[f"{codec}_bpd"] = bits / bpd_dims
        # what the compression cost (runner/costs.py), where it was computed
        frame[f"seconds:{codec}"] = seconds
        frame[f"machine:{codec}"] = f"{cpu_model()}, {os.cpu_count()} thread(s)"
    frame.attrs["bpd_dims"] = bpd_dims
    return frame
