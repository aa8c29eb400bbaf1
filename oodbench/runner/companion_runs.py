"""The other runs some scores need beside the evaluated one (scores/companions.py): a background model
(Ren et al. 2019's likelihood ratio) and the other members of an ensemble (Choi et al. 2018's other
seeds). Each is checked to be comparable, scored on the same images into its own statistics cache, and
its statistics joined onto the run's. `evaluate` and the gate (`oodbench score`) both join them here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from oodbench.config import EvalConfig
from oodbench.data import ImageSet
from oodbench.errors import OodbenchError
from oodbench.models.module import LikelihoodModule
from oodbench.runner.layout import RunPaths
from oodbench.runner.run_loading import open_module
from oodbench.runner.statistics import set_statistics
from oodbench.schema import RunRecord
from oodbench.scores.companions import join_background, join_members


@dataclass(frozen=True)
class CompanionRuns:
    """The other runs whose statistics of the same images some scores need (scores/companions.py), for
    `run`: a background model (likelihood ratio) and the other members of an ensemble (other seeds);
    scored with `eval`'s settings from their `checkpoint` (best or last), as `run` is. `evaluate` and the
    gate (`oodbench score`) both join them with `join_companions`."""

    run: RunPaths
    background: RunPaths | None = None
    members: tuple[RunPaths, ...] = ()
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: str = "best"
    recompute: bool = False

    @property
    def all(self) -> tuple[RunPaths, ...]:
        return (*filter(None, [self.background]), *self.members)


@dataclass(frozen=True)
class Companion:
    """Another run scored on this evaluation's sets: its module, checkpoint and record."""

    paths: RunPaths
    module: LikelihoodModule
    checkpoint: Path
    record: RunRecord


def _companion(paths: RunPaths, record: RunRecord, runs: CompanionRuns, role: str) -> Companion:
    """The run in `paths` as this run's `role` ("background" or "member"), checked to be comparable."""
    other = RunRecord.read(paths.config)
    flag = "--background-run" if role == "background" else "--member-run"
    if Path(paths.root).resolve() == Path(runs.run.root).resolve():
        raise OodbenchError(f"{flag} {paths.root} is the run being evaluated; pass another run")
    if (other.model, other.dataset, tuple(other.image_shape), other.bpd_dims) != (
            record.model, record.dataset, tuple(record.image_shape), record.bpd_dims):
        raise OodbenchError(f"{flag} {paths.root} is a {other.model} on {other.dataset}; this run is a {record.model} on "
                            f"{record.dataset}: pass a run of the same family and data")
    if role == "background" and other.background is None:
        raise OodbenchError(f"--background-run {paths.root} is not a background model; train one with "
                            f"`oodbench train --model {record.model} --dataset {record.dataset} --background 0.2`")
    if role == "member" and (other.background is not None or other.setup() != record.setup()):
        raise OodbenchError(f"--member-run {paths.root} is not the same setup as {runs.run.root} with another seed "
                            "(its settings differ); an ensemble's members differ only in their seed")
    module, checkpoint, _ = open_module(paths, runs.checkpoint, runs.eval, other)
    return Companion(paths=paths, module=module, checkpoint=checkpoint, record=other)


def join_companions(stats: dict[str, pd.DataFrame], sets: dict[str, ImageSet], runs: CompanionRuns,
                    record: RunRecord, quiet: bool, only: tuple[str, ...] | None = None,
                    ) -> tuple[dict[str, pd.DataFrame], str | None]:
    """`stats` with the background model's and the ensemble members' statistics of the same images
    joined on (computed, or read from each companion's own statistics cache) for the sets `only` (None:
    all); and the ensemble's seeds ("0,1,2", the run's own among them; None without members)."""
    cfg = runs.eval
    scored = {name: images for name, images in sets.items() if only is None or name in only}

    def statistics_of(companion: Companion) -> dict[str, pd.DataFrame]:
        found, _, _ = set_statistics(companion.module, scored, cfg, paths=companion.paths,
                                     checkpoint=companion.checkpoint, bpd_dims=record.bpd_dims, quiet=quiet,
                                     recompute=runs.recompute)
        return found

    joined, seeds = dict(stats), None
    try:
        if runs.background is not None:
            background = statistics_of(_companion(runs.background, record, runs, "background"))
            joined = {name: join_background(frame, background[name]) if name in scored else frame
                      for name, frame in joined.items()}
        if runs.members:
            companions = [_companion(p, record, runs, "member") for p in runs.members]
            members = [statistics_of(companion) for companion in companions]
            joined = {name: join_members(frame, [stats[name], *(m[name] for m in members)]) if name in scored
                      else frame for name, frame in joined.items()}
            seeds = ",".join(map(str, sorted([record.seed, *(c.record.seed for c in companions)])))
    except ValueError as exc:  # images that do not match: a bug or a changed data root, never a partial join
        raise OodbenchError(str(exc)) from None
    return joined, seeds
