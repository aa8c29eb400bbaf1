"""Build the demo subset embedded in the package (oodbench/data/demo/) from the canonical MNIST files.

`oodbench demo` must run offline anywhere, so the package ships a small slice of real data:
Fashion-MNIST train (first 10,000) and test (first 2,000), MNIST test (first 2,000), as
`<name>/<split>.npz` with `x` uint8 (N, 28, 28), `y` int64 labels and `index` (position in the
canonical split). They load through the ordinary npz layout (`load_images(..., data_root="demo")`),
so they are padded to 32x32 like the full sets. Run from the repository root:

    python scripts/build_demo_data.py [--source /path/with/MNIST-and-FashionMNIST-raw] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from torchvision.datasets.mnist import read_image_file, read_label_file

from oodbench.data.sources import IDX_IMAGES, read_idx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "oodbench" / "data" / "demo"
IDX_LABELS = {"train": "train-labels-idx1-ubyte", "test": "t10k-labels-idx1-ubyte"}

# (dataset, torchvision folder, split, how many leading samples)
SUBSETS = (
    ("fashionmnist", "FashionMNIST", "train", 10_000),
    ("fashionmnist", "FashionMNIST", "test", 2_000),
    ("mnist", "MNIST", "test", 2_000),
)

LICENSES = """\
# Data embedded in oodbench

These files are small slices of two public datasets, shipped so that `oodbench demo` runs offline.
Each `<name>/<split>.npz` holds `x` (uint8 images, N x 28 x 28), `y` (int64 labels) and `index`
(each image's position in the canonical split). They were built by `scripts/build_demo_data.py`
from the original idx files (`*-ubyte.gz`, md5 equal to torchvision's): the first N images of the
split, in the original order, unmodified.

| file | images | dataset | licence | copyright / source |
|---|---|---|---|---|
| `fashionmnist/train.npz` | first 10,000 of 60,000 train | Fashion-MNIST | MIT | (c) 2017 Zalando SE; https://github.com/zalandoresearch/fashion-mnist (Xiao, Rasul & Vollgraf 2017) |
| `fashionmnist/test.npz` | first 2,000 of 10,000 test | Fashion-MNIST | MIT | as above |
| `mnist/test.npz` | first 2,000 of 10,000 test | MNIST | CC BY-SA 3.0 | Yann LeCun, Corinna Cortes and Christopher J. C. Burges; http://yann.lecun.com/exdb/mnist/ |

Fashion-MNIST is released under the MIT licence (https://github.com/zalandoresearch/fashion-mnist/blob/master/LICENSE).
MNIST is made available under the Creative Commons Attribution-Share Alike 3.0 licence
(https://creativecommons.org/licenses/by-sa/3.0/); this subset is shared under the same terms.
"""


def find_idx(raw: Path, stem: str) -> Path:
    for path in (raw / stem, raw / f"{stem}.gz"):
        if path.is_file():
            return path
    raise SystemExit(f"error: {raw / stem}[.gz] not found; pass --source with MNIST/raw and FashionMNIST/raw")


def build(source: Path, out: Path) -> list[Path]:
    written = []
    for name, folder, split, count in SUBSETS:
        raw = source / folder / "raw"
        images = read_idx(find_idx(raw, IDX_IMAGES[split]), read_image_file)[:count].numpy()
        labels = read_idx(find_idx(raw, IDX_LABELS[split]), read_label_file)[:count].numpy().astype(np.int64)
        path = out / name / f"{split}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, x=images, y=labels, index=np.arange(count, dtype=np.int64))
        written.append(path)
    licences = out / "LICENSES.md"
    licences.write_text(LICENSES)
    return [*written, licences]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help=f"folder with MNIST/raw and FashionMNIST/raw (default: {DEFAULT_SOURCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for path in build(args.source, args.out):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
