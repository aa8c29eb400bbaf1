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
"""

from oodbench.data.cache import cache_dir
from oodbench.data.datasets import DatasetSpec, get_dataset, list_datasets
from oodbench.data.imageset import ImageSet
from oodbench.data.loading import DEMO_ROOT, dataset_availability, load_images, split_counts
from oodbench.data.refs import DatasetRef, Pair, parse_dataset_ref, parse_pair
from oodbench.data.transforms import match_channels

__all__ = [
    "DEMO_ROOT",
    "DatasetRef",
    "DatasetSpec",
    "ImageSet",
    "Pair",
    "cache_dir",
    "dataset_availability",
    "get_dataset",
    "list_datasets",
    "load_images",
    "match_channels",
    "parse_dataset_ref",
    "parse_pair",
    "split_counts",
]
