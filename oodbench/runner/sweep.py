"""`oodbench sweep`: the whole matrix of a profile, resumable and shardable.

A profile (benchmarks.yaml) names models, dataset pairs and seeds. A *cell* is one (model,
in-distribution dataset, seed): it is trained once, then evaluated on every pair that has its dataset
as in-distribution. Where the profile scores the likelihood ratio, each (model, dataset) has a
background model (Ren et al. 2019), trained as its own cell before the seeds that use it; where a dataset has several seeds, the
last seed's evaluations also score the ensemble of them all (ensemble likelihood, WAIC). Cells are
ordered deterministically, so `--shard I/N` (0 <= I < N) gives each of N machines a disjoint slice of
(model, dataset) groups, and `oodbench report --runs A --runs B` merges their folders.

A flow's cells also get the paper's analyses (runner/analyze.py) of every pair once it is evaluated,
the profile's `analysis:` settings, and the first seed records the likelihood over training on the
pairs' OOD sets (runner/ood_curve.py); every family's cells get those that apply to any model (its own
samples, runner/samples.py).

Resuming is by the files a cell leaves (layout.py): `trained.json` means training finished,
`checkpoints/last.ckpt` means it resumes from the last epoch end (which replays exactly what an
uninterrupted run computes), `eval/<pair>/metrics.json` means that evaluation is done. Killing a
sweep at any moment and running the same command again therefore finishes with the same results.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from oodbench.config import AnalysisConfig, EvalConfig, Profile, TrainConfig, resolve
from oodbench.data import Pair, dataset_availability, parse_dataset_ref, parse_pair
from oodbench import locks
from oodbench.errors import Interrupted, OodbenchError
from oodbench.locks import FolderBusy
from oodbench.runner.analyze import GLOW_FAMILIES, PAIR_FILES, AnalyzeRequest, analyze, applies
from oodbench.runner.evaluate import EvalRequest, evaluate
from oodbench.runner.layout import RunPaths, run_name
from oodbench.runner.locking import SWEEP_CLAIM, claim_cell
from oodbench.runner.train import TrainRequest, train
from oodbench.schema import RESULT_COLUMNS
from oodbench.scores import SCORES

ONLY_KEYS = ("model", "dataset", "seed")


@dataclass(frozen=True)
class Cell:
    model: str
    dataset: str  # the in-distribution dataset reference, e.g. "cifar10"
    seed: int
    pairs: tuple[str, ...]
    background: float | None = None  # a background model of this perturbation rate (trained, not evaluated)
    background_run: str | None = None  # the name of the background model this cell's likelihood ratio uses
    members: tuple[int, ...] = ()  # the seeds of the ensemble this cell's evaluations score (its own among them)
    analyze: bool = False  # a flow's evaluations get the paper's analyses (runner/analyze.py)
    curve_ood: tuple[str, ...] = ()  # OOD sets of the likelihood curve recorded while training (runner/ood_curve.py)

    @property
    def name(self) -> str:
        return run_name(self.model, self.dataset, self.seed, self.background)


@dataclass(frozen=True)
class CellPlan:
    cell: Cell
    action: str  # "done", "evaluate", "resume", "train", "skip"
    reason: str = ""
    pairs: tuple[str, ...] = ()  # the pairs still to evaluate (their data is available)
    skipped_pairs: tuple[tuple[str, str], ...] = ()  # (pair, why)
    analyses: tuple[str, ...] = ()  # the pairs whose analyses are still to write (evaluated now or before)


def parse_only(text: str | None) -> dict[str, str]:
    """"model=glow,dataset=cifar10" -> {"model": "glow", "dataset": "cifar10"}."""
    if not text:
        return {}
    selected: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ONLY_KEYS or not value:
            raise OodbenchError(f"bad --only {text!r}: expected KEY=VALUE[,KEY=VALUE] with KEY in {', '.join(ONLY_KEYS)}")
        selected[key] = value
    return selected


def parse_shard(text: str | None) -> tuple[int, int]:
    """"I/N" -> (I, N), 0 <= I < N; None -> (0, 1)."""
    if not text:
        return 0, 1
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise OodbenchError(f"bad --shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def _wants(scores: tuple[str, ...] | None, *names: str) -> bool:
    return scores is None or any(name in scores for name in names)


def _group(profile: Profile, model: str, dataset: str, pairs: tuple[str, ...]) -> list[Cell]:
    """The cells of one (model, dataset): first its background model where the likelihood ratio is
    scored (one, of the first seed, that every seed's ratio uses, as Ren et al. train one), then one cell
    per seed; the last seed's evaluations score the ensemble of all seeds where there are several."""
    seeds = sorted(profile.seeds_for(dataset))
    scores = profile.eval_for(model).scores
    members = tuple(seeds) if len(seeds) > 1 and _wants(scores, "ensemble_likelihood", "waic") else ()
    group = []
    background = None
    if _wants(scores, "likelihood_ratio"):
        group.append(Cell(model, dataset, seeds[0], (), background=profile.background))
        background = group[0].name
    flow = model in GLOW_FAMILIES
    analysis = profile.analysis
    # The curve of the first seed only: one per (model, dataset) is the paper's check, and it costs scoring.
    curve = tuple(dict.fromkeys(str(parse_pair(p).out_ref) for p in pairs)) if flow and analysis.curve \
        and "curve" in analysis.what else ()
    # A flow's evaluations get every analysis; any family's, those that apply to it (its own samples).
    analyze = any(applies(what, model) for what in analysis.what if what in PAIR_FILES)
    for seed in seeds:
        group.append(Cell(model, dataset, seed, pairs, background_run=background,
                          members=members if seed == seeds[-1] else (), analyze=analyze,
                          curve_ood=curve if seed == seeds[0] else ()))
    return group


def cells(profile: Profile, *, only: dict[str, str] | None = None, shard: tuple[int, int] = (0, 1)) -> list[Cell]:
    """The profile's cells in a fixed order, filtered by `only`, then the `shard` slice of them. A shard
    takes whole (model, dataset) groups, so that a background model and an ensemble's members are
    trained where the cells that need them are evaluated."""
    by_dataset: dict[str, list[str]] = {}
    for text in profile.pairs:
        pair = parse_pair(text)
        by_dataset.setdefault(str(pair.in_ref), []).append(str(pair))
    groups = [_group(profile, model, dataset, tuple(pairs))
              for model in sorted(profile.models) for dataset, pairs in sorted(by_dataset.items())]
    only = only or {}
    index, count = shard
    return [c for group in groups[index::count] for c in group
            if only.get("model", c.model) == c.model and only.get("dataset", c.dataset) == c.dataset
            and only.get("seed", str(c.seed)) == str(c.seed)]


def _available(ref_text: str, split: str, data_root: str | None) -> bool:
    ref = parse_dataset_ref(ref_text)
    return dataset_availability(ref.name, data_root).get(ref.split or split) is not None


def _evaluated(metrics_json: Path, scores: tuple[str, ...] | None) -> bool:
    """Whether an evaluation is complete, has every score asked for (all registered ones for None) and
    every column this oodbench writes (an older one's is evaluated again: from the statistics cache)."""
    try:
        content = json.loads(metrics_json.read_text())
        done, rows = set(content["scores"]), content["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    complete = all(isinstance(row, dict) and set(RESULT_COLUMNS) <= set(row) for row in rows)
    return complete and set(scores if scores is not None else SCORES.registered()) <= done


def _analysed(paths: RunPaths, pair: Pair, analysis: AnalysisConfig, model: str) -> bool:
    """Whether the analyses a sweep writes per pair that apply to `model` (the decomposition, the second order,
    the samples) are there."""
    kinds = [kind for what, kind in PAIR_FILES.items() if what in analysis.what and applies(what, model)]
    return all(paths.analysis_file(kind, str(pair.in_ref), str(pair.out_ref)).is_file() for kind in kinds)


def plan_cell(cell: Cell, runs_dir: Path, data_root: str | None, download: bool,
              scores: tuple[str, ...] | None = None, analysis: AnalysisConfig | None = None) -> CellPlan:
    paths = RunPaths(runs_dir / cell.name)
    todo, skipped, analyses = [], [], []
    for text in cell.pairs:
        pair = parse_pair(text)
        if cell.analyze and analysis is not None and not _analysed(paths, pair, analysis, cell.model):
            analyses.append(text)  # once evaluated: now, or in an earlier sweep
        if _evaluated(paths.eval_dir(str(pair.in_ref), str(pair.out_ref)) / "metrics.json", scores):
            continue
        out_ref = str(pair.out_ref)
        if not download and not _available(out_ref, "test", data_root):
            skipped.append((text, f"{out_ref} test data not found locally"))
        else:
            todo.append(text)
    analyses = [p for p in analyses if p not in dict(skipped)]
    if paths.trained.is_file():
        action = "evaluate" if todo else "analyze" if analyses else "done"
        return CellPlan(cell, action, pairs=tuple(todo), skipped_pairs=tuple(skipped), analyses=tuple(analyses))
    if not download:
        for split in ("train", "test"):
            if not _available(cell.dataset, split, data_root):
                why = f"{cell.dataset} {split} data not found locally"
                return CellPlan(cell, "skip", reason=why, skipped_pairs=tuple((p, why) for p in cell.pairs))
    action = "resume" if paths.last.is_file() else "train"
    return CellPlan(cell, action, pairs=tuple(todo), skipped_pairs=tuple(skipped), analyses=tuple(analyses))


@dataclass(frozen=True)
class SweepSettings:
    profile: Profile
    runs_dir: Path
    hardware: dict[str, Any] = field(default_factory=dict)  # command-line flags, over every family's settings
    data_root: str | None = None
    download: bool = False
    quiet: bool = False
    recompute: bool = False  # every evaluation scores its sets again instead of reading the statistics cache

    def train_for(self, cell: Cell) -> TrainConfig:
        return dataclasses.replace(resolve(self.profile.train_for(cell.model), self.hardware), seed=cell.seed,
                                   background=cell.background)

    def eval_for(self, cell: Cell) -> EvalConfig:
        # Scoring has no precision setting (it always runs in float32): pass on only what it has.
        known = {f.name for f in dataclasses.fields(EvalConfig)}
        return resolve(self.profile.eval_for(cell.model), {k: v for k, v in self.hardware.items() if k in known})


def run_cell(plan: CellPlan, settings: SweepSettings, notify: Callable[[str], None] = lambda message: None) -> int:
    """Train (or resume) and evaluate one cell; returns the number of evaluations written."""
    cell = plan.cell
    paths = RunPaths(settings.runs_dir / cell.name)
    if plan.action in ("train", "resume"):
        # `train` resumes an unfinished run with the same settings by itself (a killed sweep, rerun).
        train(TrainRequest(
            model=cell.model, dataset=cell.dataset, run_dir=paths.root,
            train=settings.train_for(cell),
            model_settings=settings.profile.models.get(cell.model, {}), data_root=settings.data_root,
            download=settings.download, quiet=settings.quiet, notify=notify,
            ood_sets=cell.curve_ood, curve_match_channels=settings.eval_for(cell).match_channels,
        ))
    background = members = None
    if plan.pairs:
        background = _trained(settings, cell.background_run) if cell.background_run is not None else None
        members = tuple(filter(None, (_trained(settings, run_name(cell.model, cell.dataset, seed))
                                      for seed in cell.members if seed != cell.seed)))
    for pair in plan.pairs:
        evaluate(EvalRequest(run=paths, pair=pair, eval=settings.eval_for(cell), data_root=settings.data_root,
                             download=settings.download, quiet=settings.quiet, recompute=settings.recompute,
                             background=background, members=members or ()))
    analysis = settings.profile.analysis
    # The curve is recorded on a (model, dataset)'s first seed only: the other seeds have none to read.
    what = tuple(w for w in analysis.what if (w != "curve" or cell.curve_ood) and applies(w, cell.model))
    if plan.analyses and what:
        analysis = dataclasses.replace(analysis, what=what)
        result = analyze(AnalyzeRequest(run=paths, pairs=plan.analyses, analysis=analysis,
                                        data_root=settings.data_root, strict=False,
                                        match_channels=settings.eval_for(cell).match_channels))
        for why in result.skipped:
            notify(f"{cell.name}: {why}")
    return len(plan.pairs)


def _trained(settings: SweepSettings, name: str) -> RunPaths | None:
    """The run `name` under the sweep's runs folder if it finished training (a cell that failed or was
    skipped is not; the scores that needed it are then skipped with the reason)."""
    paths = RunPaths(settings.runs_dir / name)
    return paths if paths.trained.is_file() else None


class CellsFailed(OodbenchError):
    """Some cells failed (a model that diverged, a file that could not be read); the others finished."""

    exit_code = 1


@dataclass(frozen=True)
class SweepOutcome:
    completed: int  # cells that ran or were already complete
    failed: tuple[tuple[str, str], ...] = ()  # (cell, why): the sweep went on with the other cells


def replan(cell: Cell, settings: SweepSettings) -> CellPlan:
    """What is left of `cell` now (another process may have done some of it since the sweep planned)."""
    return plan_cell(cell, settings.runs_dir, settings.data_root, settings.download, settings.eval_for(cell).scores,
                     settings.profile.analysis)


def _needs_held_run(cell: Cell, settings: SweepSettings) -> FolderBusy | None:
    """Why `cell` must wait: a run its evaluations read (its background model, the other ensemble members)
    is not trained yet and another process works on it; None when nothing it needs is held elsewhere. A
    needed run that is neither trained nor held (it failed, or its data is missing) is left out of the
    cell's scores with the reason, as one sweep alone would."""
    needed = [cell.background_run] if cell.background_run is not None else []
    needed += [run_name(cell.model, cell.dataset, seed) for seed in cell.members if seed != cell.seed]
    for name in needed:
        paths = RunPaths(settings.runs_dir / name)
        if paths.trained.is_file():
            continue
        held = locks.busy(paths.root, name=SWEEP_CLAIM, label=f"sweep cell {paths.root}") or \
            locks.busy(paths.root, label=f"run folder {paths.root}", shared=True)
        if held is not None:
            return held
    return None


def sweep(plans: list[CellPlan], settings: SweepSettings, announce: Callable[[CellPlan], None],
          notify: Callable[[str], None] = lambda message: None) -> SweepOutcome:
    """Run every plan that has work. A cell that fails with an expected error (a model that gives
    non-finite likelihoods, say) is reported through `notify` and skipped, so one bad cell does not
    cost the rest of the matrix; an unexpected error or an interruption stops the sweep.

    Several sweeps on one runs folder share its cells (runner/locking.py): each claims a cell while it
    works on it, and a cell another process holds (or whose background model or ensemble members it is
    still training) is put off. When only such cells are left, the sweep waits for the first of them to
    be free, then tries them again from what is left to do: no cell is worked on by two processes at
    once, and every cell ends as one sweep alone would leave it."""
    completed, failed = 0, []
    pending = list(plans)
    while pending:
        put_off: list[tuple[CellPlan, FolderBusy]] = []
        for plan in pending:
            if plan.action == "skip":
                announce(plan)
                continue
            try:
                with claim_cell(RunPaths(settings.runs_dir / plan.cell.name)):
                    plan = replan(plan.cell, settings)
                    held = _needs_held_run(plan.cell, settings) if plan.pairs else None
                    if held is not None:
                        raise held
                    announce(plan)
                    if plan.action == "skip":
                        continue
                    run_cell(plan, settings, notify)
            except FolderBusy as held:  # another process works on it or on a run it needs
                notify(f"putting off {plan.cell.name}: {held.in_use}; going on with the other cells, then back to it")
                put_off.append((plan, held))
                continue
            except Interrupted as stop:
                stop.detail = f"in cell {plan.cell.name}: {stop.detail}" if stop.detail else f"in cell {plan.cell.name}"
                stop.detail += "; finished cells are kept" if completed else ""
                raise
            except OodbenchError as exc:
                failed.append((plan.cell.name, str(exc)))
                notify(f"cell {plan.cell.name} failed: {exc}")
                continue
            completed += 1
        if put_off:
            first, held = put_off[0]
            waiting = f"waiting for {first.cell.name} ({len(put_off)} cell(s) held elsewhere): "
            locks.wait_until_free(held, on_wait=lambda still: notify(waiting + still.in_use))  # noqa: B023 - called now
        pending = [plan for plan, _ in put_off]
    return SweepOutcome(completed, tuple(failed))


def resolve_settings(profile: Profile, runs_dir: Path, *, data_root: str | None, download: bool, quiet: bool,
                     hardware: dict[str, Any], recompute: bool = False) -> SweepSettings:
    """Command-line hardware flags (those given) over the profile; the CLI's data root over the profile's."""
    return SweepSettings(
        profile=profile, runs_dir=runs_dir, hardware={k: v for k, v in hardware.items() if v is not None},
        data_root=data_root if data_root is not None else profile.data_root, download=download, quiet=quiet,
        recompute=recompute,
    )
