"""The files a run leaves and a report reads, in one place: the run record, the training split, the
sets every evaluation scores, the per-sample statistics' and the results' columns, and the "OOD gets
lower bits/dim" rule.

Writers (`runner/train.py`, `runner/evaluate.py`) and readers (`runner/evaluate.py`, `report/`) use
these definitions and nothing else, so a column cannot mean one thing where it is written and another
where it is read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from oodbench.atomic import write_arrays, write_yaml
from oodbench.errors import OodbenchError

# Bumped when a run folder's files change meaning; older folders are refused with a clear message.
RUN_SCHEMA = 2

# The sets every evaluation scores: the three of Nalisnick et al. (2019, Figure 1) and the run's
# validation hold-out, training-distribution images the model never trained on, which fitted scores
# (typicality, DoSE) are fitted on.
SETS = ("in_train", "in_val", "in_test", "out_test")
FIT_SET = "in_val"  # falls back to in_train for a run trained without a validation hold-out
SET_ROLES = {"in_train": "in-distribution, trained on", "in_val": "in-distribution, held out",
             "in_test": "in-distribution", "out_test": "OOD"}

# Per-sample statistics (runner/statistics.py): `log_px` (nats) and `bpd`, then the family's parts
# (flows: log_pz, logdet and each level's; the VAE: elbo, kl, reconstruction), then these, which no
# model gives: the lossless compressed length of the image in bits per dimension (data/compression.py).
MODEL_FREE_STATISTICS = ("png_bpd", "jpeg2000_bpd")
# Statistics an evaluation adds only when a score asks for them (the VAE's likelihood regret, which
# refits each image's posterior; every family's per-image gradient, one column per parameter tensor under
# OPTIONAL_PREFIXES, as are a diffusion model's DiffPath and MSMA statistics), and the prefixes of columns
# joined from other runs (a background model's, an ensemble's members': scores/companions.py). Scores that
# take "every statistic the model gives" (DoSE) leave them all out, so they do not change with what else was
# evaluated.
OPTIONAL_STATISTICS = ("regret", "elbo_refit", "grad_norm", "lid", "lid_lidl")  # lid: analysis/lid.py
JOINED_PREFIXES = ("background_", "member_")
# The per-image gradient of log p(x) w.r.t. the parameters (models/gradients.py, scores/gradients.py):
# "grad_sq:<parameter>[<entries>]", its squared L2 norm over one parameter tensor of <entries> numbers
# (the size travels in the name: the score test's Fisher needs it), and "grad_norm", the whole gradient's norm.
GRADIENT_PREFIX = "grad_sq:"
# A diffusion model's OOD statistics (models/diffusion/ood_statistics.py, scores/diffpath.py, scores/msma.py):
# DiffPath's six sums over the DDIM path ("diffpath:eps_sum", ...), MSMA's score norm at each noise level,
# largest first ("msma:norm_00", "msma:norm_01", ...).
DIFFPATH_PREFIX = "diffpath:"
DIFFPATH_STATISTICS = ("eps_sum", "eps_sum_sq", "eps_sum_cb", "deps_dt", "deps_dt_sq", "deps_dt_cb")
MSMA_PREFIX = "msma:"
OPTIONAL_PREFIXES = (GRADIENT_PREFIX, DIFFPATH_PREFIX, MSMA_PREFIX)
# What each statistic cost (runner/statistics.py): "seconds:<statistic>", the measured seconds per image of the
# predict run that computed it, and "machine:<statistic>", where it ran; cached with the statistic. Not model
# statistics: no score reads them as such.
COST_PREFIXES = ("seconds:", "machine:")
# How per-sample statistics of two runs are matched: the same image of the same set.
JOIN_KEYS = ("set", "dataset", "split", "index")
# scores.csv: one row per image, these first, then the statistics' other columns, then one column per
# per-sample score, named by the score's label ("score:typicality(batch=1)").
SCORE_COLUMNS = ("set", "dataset", "split", "index", "log_px", "bpd")
SCORE_PREFIX = "score:"

# Training settings that say where and how fast a run trains, or what it logs, not what it learns: a
# resumed run may change them, and runs that differ only in them are the same setup. (The likelihood
# curve's scoring restores the random state, so `curve_every` leaves the weights as they were; `compile`
# fuses the same arithmetic, which moves only float rounding, as another device does.)
PLACEMENT_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "num_workers", "logger", "curve_every",
                  "compile")
# Settings that bound how long a run trains; `train --resume` may extend them.
BUDGET_KEYS = ("epochs", "max_minutes")

# results.csv / metrics.json: one row per (evaluation, score variant); README.md explains each column.
RESULT_COLUMNS = (
    "model", "in_dataset", "in_split", "out_dataset", "out_split", "pair", "in_transform", "out_transform", "seed", "setup",
    "score", "score_params", "fit_set", "units_in", "units_out",
    "unit", "bpd_dims", "discretization", "bound",
    "n_params", "n_train", "epochs", "train_seconds",
    *(f"n_{s}" for s in SETS),
    *(f"bpd_{s}_{stat}" for s in SETS for stat in ("mean", "std")),
    "auroc", "auroc_low", "auroc_high", "aupr_in", "aupr_out", "fpr_at_95_tpr", "fpr_at_80_tpr",
    "threshold", "flagged_in", "flagged_out", "ood_lower_bpd",
    "cost_networks", "cost_passes", "cost_seconds_per_1000", "cost_machine",
    "run", "checkpoint", "background_run", "members",
)


# The columns of results.csv and scores.csv that are measured on the clock (or name the machine), not computed
# from the images and the weights: two runs that compute the same thing differ in these and only these.
MEASURED_RESULT_COLUMNS = ("train_seconds", "cost_seconds_per_1000", "cost_machine")


def measured_columns(columns) -> list[str]:
    """Those of `columns` (of results.csv or scores.csv) that are timings or machine names: what two
    identical computations are allowed to differ in."""
    return [c for c in columns if c in MEASURED_RESULT_COLUMNS or c.startswith(COST_PREFIXES)]


def gradient_column(parameter: str, entries: int) -> str:
    """The statistic column of one parameter tensor's squared gradient norm ("grad_sq:conv.weight[864]")."""
    return f"{GRADIENT_PREFIX}{parameter}[{entries}]"


def diffpath_column(statistic: str) -> str:
    """The column of one of DiffPath's path statistics ("deps_dt_sq" -> "diffpath:deps_dt_sq")."""
    if statistic not in DIFFPATH_STATISTICS:
        raise ValueError(f"DiffPath has no statistic {statistic!r}; it has {', '.join(DIFFPATH_STATISTICS)}")
    return f"{DIFFPATH_PREFIX}{statistic}"


def msma_column(level: int) -> str:
    """The column of MSMA's score norm at noise level `level` (0: the largest noise): "msma:norm_03"."""
    return f"{MSMA_PREFIX}norm_{level:02d}"


def msma_columns(columns: list[str]) -> list[str]:
    """MSMA's score-norm columns among `columns`, largest noise first."""
    found = [c for c in columns if re.fullmatch(re.escape(MSMA_PREFIX) + r"norm_\d+", c)]
    return sorted(found, key=lambda c: int(c.rsplit("_", 1)[1]))


def gradient_columns(columns: list[str]) -> dict[str, int]:
    """{column: entries} of the gradient statistic's per-layer columns among `columns`, in their order."""
    found = (re.fullmatch(re.escape(GRADIENT_PREFIX) + r".+\[(\d+)\]", c) for c in columns)
    return {match.group(0): int(match.group(1)) for match in found if match}


def ood_gets_lower_bpd(bpd_in_test_mean: float, bpd_out_test_mean: float) -> bool:
    """The paper's failure: the OOD test set gets *lower* mean bits/dim (higher likelihood) than the
    in-distribution test set, so a likelihood threshold would let it through."""
    return bool(bpd_out_test_mean < bpd_in_test_mean)


def short_hash(data: Any) -> str:
    """12 hex digits of the SHA-256 of `data` as canonical JSON: a stable name for a set of settings."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: what a checkpoint's statistics are of, and which released file a run was
    imported from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunRecord:
    """What a run folder's `config.yaml` records: what was trained, on which images, how.

    `image_shape` is what the model takes; `data_shape` is the dataset's own image before the zero
    padding of 28x28 grey sets (the model's image when they are resized instead), and bits/dim is per
    dimension of it (`bpd_dims`, see `units.py`).
    The images trained on are in `splits.npz` beside it (`write_splits` / `read_splits`).
    """

    model: str
    dataset: str
    seed: int
    data_root: str | None
    data_source: str
    image_shape: tuple[int, int, int]
    data_shape: tuple[int, int, int]
    n_train: int
    n_val: int
    model_settings: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    schema: int = RUN_SCHEMA
    # A user's own images (data/user.py): the content hash of the files trained on; None for registered sets.
    data_digest: str | None = None
    # How 28x28 sets reach a 32x32 model: "pad" (a zero border, the paper's) or "resize" (bilinear, as Xiao
    # et al. 2020 trained their VAEs); data/loading.py applies it to every set the run scores.
    small_images: str = "pad"
    # A model trained elsewhere and imported (runner/importing.py): where its weights came from (source,
    # repository, files with their sha256, the bits/dim its authors report, the architecture read off the
    # file) and what it was trained on; None for a model oodbench trained.
    origin: dict[str, Any] | None = None

    @property
    def imported(self) -> bool:
        return self.origin is not None

    @property
    def bpd_dims(self) -> int:
        return math.prod(self.data_shape)

    @property
    def background(self) -> float | None:
        """The perturbation rate if this run is a background model (Ren et al. 2019), else None."""
        return self.train.get("background")

    def learning_settings(self) -> dict[str, Any]:
        """Everything that changes what the model learns (not where it ran, nor for how long)."""
        train = {k: v for k, v in self.train.items() if k not in PLACEMENT_KEYS + BUDGET_KEYS}
        return {"model": self.model, "dataset": self.dataset, "data_root": self.data_root, "seed": self.seed,
                "model_settings": self.model_settings,
                "train": train, "data_shape": list(self.data_shape), "n_train": self.n_train, "n_val": self.n_val,
                **({"data_digest": self.data_digest} if self.data_digest is not None else {}),
                **({"small_images": self.small_images} if self.small_images != "pad" else {}),
                **({"origin": self.origin} if self.origin is not None else {})}

    def setup(self) -> str:
        """A name for the setup, shared by the runs that differ only in their seed (the report's unit
        of "the same experiment, several seeds")."""
        settings = self.learning_settings()
        settings.pop("seed")
        settings["train"] = {k: v for k, v in settings["train"].items() if k != "seed"}
        return short_hash(settings)

    def write(self, path: Path) -> None:
        data = dataclasses.asdict(self)
        data["image_shape"], data["data_shape"] = list(self.image_shape), list(self.data_shape)
        write_yaml(path, data)

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """The record at `path`; a missing, foreign or older-format file is a one-line error."""
        folder = Path(path).parent
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            data = None
        if not isinstance(data, dict) or "model" not in data or "dataset" not in data:
            raise OodbenchError(f"{folder} is not an oodbench run folder (no valid config.yaml)")
        if data.get("schema") != RUN_SCHEMA:
            raise OodbenchError(f"run {folder} was made by an older oodbench (run format {data.get('schema', 1)}, this "
                                f"one reads {RUN_SCHEMA}); retrain it with `oodbench train ... --overwrite`")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise OodbenchError(f"{path} is incomplete ({exc}); retrain the run with --overwrite") from None
        return dataclasses.replace(record, image_shape=tuple(record.image_shape), data_shape=tuple(record.data_shape))


def write_splits(path: Path, *, train_index: np.ndarray, val_index: np.ndarray) -> None:
    """The dataset indices (`ImageSet.index`) of the images a run trains and validates on."""
    write_arrays(path, {"train_index": np.asarray(train_index, np.int64), "val_index": np.asarray(val_index, np.int64)})


def read_splits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, val_index) as written by `write_splits`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["train_index"], archive["val_index"]
    except (OSError, KeyError, ValueError):
        raise OodbenchError(f"{path} is missing or unreadable: the run does not say which images it trained on; "
                            "retrain it with --overwrite") from None
