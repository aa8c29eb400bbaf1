"""`input_complexity` (Serra et al., ICLR 2020, "Input complexity and out-of-distribution detection
with likelihood-based generative models"): S(x) = bpd(x) - L(x), where L(x) is the image's lossless
compressed length in bits per dimension. A simple image (a constant, an SVHN digit) is cheap for any
coder, so its high likelihood says little; what the model saves *beyond* a generic compressor does.
Larger S = the model needs more bits than the compressor = more OOD.

L(x) is `<codec>_bpd` in the statistics: the whole encoded file of the image at the model's input size,
in bits, over the same dimensions as bits/dim (`data/compression.py` states the byte-counting rule).
Two variants: PNG and lossless JPEG 2000. Published: CIFAR-10 -> SVHN AUROC 0.950 with Glow (Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from oodbench.scores.base import Score


@dataclass(frozen=True)
class InputComplexity(Score):
    codec: str = "png"
    name = "input_complexity"
    paper = "Serra et al., ICLR 2020"

    @property
    def needs(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("bpd", f"{self.codec}_bpd")

    @property
    def short(self) -> str:
        return f"IC {'j2k' if self.codec == 'jpeg2000' else self.codec}"

    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        return (stats["bpd"] - stats[f"{self.codec}_bpd"]).to_numpy()
