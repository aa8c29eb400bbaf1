"""Synthetic OOD sets that need no files: `constant` and `noise` (Nalisnick et al. 2019, Fig. 3/Appx.).

- constant: every image is one colour, each channel uniform on 0..255;
- noise: every pixel i.i.d. uniform on 0..255.

Both are deterministic functions of (dataset, split, sample index): images come in chunks of
`CHUNK`, each from its own seeded generator, so the first `limit` images are the same whether or
not the rest are generated, and generation is fast (numpy's uint8 sampler; 50,000 noise images in
a fraction of a second). Nothing is cached: regenerating is as fast as reading a cache.
"""

from __future__ import annotations

import numpy as np
import torch

from oodbench.data.sources import Pixels

SHAPE = (3, 32, 32)
SIZES = {"train": 50_000, "test": 10_000}
SEED = 20190224  # fixed: the paper's ICLR 2019 date; any constant works, it must just never change
_SPLIT_CODE = {"train": 0, "test": 1}
_KIND_CODE = {"constant": 0, "noise": 1}
CHUNK = 1000


def _chunks(kind: str, split: str, n: int):
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([SEED, _KIND_CODE[kind], _SPLIT_CODE[split], chunk])
        yield start, min(CHUNK, n - start), rng


def generate(kind: str, split: str, limit: int | None = None) -> Pixels:
    """`kind` is "constant" or "noise"; returns the first `limit` images of the split (all by default)."""
    n = SIZES[split] if limit is None else min(limit, SIZES[split])
    images = np.empty((n, *SHAPE), dtype=np.uint8)
    for start, count, rng in _chunks(kind, split, n):
        if kind == "noise":
            images[start:start + count] = rng.integers(0, 256, size=(CHUNK, *SHAPE), dtype=np.uint8)[:count]
        else:
            colours = rng.integers(0, 256, size=(CHUNK, SHAPE[0], 1, 1), dtype=np.uint8)[:count]
            images[start:start + count] = colours  # broadcast over height and width
    return Pixels(torch.from_numpy(images), torch.arange(n, dtype=torch.int64), complete=n == SIZES[split])
