"""The model's own samples of one run, for `oodbench analyze --what samples` (Kamkari et al., ICML 2024:
the likelihood of a model's own samples against its OOD set, where raw likelihood fails as it does on real
test images).

- `run_samples`: drawn once per checkpoint (analysis/samples.py) and kept in `analysis/samples.npz` under
  a key of the checkpoint's digest, the number drawn, Glow's temperature and the seed, so they are drawn
  again exactly when one of those changes; `analysis/samples.png` is their grid (a reader judges a model
  by its samples first).
- `samples_pair`: the samples scored through the run's statistics cache like any set (an ImageSet
  "samples", split "model"), with the pair's evaluation settings (its noise seed, a VAE's k), so their
  bits/dim compare with the in-test and OOD bits/dim of that evaluation's scores.csv; written as
  `analysis/samples_<in>_vs_<out>.csv` (one row, `analysis/samples.compare`) and
  `analysis/samples_<in>_vs_<out>.npz` (the samples' bits/dim per image, for the report's figure).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from oodbench.analysis.samples import compare, draw_samples, grid_rows, sampler_of
from oodbench.atomic import write_arrays, write_with
from oodbench.config import AnalysisConfig, EvalConfig
from oodbench.data import ImageSet, Pair
from oodbench.errors import OodbenchError
from oodbench.runner.layout import RunPaths
from oodbench.runner.run_loading import load_module, open_module
from oodbench.runner.statistics import set_statistics
from oodbench.schema import RunRecord, file_digest, short_hash

SAMPLES_SEED = 0  # seeds the draw; part of the key, so the same checkpoint always shows the same samples
SAMPLES_VERSION = 1  # part of the key: bump when how samples are drawn changes
SAMPLES_SET, SAMPLES_SPLIT = "samples", "model"
DRAW_BATCH = 64
# The evaluation settings that change a set's bits/dim (the rest are hardware, which changes none).
EVAL_KEYS = ("noise_seed", "iw_samples", "batch_size")


def samples_file(paths: RunPaths) -> Path:
    return paths.analysis / "samples.npz"


def grid_file(paths: RunPaths) -> Path:
    return paths.analysis / "samples.png"


def sample_count(analysis: AnalysisConfig, kind: str) -> int:
    """How many samples a run of sampler `kind` draws: PixelCNN++ fewer (H * W network passes per batch)."""
    return analysis.n_samples_pixelcnn if kind == "pixelcnn" else analysis.n_samples


def _cached(path: Path, key: str) -> torch.Tensor | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["key"]) == key:
                return torch.from_numpy(archive["images"].astype(np.uint8))
    except (OSError, ValueError, KeyError):
        pass
    return None  # none, another key's or unreadable: drawn again


def save_grid(images: torch.Tensor, path: Path) -> Path:
    """The samples as a near-square grid PNG (2-pixel white gaps), written atomically."""
    from torchvision.utils import save_image  # only here: drawing a grid is all oodbench needs of it

    grid = images.float() / 255.0
    return write_with(path, lambda tmp: save_image(grid, tmp, nrow=grid_rows(len(images)), padding=2,
                                                   pad_value=1.0, format="png"))


@dataclass(frozen=True)
class Samples:
    images: ImageSet  # named SAMPLES_SET, split SAMPLES_SPLIT
    temperature: float | None  # Glow's; None for the families without one
    draw_seconds: float | None = None  # the time drawing took; None: read from analysis/samples.npz


def run_samples(paths: RunPaths, analysis: AnalysisConfig, *, checkpoint: str = "best",
                device: str | None = None) -> Samples:
    """The run's samples (from `analysis/samples.npz` when its key matches, else drawn on `device`, default
    the GPU when there is one, and saved), their grid written to `analysis/samples.png`."""
    record = RunRecord.read(paths.config)
    checkpoint_path = paths.checkpoint(checkpoint)
    module, _ = load_module(checkpoint_path)
    kind = sampler_of(module.model)
    if kind is None:
        raise OodbenchError(f"the samples analysis draws from glow, cv-glow, pixelcnn and vae models; {paths.root} is "
                            f"a {record.model} run, which has no sampler here")
    n = sample_count(analysis, kind)
    temperature = analysis.sample_temperature if kind == "glow" else None  # only Glow's prior has one
    key = short_hash([SAMPLES_VERSION, file_digest(checkpoint_path), n, temperature, SAMPLES_SEED])
    images, seconds = _cached(samples_file(paths), key), None
    if images is None:
        start = time.perf_counter()
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        images = draw_samples(module.model.float().to(target), n, image_shape=tuple(record.image_shape),
                              temperature=1.0 if temperature is None else temperature, seed=SAMPLES_SEED,
                              batch_size=DRAW_BATCH)
        seconds = time.perf_counter() - start
        write_arrays(samples_file(paths), {"images": images.numpy(), "key": key,
                                           "temperature": np.nan if temperature is None else temperature,
                                           "seed": SAMPLES_SEED, "checkpoint": str(checkpoint_path)})
    save_grid(images, grid_file(paths))
    how = f"T={temperature:g}, " if temperature is not None else ""
    # `source` is part of the statistics cache's key: the key of the samples, so new samples are scored anew
    return Samples(ImageSet(name=SAMPLES_SET, split=SAMPLES_SPLIT, images=images, index=torch.arange(n),
                            source=f"{n} samples of {checkpoint_path.name} ({how}seed {SAMPLES_SEED}) [{key}]",
                            transform="drawn by the model", enlarged="generated"), temperature, seconds)


def _eval_settings(paths: RunPaths, pair: Pair) -> EvalConfig:
    """The settings the pair's evaluation scored with that change bits/dim (its config.yaml)."""
    path = paths.eval_dir(str(pair.in_ref), str(pair.out_ref)) / "config.yaml"
    try:
        saved = (yaml.safe_load(path.read_text()) or {}).get("eval") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        saved = {}
    return EvalConfig(**{key: saved[key] for key in EVAL_KEYS if saved.get(key) is not None})


def samples_pair(paths: RunPaths, pair: Pair, samples: Samples, scores: pd.DataFrame, *,
                 checkpoint: str = "best") -> Path:
    """The samples against the pair's evaluation (`scores`: its scores.csv) in
    `analysis/samples_<in>_vs_<out>.csv`, their per-image bits/dim beside it (.npz); returns the table."""
    record = RunRecord.read(paths.config)
    cfg = _eval_settings(paths, pair)
    module, checkpoint_path, _ = open_module(paths, checkpoint, cfg, record)
    stats, _, writer = set_statistics(module, {SAMPLES_SET: samples.images}, cfg, paths=paths, checkpoint=checkpoint_path,
                                      bpd_dims=record.bpd_dims, quiet=True)
    bpd = stats[SAMPLES_SET]["bpd"].to_numpy()
    if not np.isfinite(bpd).all():
        raise OodbenchError(f"the model in {checkpoint_path} gives its own samples non-finite likelihoods")
    by_set = {name: scores.loc[scores["set"] == name, "bpd"].to_numpy() for name in ("in_test", "out_test")}
    row = {"run": paths.root.name, "model": record.model, "seed": record.seed, "in_dataset": record.dataset,
           "pair": str(pair), "checkpoint": checkpoint_path.name, "sample_seed": SAMPLES_SEED,
           "temperature": np.nan if samples.temperature is None else samples.temperature,
           **compare(bpd, by_set["in_test"], by_set["out_test"])}
    csv_path = paths.analysis_file("samples", str(pair.in_ref), str(pair.out_ref))
    if writer:
        write_arrays(csv_path.with_suffix(".npz"), {"bpd": bpd})
        write_with(csv_path, lambda tmp: pd.DataFrame([row]).to_csv(tmp, index=False, float_format="%.6f"))
    return csv_path
