"""What each command holds while it works (the locks are oodbench/locks.py's):

- train: its run folder, exclusively (`<run>/.lock`): nothing else may read or write a run while it is
  (re)trained;
- evaluate: the run shared, the evaluation exclusively (`<run>/.eval-<in>_vs_<out>.lock`), and each
  companion run (a background model, an ensemble member) shared;
- analyze: the run shared, its analyses exclusively (`<run>/.analysis.lock`);
- score: the run shared;
- sweep: a cell's claim (`<run>/.sweep.lock`) while it works on the cell, so that a second sweep on the
  same runs folder goes on with other cells (runner/sweep.py), and within it what the commands hold.

A second process asking for what is held gets `FolderBusy`: one line naming the holder, exit code 2.
Lock files live in folders the command writes anyway, so a refused or failed command leaves no empty
result folder behind. Only the first process of a DDP job holds locks: Lightning re-runs the command
for the others, which take their share of the first one's work and must not be refused by it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from pytorch_lightning.utilities import rank_zero_only

from oodbench.locks import hold
from oodbench.runner.layout import RunPaths
from oodbench.schema import RunRecord

SWEEP_CLAIM = "sweep.lock"
ANALYSIS = "analysis.lock"


def _first_process() -> bool:
    return rank_zero_only.rank == 0


def hold_run(paths: RunPaths, *, shared: bool) -> contextlib.AbstractContextManager[None]:
    """The run folder: exclusive to train it, shared to read its checkpoint and records (a folder that is not
    a run is then an error before any lock file is made in it)."""
    if shared:
        RunRecord.read(paths.config)
    return hold(paths.root, label=f"run folder {paths.root}", shared=shared, enabled=_first_process())


@contextlib.contextmanager
def hold_runs(run: RunPaths, companions: tuple[RunPaths, ...] = ()) -> Iterator[None]:
    """A run and the companion runs it is scored with (a background model, ensemble members), all shared:
    no `train` may change them while they are read."""
    with contextlib.ExitStack() as held:
        for paths in (run, *companions):
            held.enter_context(hold_run(paths, shared=True))
        yield


def hold_evaluation(paths: RunPaths, folder: Path) -> contextlib.AbstractContextManager[None]:
    """One evaluation's folder (`paths.eval_dir(...)`), exclusively; its lock lives in the run folder, so a
    refused or failed evaluation makes no folder."""
    return hold(paths.root, name=f"eval-{folder.name}.lock", label=f"evaluation {folder}", enabled=_first_process())


def hold_analyses(paths: RunPaths) -> contextlib.AbstractContextManager[None]:
    return hold(paths.root, name=ANALYSIS, label=f"the analyses of {paths.root}", enabled=_first_process())


def claim_cell(paths: RunPaths) -> contextlib.AbstractContextManager[None]:
    """A sweep's claim on a cell: the other sweeps on the runs folder leave it to this one."""
    return hold(paths.root, name=SWEEP_CLAIM, label=f"sweep cell {paths.root}", enabled=_first_process())
