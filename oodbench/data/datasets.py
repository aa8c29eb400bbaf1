"""The dataset registry: what each dataset is, where its files may be, and how torchvision fetches it.

Each `DatasetSpec` describes one base dataset as the models see it (every image 32x32: the 28x28
grey sets are zero-padded by 2 pixels, CelebA and Tiny-ImageNet are resized) and lists the layouts
(`sources.py`, `folders.py`) tried in order under a data root: first `<root>/<name>/<split>.npz`,
then torchvision's layout, then the official one. The "gray:" prefix is not a dataset; it is a
conversion applied on top of any RGB dataset (`refs.py`, `loading.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torchvision.datasets as tvd

from oodbench.data import folders, sources, synthetic
from oodbench.data.sources import Layout, Pixels
from oodbench.registry import Registry

DATASETS: Registry[DatasetSpec] = Registry("dataset")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    shape: tuple[int, int, int]  # (C, H, W) as loaded, after padding / resizing
    splits: tuple[str, ...]
    licence: str
    source: str  # where the data is published, and whom to cite
    description: str
    # How to get the pixels (not part of what a spec *is*, so left out of repr and equality).
    layouts: tuple[Layout, ...] = field(default=(), repr=False, compare=False)
    download: Callable[[Path, str], None] | None = field(default=None, repr=False, compare=False)
    generate: Callable[[str, int | None], Pixels] | None = field(default=None, repr=False, compare=False)
    pad: int = 0  # zero border added at load (2 for 28x28 -> 32x32)

    @property
    def synthetic(self) -> bool:
        return self.generate is not None


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a base dataset name (no "gray:" prefix); unknown names list the valid ones."""
    return DATASETS.get(name)


def list_datasets() -> list[DatasetSpec]:
    return [DATASETS.get(name) for name in DATASETS.names()]


# --- torchvision downloads (only with download=True: torchvision's own code, mirrors and checksums) ----

def _tv_train_flag(cls) -> Callable[[Path, str], None]:
    """Download for torchvision classes that take `train=` (the MNIST family, CIFAR)."""

    def fetch(root: Path, split: str) -> None:
        cls(str(root), train=split == "train", download=True)

    return fetch


def _tv_svhn(root: Path, split: str) -> None:
    tvd.SVHN(str(root), split=split, download=True)


def _tv_celeba(root: Path, split: str) -> None:
    tvd.CelebA(str(root), split="all", target_type=[], download=True)


# --- the grey 28x28 sets, padded to 32x32 ---------------------------------------------------------------

def _grey(name: str, cls, **info: str) -> DatasetSpec:
    # torchvision keeps these in <root>/<ClassName>/raw; its download writes there too.
    return DatasetSpec(name=name, shape=(1, 32, 32), splits=("train", "test"), pad=2,
                       layouts=(sources.npz_layout(name), sources.idx_layout(cls.__name__)),
                       download=_tv_train_flag(cls), **info)


register(_grey(
    "mnist", tvd.MNIST, licence="CC BY-SA 3.0",
    source="http://yann.lecun.com/exdb/mnist/ (LeCun, Cortes & Burges 1998)",
    description="handwritten digits, 60,000 train / 10,000 test, 28x28 grey padded to 32x32"))

register(_grey(
    "fashionmnist", tvd.FashionMNIST, licence="MIT",
    source="https://github.com/zalandoresearch/fashion-mnist (Xiao, Rasul & Vollgraf 2017)",
    description="Zalando clothing photos, 60,000 train / 10,000 test, 28x28 grey padded to 32x32"))

register(_grey(
    "kmnist", tvd.KMNIST, licence="CC BY-SA 4.0",
    source="https://github.com/rois-codh/kmnist (Clanuwat et al. 2018)",
    description="Kuzushiji (cursive Japanese) characters, 60,000 train / 10,000 test, 28x28 grey padded to 32x32"))

# --- RGB 32x32 ---------------------------------------------------------------------------------------

_RGB = (3, 32, 32)


register(DatasetSpec(
    name="cifar10", shape=_RGB, splits=("train", "test"),
    licence="no licence stated; free for research (Krizhevsky 2009)",
    source="https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)",
    description="10 classes of small natural images, 50,000 train / 10,000 test",
    layouts=(sources.npz_layout("cifar10"), sources.cifar_layout(tvd.CIFAR10)),
    download=_tv_train_flag(tvd.CIFAR10)))

register(DatasetSpec(
    name="cifar100", shape=_RGB, splits=("train", "test"),
    licence="no licence stated; free for research (Krizhevsky 2009)",
    source="https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)",
    description="100 classes of small natural images, 50,000 train / 10,000 test",
    layouts=(sources.npz_layout("cifar100"), sources.cifar_layout(tvd.CIFAR100)),
    download=_tv_train_flag(tvd.CIFAR100)))

register(DatasetSpec(
    name="svhn", shape=_RGB, splits=("train", "test", "extra"), licence="non-commercial use only",
    source="http://ufldl.stanford.edu/housenumbers/ (Netzer et al. 2011)",
    description="cropped house-number digits, 73,257 train / 26,032 test / 531,131 extra",
    layouts=(sources.npz_layout("svhn"), sources.svhn_layout), download=_tv_svhn))

register(DatasetSpec(
    name="celeba", shape=_RGB, splits=("train", "valid", "test"), licence="non-commercial research only",
    source="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Liu et al. 2015)",
    description="aligned celebrity faces, centre-cropped 148x148 and resized to 32x32; "
                "162,770 train / 19,867 valid / 19,962 test",
    layouts=(sources.npz_layout("celeba"), folders.celeba_layout("list_eval_partition.txt"),
             folders.celeba_layout("subset.csv")), download=_tv_celeba))

register(DatasetSpec(
    name="tinyimagenet", shape=_RGB, splits=("train", "test"), licence="ImageNet terms: non-commercial research",
    source="http://cs231n.stanford.edu/tiny-imagenet-200.zip (Stanford CS231n; images from ImageNet)",
    description="200 ImageNet classes at 64x64 resized to 32x32; 100,000 train, test = the 10,000 official val",
    layouts=(sources.npz_layout("tinyimagenet"), folders.tinyimagenet_layout)))

register(DatasetSpec(
    name="imagenet32", shape=_RGB, splits=("train", "test"), licence="ImageNet terms: non-commercial research",
    source="https://image-net.org/download-images (downsampled ImageNet; Chrabaszcz, Loshchilov & Hutter 2017)",
    description="ImageNet downsampled to 32x32; 1,281,167 train, test = the 50,000 official val",
    layouts=(sources.npz_layout("imagenet32"), sources.imagenet32_layout)))

# --- synthetic: no files ----------------------------------------------------------------------------

register(DatasetSpec(
    name="constant", shape=synthetic.SHAPE, splits=("train", "test"), licence="n/a (generated)",
    source="oodbench.data.synthetic (fixed seed)",
    description="one uniformly random colour per image; 50,000 train / 10,000 test",
    generate=lambda split, limit: synthetic.generate("constant", split, limit)))

register(DatasetSpec(
    name="noise", shape=synthetic.SHAPE, splits=("train", "test"), licence="n/a (generated)",
    source="oodbench.data.synthetic (fixed seed)",
    description="i.i.d. uniform pixels; 50,000 train / 10,000 test",
    generate=lambda split, limit: synthetic.generate("noise", split, limit)))
