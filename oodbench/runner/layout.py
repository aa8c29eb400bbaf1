"""Where a run keeps its files. One folder per (model, dataset, seed):

    runs/glow-fashionmnist-seed0/       (a background model of rate 0.2: glow-fashionmnist-seed0-bg0.2/)
      config.yaml                 the run record (schema.RunRecord: model, data, training, versions)
      splits.npz                  dataset indices of the images trained on and validated on
      trained.json                written when training finished (epochs, steps, best validation BPD, seconds)
      checkpoints/last.ckpt       the most recent epoch-end checkpoint (resuming starts here)
      checkpoints/best.ckpt       lowest validation bits/dim
      logs/metrics.csv            one row per complete epoch (runner/callbacks.py, EpochLog)
      logs/ood_curve.csv          bits/dim of fixed in-train, in-test and OOD subsets during training (runner/ood_curve.py)
      statistics/                 per-sample model outputs of each scored set, cached (runner/statistics.py)
      eval/<in>_vs_<out>/         scores.csv (per sample), metrics.json (one row per score), config.yaml
      analysis/                   the paper's analyses of a flow (runner/analyze.py): per pair
                                  decomposition_<in>_vs_<out>.csv/.png, second_order_<in>_vs_<out>.csv;
                                  ood_curve.png from logs/ood_curve.csv
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from oodbench.errors import OodbenchError

DEFAULT_RUNS = Path("runs")


def slug(text: str) -> str:
    """A file-name-safe form of a dataset or pair name ("gray:cifar10" -> "gray-cifar10")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def run_name(model: str, dataset: str, seed: int, background: float | None = None) -> str:
    """"glow-cifar10-seed0"; a background model (Ren et al. 2019) of perturbation rate 0.2: "...-seed0-bg0.2"."""
    return f"{model}-{slug(dataset)}-seed{seed}" + (f"-bg{background:g}" if background is not None else "")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def trained(self) -> Path:
        return self.root / "trained.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits.npz"

    @property
    def statistics(self) -> Path:
        return self.root / "statistics"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def epoch_log(self) -> Path:
        return self.logs / "metrics.csv"

    @property
    def ood_curve(self) -> Path:
        return self.logs / "ood_curve.csv"

    def eval_dir(self, in_name: str, out_name: str) -> Path:
        return self.root / "eval" / f"{slug(in_name)}_vs_{slug(out_name)}"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def analysis_file(self, kind: str, in_name: str, out_name: str, suffix: str = ".csv") -> Path:
        """analysis/<kind>_<in>_vs_<out><suffix>, e.g. analysis/second_order_cifar10_vs_svhn.csv."""
        return self.analysis / f"{kind}_{slug(in_name)}_vs_{slug(out_name)}{suffix}"

    def checkpoint(self, which: str = "best") -> Path:
        """The requested checkpoint, falling back from best to last (a run with no validation)."""
        if which not in ("best", "last"):
            raise OodbenchError(f"bad checkpoint {which!r}; use 'best' or 'last'")
        candidates = [self.best, self.last] if which == "best" else [self.last]
        for path in candidates:
            if path.is_file():
                return path
        raise OodbenchError(
            f"no checkpoint in {self.checkpoints}; train first with `oodbench train --run-dir {self.root}`"
        )


def find_run(runs_dir: Path, model: str, dataset: str, seed: int) -> RunPaths:
    """The run folder for (model, dataset, seed) under `runs_dir`, which must exist."""
    paths = RunPaths(Path(runs_dir) / run_name(model, dataset, seed))
    if not paths.config.is_file():
        raise OodbenchError(
            f"no trained {model} on {dataset} (seed {seed}) in {paths.root}; "
            f"run `oodbench train --model {model} --dataset {dataset}` first or pass --run DIR"
        )
    return paths
