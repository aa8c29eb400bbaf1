"""The units every number in oodbench is in: 8-bit images, nats, and bits per dimension.

Bits per dimension is computed here and only here (PAPER.md, "Units"):
    BPD(x) = -log p(x) / (D ln 2),  log p(x) in nats of the 8-bit image x,
where D is the number of dimensions of the dataset's *own* image. Grey 28x28 sets are zero-padded to
32x32 for the models (`data/datasets.py`), but the padding is a fixed function of the image, so
p(pad(x)) is a probability of the 28x28 image x and D = 28 x 28 = 784, not 1,024: averaging over the
240 padding dimensions too, which a trained model makes nearly free, would report ~0.77x the number
published for 28x28 images. A run records its D (`schema.RunRecord.bpd_dims`).
"""

from __future__ import annotations

import math

N_BITS = 8
N_LEVELS = 2**N_BITS  # values a sub-pixel takes
LN2 = math.log(2.0)


def bits_per_dim(log_px_nats, n_dims: int):
    """BPD(x) = -log p(x) / (D ln 2), for log p(x) in nats on 8-bit images (tensor or array)."""
    return -log_px_nats / (n_dims * LN2)
