"""The dataset registry: what each dataset is, where its files may be, and how torchvision fetches it.

Each `DatasetSpec` describes one base dataset as the models see it (every image 32x32: the 28x28
grey sets are zero-padded by 2 pixels, CelebA and Tiny-ImageNet are resized) and lists the layouts
(`sources.py`, `folders.py`) tried in order under a data root: first `<root>/<name>/<split>.npz`,
then torchvision's layout, then the official one. The "gray:" prefix is not a dataset; it is a
conversion applied on top of any RGB dataset (`refs.py`, `loading.py`).

A spec also carries a display `title` ("CIFAR-10"), the canonical size of each split (`sizes`, the
full official split, whatever a local copy holds; compare with `split_counts`), the image's own
`native_shape` before padding, and, for sets decoded and transformed on load, a `recipe` naming
the crop / resize pipeline: the tensor cache keys entries on it, so a changed pipeline rebuilds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torchvision.datasets as tvd

from oodbench.data import folders, sources, synthetic, user
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
    title: str = ""  # for display ("CIFAR-10"); empty means the name
    # The canonical number of images of each split (the complete official split): one per split.
    sizes: dict[str, int] = field(default_factory=dict, hash=False)
    # How loaded pixels are derived from the files, when that is more than a copy (decode, crop,
    # resize). Part of the tensor cache's key: change it whenever the pipeline changes.
    recipe: str = ""
    # A user's own images (`folder:PATH`, `npz:PATH`; user.py) instead of a registered dataset.
    user: user.UserSource | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)
        if set(self.sizes) - set(self.splits):
            raise ValueError(f"{self.name}: sizes for unknown splits {sorted(set(self.sizes) - set(self.splits))}")

    @property
    def synthetic(self) -> bool:
        return self.generate is not None

    @property
    def native_shape(self) -> tuple[int, int, int]:
        """The image's own (C, H, W) in its files, before the zero padding: (1, 28, 28) for MNIST."""
        channels, height, width = self.shape
        return channels, height - 2 * self.pad, width - 2 * self.pad


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.add(spec.name, spec)
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a base dataset name (no "gray:" prefix), or of a user's "folder:PATH" / "npz:PATH";
    unknown names list the valid ones, a user path that is not there says so."""
    if user.is_user_name(name):
        return user_dataset(user.parse_user(name))
    return DATASETS.get(name)


def user_dataset(source: user.UserSource) -> DatasetSpec:
    """A spec for a user's images. Its `shape` is nominal (RGB at 32x32): the channels come from the images
    and the size from `--image-size` or the run (see user.py)."""
    size = user.DEFAULT_SIZE
    return DatasetSpec(name=source.name, title=source.title, shape=(3, size, size), splits=source.splits,
                       licence="your own images", source=str(source.path), user=source,
                       description=f"your images in {source.path} ({user.recipe(3, size)})")


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

_MNIST_SIZES = {"train": 60_000, "test": 10_000}


def _grey(name: str, cls, **info: str) -> DatasetSpec:
    # torchvision keeps these in <root>/<ClassName>/raw; its download writes there too.
    return DatasetSpec(name=name, shape=(1, 32, 32), splits=("train", "test"), pad=2, sizes=dict(_MNIST_SIZES),
                       layouts=(sources.npz_layout(name), sources.idx_layout(cls.__name__)),
                       download=_tv_train_flag(cls), **info)


register(_grey(
    "mnist", tvd.MNIST, title="MNIST", licence="CC BY-SA 3.0",
    source="http://yann.lecun.com/exdb/mnist/ (LeCun, Cortes & Burges 1998)",
    description="handwritten digits, 60,000 train / 10,000 test, 28x28 grey padded to 32x32"))

register(_grey(
    "fashionmnist", tvd.FashionMNIST, title="Fashion-MNIST", licence="MIT",
    source="https://github.com/zalandoresearch/fashion-mnist (Xiao, Rasul & Vollgraf 2017)",
    description="Zalando clothing photos, 60,000 train / 10,000 test, 28x28 grey padded to 32x32"))

register(_grey(
    "kmnist", tvd.KMNIST, title="KMNIST", licence="CC BY-SA 4.0",
    source="https://github.com/rois-codh/kmnist (Clanuwat et al. 2018)",
    description="Kuzushiji (cursive Japanese) characters, 60,000 train / 10,000 test, 28x28 grey padded to 32x32"))

# --- RGB 32x32 ---------------------------------------------------------------------------------------

_RGB = (3, 32, 32)


register(DatasetSpec(
    name="cifar10", title="CIFAR-10", shape=_RGB, splits=("train", "test"), sizes=dict(sources.CIFAR_SIZES),
    licence="no licence stated; free for research (Krizhevsky 2009)",
    source="https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)",
    description="10 classes of small natural images, 50,000 train / 10,000 test",
    layouts=(sources.npz_layout("cifar10"), sources.cifar_layout(tvd.CIFAR10)),
    download=_tv_train_flag(tvd.CIFAR10)))

register(DatasetSpec(
    name="cifar100", title="CIFAR-100", shape=_RGB, splits=("train", "test"), sizes=dict(sources.CIFAR_SIZES),
    licence="no licence stated; free for research (Krizhevsky 2009)",
    source="https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky 2009)",
    description="100 classes of small natural images, 50,000 train / 10,000 test",
    layouts=(sources.npz_layout("cifar100"), sources.cifar_layout(tvd.CIFAR100)),
    download=_tv_train_flag(tvd.CIFAR100)))

register(DatasetSpec(
    name="svhn", title="SVHN", shape=_RGB, splits=("train", "test", "extra"), licence="non-commercial use only",
    sizes={"train": 73_257, "test": 26_032, "extra": 531_131},
    source="http://ufldl.stanford.edu/housenumbers/ (Netzer et al. 2011)",
    description="cropped house-number digits, 73,257 train / 26,032 test / 531,131 extra",
    layouts=(sources.npz_layout("svhn"), sources.svhn_layout), download=_tv_svhn))

register(DatasetSpec(
    name="celeba", title="CelebA", shape=_RGB, splits=("train", "valid", "test"),
    licence="non-commercial research only", sizes={"train": 162_770, "valid": 19_867, "test": 19_962},
    source="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Liu et al. 2015)",
    description="aligned 178x218 celebrity faces, cropped to RealNVP's 148x148 box (rows 40-187, columns "
                "15-162, i.e. x[40:188, 15:163]; Dinh, Sohl-Dickstein & Bengio 2017, Sec. 4.1) and resized "
                "to 32x32; 162,770 train / 19,867 valid / 19,962 test",
    recipe=folders.CELEBA_RECIPE,
    layouts=(sources.npz_layout("celeba"), folders.celeba_layout("list_eval_partition.txt"),
             folders.celeba_layout("subset.csv")), download=_tv_celeba))

register(DatasetSpec(
    name="tinyimagenet", title="Tiny-ImageNet", shape=_RGB, splits=("train", "test"),
    licence="ImageNet terms: non-commercial research", sizes={"train": 100_000, "test": 10_000},
    recipe=folders.TINY_RECIPE,
    source="http://cs231n.stanford.edu/tiny-imagenet-200.zip (Stanford CS231n; images from ImageNet)",
    description="200 ImageNet classes at 64x64 resized to 32x32; 100,000 train, test = the 10,000 official val",
    layouts=(sources.npz_layout("tinyimagenet"), folders.tinyimagenet_layout)))

register(DatasetSpec(
    name="imagenet32", title="ImageNet 32x32", shape=_RGB, splits=("train", "test"),
    licence="ImageNet terms: non-commercial research", sizes={"train": 1_281_167, "test": 50_000},
    source="https://image-net.org/download-images (downsampled ImageNet; Chrabaszcz, Loshchilov & Hutter 2017)",
    description="ImageNet downsampled to 32x32; 1,281,167 train, test = the 50,000 official val",
    layouts=(sources.npz_layout("imagenet32"), sources.imagenet32_layout)))

# --- synthetic: no files ----------------------------------------------------------------------------

register(DatasetSpec(
    name="constant", title="constant", shape=synthetic.SHAPE, splits=("train", "test"), licence="n/a (generated)",
    sizes=dict(synthetic.SIZES),
    source="oodbench.data.synthetic (fixed seed)",
    description="one uniformly random colour per image; 50,000 train / 10,000 test",
    generate=lambda split, limit: synthetic.generate("constant", split, limit)))

register(DatasetSpec(
    name="noise", title="noise", shape=synthetic.SHAPE, splits=("train", "test"), licence="n/a (generated)",
    sizes=dict(synthetic.SIZES),
    source="oodbench.data.synthetic (fixed seed)",
    description="i.i.d. uniform pixels; 50,000 train / 10,000 test",
    generate=lambda split, limit: synthetic.generate("noise", split, limit)))
