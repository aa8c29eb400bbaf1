"""A run folder made without training, for tests of what evaluation and the density gate do with the
per-sample statistics: a tiny untrained Glow's (or VAE's) checkpoint, its record and splits (Fashion-MNIST from the
staged data); and a stand-in for `set_statistics` that hands back given statistics by set name, so that
a test knows exactly what every score is fitted on and compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from oodbench.config import TrainConfig, to_plain
from oodbench.models import model_config
from oodbench.models.module import LikelihoodModule
from oodbench.runner import RunPaths
from oodbench.schema import RunRecord, write_splits

TINY = {"glow": {"levels": 2, "steps": 1, "hidden_channels": 8},
        "vae": {"base_channels": 4, "latent_dim": 3, "iw_samples": 2}}


def fake_run(root: Path, data_root: Path, *, model: str = "glow", n_train: int = 100, n_val: int = 50, seed: int = 0,
             background: float | None = None) -> RunPaths:
    """A tiny untrained `model` "trained" on Fashion-MNIST train images 0..n_train-1, validated on the next n_val;
    its weights drawn with `seed`; a background model (likelihood ratio) of rate `background` if given."""
    paths = RunPaths(root)
    settings = to_plain(model_config(model, TINY[model], image_shape=(1, 32, 32)))
    train = to_plain(TrainConfig(background=background))
    record = RunRecord(model=model, dataset="fashionmnist", seed=0, data_root=str(data_root), data_source="staged",
                       image_shape=(1, 32, 32), data_shape=(1, 28, 28), n_train=n_train, n_val=n_val,
                       model_settings=settings, train=train)
    paths.checkpoints.mkdir(parents=True)
    record.write(paths.config)
    write_splits(paths.splits, train_index=np.arange(n_train), val_index=np.arange(n_train, n_train + n_val))
    torch.manual_seed(seed)
    module = LikelihoodModule(family=model, model_settings=settings, train_settings=train, bpd_dims=record.bpd_dims)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, paths.best)
    return paths


def statistics_by_set(frames: dict[str, pd.DataFrame], asked: list[tuple[str, ...]] | None = None):
    """A `set_statistics` that returns `frames[name]` for each set it is asked for (by the name the
    caller gives it), recording the names asked in `asked`."""

    def set_statistics(module, sets, cfg, **_) -> tuple[dict[str, pd.DataFrame], list[str], bool]:
        if asked is not None:
            asked.append(tuple(sets))
        found = {}
        for name in sets:
            frame = frames[name].copy()
            frame.attrs["bpd_dims"] = 784
            found[name] = frame
        return found, list(sets), True

    return set_statistics


def bpd_frame(bpd: list[float]) -> pd.DataFrame:
    """Statistics of len(bpd) images: index, log_px (nats, for 784 dimensions) and the given bits/dim."""
    values = np.asarray(bpd, dtype=np.float64)
    return pd.DataFrame({"index": np.arange(len(values)), "log_px": -values * 784 * np.log(2), "bpd": values})
