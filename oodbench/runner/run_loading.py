"""Loading a run: its record, its checkpoint as a module, and its image sets, for a run oodbench trained
or one imported from a released checkpoint (`runner/importing.py`). `evaluate`, `score` (the gate),
`analyze`, the likelihood curve and `import` all open runs here, so each of those reads as its own steps.

The in-distribution sets of a run (`schema.SETS`):
- trained here: in-train samples the images it trained on (`splits.npz`), in-val is its validation
  hold-out, in-test the dataset's test split (or, for a user's set without one, the images it neither
  trained nor validated on: `held_out`);
- imported: the model trained on the whole training split elsewhere, so it has no hold-out of its own:
  the test split is halved, seeded (`FIT_HALF_SEED`), and the fitted scores are fitted on one half
  (in-val) and compared on the other (in-test); rows say so in `fit_set` and `in_split`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oodbench.config import EvalConfig
from oodbench.data import DatasetRef, ImageSet, Pair, get_dataset, load_images, match_channels
from oodbench.errors import OodbenchError
from oodbench.models.module import LikelihoodModule
from oodbench.runner.layout import RunPaths
from oodbench.runner.lightning import read_checkpoint
from oodbench.schema import FIT_SET, RunRecord, read_splits

IN_TRAIN_SEED = 1  # which of the trained-on images the in-train set samples
FIT_HALF_SEED = 1  # which half of an imported run's test split its fitted scores are fitted on
IMPORTED_TEST = "test-half"  # an imported run's in-test split: the half of the test split not fitted on


def load_module(path: Path) -> tuple[LikelihoodModule, dict[str, Any]]:
    """A trained module from a checkpoint read with weights_only=True, and the checkpoint itself;
    an unreadable, foreign or unsafe file is a clear error."""
    checkpoint = read_checkpoint(path)
    try:
        module = LikelihoodModule(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except OodbenchError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing keys, shapes of another model...
        raise OodbenchError(f"checkpoint {path} is not a checkpoint of this oodbench ({type(exc).__name__}); "
                            "retrain the run") from None
    return module.eval(), checkpoint


def images_among(images: ImageSet, wanted: np.ndarray, n: int | None, role: str) -> ImageSet:
    """The images of `images` whose index is in `wanted`: `n` of them (seeded, in index order), or all."""
    positions = np.flatnonzero(np.isin(images.index.numpy(), wanted))
    if len(positions) < len(wanted):
        raise OodbenchError(f"{images.name} {images.split} now holds {len(positions)} of the {len(wanted)} images the "
                            f"run {role}; point --data-root at the data it was trained on")
    if n is not None:
        order = torch.randperm(len(positions), generator=torch.Generator().manual_seed(IN_TRAIN_SEED))[:n]
        positions = positions[order.sort().values.numpy()]
    chosen = torch.from_numpy(positions)
    return dataclasses.replace(images, images=images.images[chosen].contiguous(), index=images.index[chosen].contiguous())


HELD_OUT = "held-out"  # the in-test split of a run on a flat folder: the images it neither trained nor validated on


def held_out(images: ImageSet, used: np.ndarray, limit: int | None, run: Path) -> ImageSet:
    """The in-distribution test set of a run on a user's set whose "test" is its "train" (a flat folder, an
    npz file): the images the run neither trained nor validated on (`used`: the indices of both), i.e. the
    test part training left out (train.holdout) and any beyond --limit-train. Never the validation images,
    which picked the best checkpoint and which the scores are fitted on."""
    rest = images.index.numpy()[~np.isin(images.index.numpy(), used)]
    if len(rest) == 0:
        raise OodbenchError(f"run {run} trained or validated on every image of {images.name}, which has no test/ "
                            "subfolder: nothing is left to test on; retrain it (`--overwrite`: training now leaves a "
                            "test part out), train with --limit-train, or add a test/ subfolder")
    kept = images_among(images, rest[:limit] if limit is not None else rest, None, "held out")
    return dataclasses.replace(kept, split=HELD_OUT)


def in_split(pair: Pair, record: RunRecord) -> str:
    """The split the in-distribution test images come from: HELD_OUT for a user's set without test/, and
    IMPORTED_TEST for an imported run (half of the test split)."""
    if record.imported:
        return IMPORTED_TEST
    source = get_dataset(pair.in_ref.base).user
    return HELD_OUT if source is not None and source.shared_splits else pair.in_ref.split or "test"


def fit_set_text(fit_set: str, record: RunRecord) -> str:
    """The `fit_set` column: which images the fitted scores were fitted on."""
    if record.imported and fit_set == FIT_SET:
        return f"{FIT_SET}: the other half of {record.dataset} test (seed {FIT_HALF_SEED}), not compared"
    return fit_set


def halves(images: ImageSet, seed: int = FIT_HALF_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The indices of `images` in two seeded halves (each in index order): (fitted on, compared)."""
    index = images.index.numpy()
    if len(index) < 2:
        raise OodbenchError(f"{images.name} {images.split} holds {len(index)} image(s): an imported run needs at "
                            "least 2 to fit its scores on one half and compare on the other")
    order = torch.randperm(len(index), generator=torch.Generator().manual_seed(seed)).numpy()
    half = len(index) // 2
    return np.sort(index[order[:half]]), np.sort(index[order[half:]])


@dataclass(frozen=True)
class RunImages:
    """Loads image sets the way a run needs them: its data root, and a user's own images at the model's
    channels and size (data/user.py); registered sets come as they are."""

    record: RunRecord
    run: RunPaths
    data_root: str | None = None  # None: the run's own
    download: bool = False
    skip_unreadable: bool = False

    def load(self, name: str, split: str, limit: int | None = None) -> ImageSet:
        data_root = self.data_root if self.data_root is not None else self.record.data_root
        channels, size = self.record.image_shape[0], self.record.image_shape[1]
        return load_images(name, split, data_root=data_root, download=self.download, limit=limit, channels=channels,
                           size=size, skip_unreadable=self.skip_unreadable, small_images=self.record.small_images)

    def in_distribution(self, ref: DatasetRef, cfg: EvalConfig) -> dict[str, ImageSet]:
        """in_train (a sample of the images trained on), in_val (the validation hold-out) and in_test."""
        if ref.name != self.record.dataset:
            raise OodbenchError(f"run {self.run.root} was trained on {self.record.dataset}, not {ref.name}; "
                                f"use --pair {self.record.dataset}:OUT or another --run")
        if self.record.imported:
            return self._imported(ref, cfg)
        train_index, val_index = read_splits(self.run.splits)
        training_split = self.load(ref.name, "train")
        source = get_dataset(ref.base).user
        if source is not None and source.shared_splits:
            in_test = held_out(training_split, np.concatenate([train_index, val_index]), cfg.limit, self.run.root)
        else:
            in_test = self.load(ref.name, ref.split or "test", cfg.limit)
        return {"in_train": images_among(training_split, train_index, cfg.train_sample, "trained on"),
                "in_val": images_among(training_split, val_index, None, "validated on"),
                "in_test": in_test}

    def trained_on(self) -> ImageSet:
        """Every image the model trained on: its `splits.npz` share of the training split, or all of the
        training split for an imported run."""
        training_split = self.load(self.record.dataset, "train")
        if self.record.imported:
            return training_split
        train_index, _ = read_splits(self.run.splits)
        return images_among(training_split, train_index, None, "trained on")

    def _imported(self, ref: DatasetRef, cfg: EvalConfig) -> dict[str, ImageSet]:
        """An imported run's sets: in_train from the whole training split (all of it was trained on), and the
        test split's two seeded halves as in_val (fitted on) and in_test (compared), each up to --limit."""
        training_split = self.load(ref.name, "train")
        test = self.load(ref.name, ref.split or "test")
        fit_half, test_half = halves(test)
        limit = cfg.limit
        return {"in_train": images_among(training_split, training_split.index.numpy(), cfg.train_sample, "trained on"),
                "in_val": images_among(test, fit_half[:limit], None, "fits on"),
                "in_test": dataclasses.replace(images_among(test, test_half[:limit], None, "tests on"),
                                               split=IMPORTED_TEST)}

    def fitting(self, images: ImageSet, match: bool) -> ImageSet:
        """`images` in the model's shape: a channel mismatch converted when `match`, else an error."""
        want = tuple(self.record.image_shape)
        if images.shape[0] != want[0]:
            if not match:
                raise OodbenchError(
                    f"{images.name} has {images.shape[0]} channels but the model takes {want[0]}; pass "
                    f"--match-channels to convert it, or use gray:{images.name} / an OOD set with {want[0]} channels")
            images = match_channels(images, want[0])
        if tuple(images.shape) != want:
            raise OodbenchError(f"{images.name} images are {tuple(images.shape)}, the model takes {want}")
        return images


def open_module(paths: RunPaths, which: str, cfg: EvalConfig, record: RunRecord
                ) -> tuple[LikelihoodModule, Path, dict[str, Any]]:
    """The run's `which` checkpoint ("best" or "last") as a module set up to score as `cfg` says (its noise
    seed, a VAE's k); with the checkpoint's path and contents."""
    path = paths.checkpoint(which)
    module, checkpoint = load_module(path)
    module.noise_seed = cfg.noise_seed
    if cfg.iw_samples is not None:
        set_iw_samples(module, cfg.iw_samples, record)
    return module, path, checkpoint


def set_iw_samples(module: LikelihoodModule, k: int, record: RunRecord) -> None:
    if not hasattr(module.model, "iw_samples"):
        raise OodbenchError(f"--iw-samples applies to latent-variable models (vae); this run is a {record.model}, "
                            "whose likelihood needs no samples: drop --iw-samples")
    module.model.iw_samples = k
