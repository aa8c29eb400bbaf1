"""`ImageSet`: the one shape in which images leave the data layer.

Every loader, synthetic or real, hands back uint8 pixels (N, C, H, W) on the CPU together with each
sample's position in its canonical split. Models dequantise the pixels themselves (`quantize.py`);
evaluation seeds each sample's noise with `index`, so a sample keeps its noise however the set is
subsampled, batched or sharded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSet:
    name: str  # the dataset spec as given, e.g. "cifar10" or "gray:cifar10"
    split: str  # "train" | "valid" | "test" | "extra"
    images: torch.Tensor  # uint8 (N, C, H, W), contiguous, CPU
    index: torch.Tensor  # int64 (N,), position of each sample in the canonical split
    source: str  # where the pixels came from, for humans and run configs
    digest: str | None = None  # a user's own images: the content hash of their files (data/user.py)
    # How the stored images were brought to this size (data/loading.size_transform): said in every result,
    # and `enlarged` (how pixels the files never had were added: "" none, "zero-padded from 28x28",
    # "resized up from 28x28"; "unknown" for a user's images of mixed sizes, "generated" for synthetic sets,
    # which fit any pair) must agree within a pair.
    transform: str = "as stored"
    enlarged: str = ""

    def __post_init__(self) -> None:
        # Cheap checks only: a wrong dtype here would silently change bits/dim downstream.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"ImageSet images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.index.dtype != torch.int64 or self.index.shape != (self.images.shape[0],):
            raise ValueError(f"ImageSet index must be int64 ({self.images.shape[0]},), got {self.index.dtype} "
                             f"{tuple(self.index.shape)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])
