"""The data layer: every image set the benchmark trains or scores on, as uint8 tensors.

Nalisnick et al. (2019) train likelihood models on one image dataset and compare bits/dim on its test
set with other datasets'. This package owns getting those pixels: which datasets exist
(`datasets.py`), where their files may live and how to read them (`sources.py`, `folders.py`), the
synthetic sets (`synthetic.py`), the tensor cache (`cache.py`), conversions such as the "gray:"
prefix (`transforms.py`), the `IN:OUT` pair syntax (`refs.py`) and the loader tying them together
(`loading.py`). Dequantisation lives apart, in `quantize.py`; the perturbation background models
train on (Ren et al. 2019), in `perturb.py`.

    >>> images = load_images("cifar10", "test", data_root="/work/shared/data")
    >>> images.images.shape, images.images.dtype      # (1017, 3, 32, 32), torch.uint8
    >>> split_counts("cifar10", "/work/shared/data")    # {'train': 8068, 'test': 1017}; sizes 50000 / 10000

The names below are imported on first use, so that `oodbench.data.refs` (the CLI's check of a dataset
reference) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_EXPORTS = {
    "DEMO_ROOT": "loading",
    "DatasetRef": "refs",
    "DatasetSpec": "datasets",
    "ImageSet": "imageset",
    "Pair": "refs",
    "cache_dir": "cache",
    "dataset_availability": "loading",
    "get_dataset": "datasets",
    "list_datasets": "datasets",
    "load_images": "loading",
    "match_channels": "transforms",
    "parse_dataset_ref": "refs",
    "parse_pair": "refs",
    "split_counts": "loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:  # a submodule (`from oodbench.data import loading`) is imported by Python itself
        raise AttributeError(f"module 'oodbench.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"oodbench.data.{_EXPORTS[name]}"), name)
    globals()[name] = value  # once: later lookups, and a test's monkeypatch, see a plain attribute
    return value
