"""The names a command line may use, declared without importing torch, Lightning or pandas, so that a
typo is answered at once: `oodbench train --model glwo` used to spend 5 s importing them before saying
"unknown model".

Each list here is the light face of a registry that holds the heavy objects: the model families
(`models/families.py`), the datasets with the two facts a dataset reference is checked against, channels
and splits (`data/datasets.py`), the OOD scores (`scores/__init__.py`) and the kinds of a user's own
images (`data/user.py`). The registries build and hold the objects; tests/test_names.py checks that each
list here equals its registry, so the two cannot drift apart. The CLI's help lists these names, and an
unknown one gets the registry's own message (`registry.unknown_name`).

MODELS and SCORES end with the names installed plugins declare (`plugins.py`), read from the packages'
metadata without importing them, as their registries add them.
"""

from __future__ import annotations

from dataclasses import dataclass

from oodbench import plugins
from oodbench.errors import OodbenchError
from oodbench.registry import unknown_name

# The built-in model families, in the order they were registered (the order tables show them in).
BUILTIN_MODELS = ("glow", "cv-glow", "pixelcnn", "vae", "diffusion")
MODELS = BUILTIN_MODELS + plugins.names(plugins.FAMILIES_GROUP, BUILTIN_MODELS)

# The built-in OOD scores, in registry order.
BUILTIN_SCORES = ("likelihood", "input_complexity", "typicality", "dose", "likelihood_ratio", "ensemble_likelihood",
                  "waic", "likelihood_regret", "score_statistic", "fisher_combined", "layer_gradients",
                  "lid_dual_threshold", "diffpath", "msma")
SCORES = BUILTIN_SCORES + plugins.names(plugins.SCORES_GROUP, BUILTIN_SCORES)


@dataclass(frozen=True)
class DatasetName:
    """What a dataset reference is checked against: "gray:" needs 3 channels, "@SPLIT" one of `splits`."""

    channels: int
    splits: tuple[str, ...]


_TRAIN_TEST = ("train", "test")
DATASETS = {
    "mnist": DatasetName(1, _TRAIN_TEST),
    "fashionmnist": DatasetName(1, _TRAIN_TEST),
    "kmnist": DatasetName(1, _TRAIN_TEST),
    "cifar10": DatasetName(3, _TRAIN_TEST),
    "cifar100": DatasetName(3, _TRAIN_TEST),
    "svhn": DatasetName(3, ("train", "test", "extra")),
    "celeba": DatasetName(3, ("train", "valid", "test")),
    "tinyimagenet": DatasetName(3, _TRAIN_TEST),
    "imagenet32": DatasetName(3, _TRAIN_TEST),
    "constant": DatasetName(3, _TRAIN_TEST),
    "noise": DatasetName(3, _TRAIN_TEST),
}

# A user's own images: `folder:PATH`, `npz:PATH`.
USER_KINDS = ("folder", "npz")


# Who released the checkpoints `oodbench import` converts (published/__init__.py's SOURCES).
CHECKPOINT_SOURCES = ("y0ast-glow", "pclucas14-pixelcnn", "likelihood-regret-vae", "diffusers-ddpm")


def check_checkpoint_source(name: str) -> str:
    """`name` if `oodbench import` knows the source; else the registry's error listing the valid ones."""
    if name not in CHECKPOINT_SOURCES:
        raise unknown_name("checkpoint source", name, CHECKPOINT_SOURCES)
    return name


def check_model(name: str) -> str:
    """`name` if it is a registered model family; else the registry's error listing the valid ones."""
    plugins.check(plugins.FAMILIES_GROUP, BUILTIN_MODELS)  # a plugin with a built-in's name: the registry's error
    if name not in MODELS:
        raise unknown_name("model", name, MODELS)
    return name


def dataset(name: str) -> DatasetName:
    """The registered dataset `name` (lower case, no prefix); else the registry's error listing the valid ones."""
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    return DATASETS[name]


def parse_scores(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...] | None:
    """"likelihood,typicality" (or a list) -> registered names, checked; None -> None (every score)."""
    plugins.check(plugins.SCORES_GROUP, BUILTIN_SCORES)
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise OodbenchError(f"no score named in {text!r}; valid scores: {', '.join(sorted(SCORES))}")
    for name in names:
        if name not in SCORES:
            raise unknown_name("score", name, SCORES)
    return tuple(dict.fromkeys(names))
