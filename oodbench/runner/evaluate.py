"""`oodbench evaluate`: score a trained model's images and the OOD scores built on them, for one pair.

The sets (`schema.SETS`):
- in-train: `train_sample` images drawn (seeded) from those the run trained on (its `splits.npz`);
- in-val: the run's validation hold-out, training-distribution images it never trained on: the fitted
  scores (typicality, DoSE) are fitted on these (on in-train if the run has no hold-out);
- in-test: the in-distribution dataset's test split (or `IN@SPLIT`);
- out-test: the OOD dataset's test split (or `OUT@SPLIT`).
Per-sample statistics come from `statistics.py` (computed once per checkpoint and set, cached, in
float32); every score (`oodbench/scores/`, `--scores`) is then a pure function of them; the metrics
compare the scores of the in-test and out-test units.

Writes, atomically, into the run's `eval/<in>_vs_<out>/` folder:
- `scores.csv`: one row per image of every set: the statistics, then each per-sample score;
- `config.yaml`: the resolved evaluation settings;
- `metrics.json`: {"rows": one row of `schema.RESULT_COLUMNS` per score variant, "scores": the score
  names evaluated, "skipped": {label: why}}, written last: it marks the evaluation complete. Scores an
  earlier evaluation with the same settings computed are computed again beside the new ones (from the
  cached statistics: seconds), so adding a score to an evaluated run adds its rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from oodbench import failpoints
from oodbench.atomic import check_writable, write_json, write_with, write_yaml
from oodbench.config import EvalConfig, to_plain
from oodbench.data import ImageSet, Pair, parse_pair
from oodbench.data.loading import check_same_enlargement
from oodbench.errors import Interrupted, OodbenchError
from oodbench.metrics import auroc_interval, ood_metrics
from oodbench.models.module import LikelihoodModule
from oodbench.runner.callbacks import checkpoint_progress
from oodbench.runner.companion_runs import CompanionRuns, join_companions
from oodbench.runner.costs import score_cost, statistic_passes
from oodbench.runner.layout import RunPaths
from oodbench.runner.locking import hold_evaluation, hold_runs
from oodbench.runner.run_loading import RunImages, fit_set_text, in_split, open_module
from oodbench.runner.statistics import extra_settings, set_statistics
from oodbench.schema import (
    FIT_SET,
    RESULT_COLUMNS,
    SCORE_COLUMNS,
    SCORE_PREFIX,
    SETS,
    RunRecord,
    ood_gets_lower_bpd,
    short_hash,
)
from oodbench.scores import SCORES, Score, score_variants

# Evaluation settings that change no number (index-seeded noise makes scores independent of batching),
# and the choice of scores (each row names its score).
_NOT_SETUP = ("batch_size", "accelerator", "devices", "num_nodes", "strategy", "scores")


@dataclass(frozen=True)
class EvalRequest:
    run: RunPaths
    pair: str
    eval: EvalConfig = field(default_factory=EvalConfig)
    data_root: str | None = None
    download: bool = False
    checkpoint: str = "best"
    quiet: bool = False
    recompute: bool = False  # score every set again instead of reading the statistics cache
    # Other runs whose statistics of the same images some scores need (scores/companions.py): a
    # background model (likelihood ratio) and the other members of an ensemble (other seeds).
    background: RunPaths | None = None
    members: tuple[RunPaths, ...] = ()
    skip_unreadable: bool = False  # a user's folder: leave unreadable files out (data/user.py)


@dataclass(frozen=True)
class EvalResult:
    folder: Path
    rows: list[dict[str, Any]]  # one per score variant evaluated now
    scores: pd.DataFrame
    skipped: dict[str, str] = field(default_factory=dict)  # score label -> why it was not computed
    computed: tuple[str, ...] = ()  # the sets the model scored (the others came from the statistics cache)
    written: bool = True  # False on DDP processes other than global zero

    @property
    def metrics(self) -> dict[str, Any]:
        """The likelihood score's row (every evaluation has it)."""
        return next(row for row in self.rows if row["score"] == "likelihood")


def _load_sets(pair: Pair, record: RunRecord, request: EvalRequest) -> dict[str, ImageSet]:
    cfg = request.eval
    loader = RunImages(record, request.run, request.data_root, request.download, request.skip_unreadable)
    sets = loader.in_distribution(pair.in_ref, cfg)
    sets["out_test"] = loader.load(pair.out_ref.name, pair.out_ref.split or "test", cfg.limit)
    for name, images in sets.items():
        if len(images) == 0 and name != "in_val":  # a run may have been trained without a hold-out
            raise OodbenchError(f"the {name} set ({images.name} {images.split}) has no images to score; raise "
                                "--limit / --train-sample")
        sets[name] = loader.fitting(images, cfg.match_channels and name == "out_test")
    check_same_enlargement(str(pair), sets["in_test"], sets["out_test"])
    return sets


def _training_done(request: EvalRequest, checkpoint: dict[str, Any]) -> tuple[int | None, float | None]:
    """(epochs, seconds) the run trained: from trained.json, else (an unfinished run) from the checkpoint."""
    if request.run.trained.is_file():
        done = json.loads(request.run.trained.read_text())
        if done.get("imported"):  # trained elsewhere: oodbench does not know for how long
            return None, None
        return int(done["epochs"]), float(done["seconds"])
    return checkpoint_progress(checkpoint)


def _flagged(scores: np.ndarray, threshold: float | None) -> float | None:
    return float(np.mean(scores > threshold)) if threshold is not None else None


def _having(variant: Score, stats: pd.DataFrame) -> pd.DataFrame:
    """The images of a set that have every statistic `variant` needs: all of them, except where an optional
    statistic was computed on a subsample only (EvalConfig.extra_images) or not on this set (`compared_sets`)."""
    return stats[stats[list(variant.needs)].notna().all(axis=1)] if not variant.missing(set(stats.columns)) else stats


def _score_units(variant: Score, stats: dict[str, pd.DataFrame], fit_set: str) -> tuple[Score, np.ndarray, np.ndarray]:
    fitted = variant.fit(_having(variant, stats[fit_set]))
    return fitted, fitted.score(_having(variant, stats["in_test"])), fitted.score(_having(variant, stats["out_test"]))


def _set_scores(fitted: Score, stats: pd.DataFrame) -> np.ndarray:
    """A set's per-sample scores; NaN for the images without the statistics the score needs (see `_having`)."""
    values = np.full(len(stats), np.nan)
    if len(stats) == 0 or fitted.missing(set(stats.columns)):
        return values
    having = stats[list(fitted.needs)].notna().all(axis=1).to_numpy()
    if having.any():
        values[having] = fitted.score(stats[having])
    return values


def score_rows(stats: dict[str, pd.DataFrame], base: dict[str, Any], variants: list[Score], *, family: str,
               fit_set: str, passes: Mapping[str, str] | None = None,
               ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, str]]:
    """For each score variant: its results row, fitted on `fit_set` and compared on in-test vs out-test,
    with what the score costs (runner/costs.py; `passes`: each statistic's network passes per image);
    the per-sample scores of every set ("score:<label>" -> values over the sets in order); and the
    variants that could not be computed, with why."""
    columns = set(stats["in_test"].columns)
    compared = pd.concat([stats["in_test"], stats["out_test"]], ignore_index=True)
    rows, per_sample, skipped = [], {}, {}
    for variant in variants:
        reason = variant.unusable(family, columns)
        if reason is None:
            try:
                fitted, in_scores, out_scores = _score_units(variant, stats, fit_set)
            except ValueError as exc:  # a set too small for a batch, a degenerate fit
                reason = str(exc)
        if reason is not None:
            skipped[variant.label] = reason
            continue
        row = {**base, "score": variant.name, "score_params": variant.params_text,
               "fit_set": fit_set, "units_in": len(in_scores), "units_out": len(out_scores),
               **ood_metrics(in_scores, out_scores).as_dict(),
               **dict(zip(("auroc_low", "auroc_high"), auroc_interval(in_scores, out_scores), strict=True)),
               "threshold": fitted.threshold,
               "flagged_in": _flagged(in_scores, fitted.threshold), "flagged_out": _flagged(out_scores, fitted.threshold),
               **score_cost(variant, compared, passes or {})}
        rows.append(row)
        if variant.per_sample:
            per_sample[SCORE_PREFIX + variant.label] = np.concatenate(
                [_set_scores(fitted, stats[name]) for name in SETS])
    return rows, per_sample, skipped


def base_row(stats: dict[str, pd.DataFrame], *, record: RunRecord, pair: Pair, request: EvalRequest,
             checkpoint: Path, module: LikelihoodModule, trained: tuple[int | None, float | None],
             sets: dict[str, ImageSet], members: str | None = None) -> dict[str, Any]:
    """What every row of this evaluation shares: what was scored against what, training, bits/dim per set."""
    bound = module.model.bound
    row: dict[str, Any] = {
        "model": record.model, "in_dataset": pair.in_ref.name, "in_split": in_split(pair, record),
        "out_dataset": pair.out_ref.name, "out_split": pair.out_ref.split or "test", "pair": str(pair),
        "in_transform": sets["in_test"].transform, "out_transform": sets["out_test"].transform,
        "seed": record.seed, "setup": setup_hash(record, request, module, checkpoint),
        "unit": "bits/dim", "bpd_dims": record.bpd_dims, "discretization": module.model.discretization,
        "bound": bound, "n_params": sum(p.numel() for p in module.model.parameters()), "n_train": record.n_train,
        "epochs": trained[0], "train_seconds": trained[1],
    }
    for name in SETS:
        row[f"n_{name}"] = len(stats[name])
    for name in SETS:
        bpd = stats[name]["bpd"].to_numpy()
        row[f"bpd_{name}_mean"] = float(bpd.mean()) if bpd.size else None
        row[f"bpd_{name}_std"] = float(bpd.std(ddof=1)) if bpd.size > 1 else None
    row["ood_lower_bpd"] = ood_gets_lower_bpd(row["bpd_in_test_mean"], row["bpd_out_test_mean"])
    row.update({"run": str(request.run.root), "checkpoint": checkpoint.name,
                "background_run": str(request.background.root) if request.background is not None else None,
                "members": members})
    return row


def setup_hash(record: RunRecord, request: EvalRequest, module: LikelihoodModule, checkpoint: Path) -> str:
    """Names what the numbers depend on: the run's setup (not its seed), the evaluation settings, the
    bound and the checkpoint; shared by the seeds of one experiment."""
    evaluation = {k: v for k, v in to_plain(request.eval).items() if k not in _NOT_SETUP}
    return short_hash([record.setup(), evaluation, module.model.bound, checkpoint.name])


def _score_names(cfg: EvalConfig, folder: Path, setup: str) -> list[str]:
    if cfg.scores is None:
        return SCORES.registered()
    # the raw likelihood always, what was asked for, and what an earlier evaluation of this setup had
    return list(dict.fromkeys(["likelihood", *_earlier_scores(folder, setup), *cfg.scores]))


def _earlier_scores(folder: Path, setup: str) -> list[str]:
    """The score names an earlier evaluation of the same setup in `folder` computed (none otherwise)."""
    try:
        earlier = json.loads((folder / "metrics.json").read_text())
        rows = earlier["rows"]
        return list(earlier["scores"]) if rows and all(r["setup"] == setup for r in rows) else []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def compared_sets(variants: list[Score], fit_set: str) -> tuple[str, ...]:
    """The sets whose optional statistics and companion statistics the scores use: the two compared ones,
    and the fit set when a score that needs more than the run's own likelihood is fitted. The others
    (in-train, and usually the validation hold-out) are not scored by the regret refits or the other
    runs: their per-sample values of those scores are left empty (NaN) in scores.csv."""
    fitted = any(type(v).fit is not Score.fit for v in variants if v.extra_statistics or v.needs_companions)
    return ("in_test", "out_test", *((fit_set,) if fitted else ()))


def evaluate(request: EvalRequest) -> EvalResult:
    pair = parse_pair(request.pair)
    folder = request.run.eval_dir(str(pair.in_ref), str(pair.out_ref))
    with hold_runs(request.run, companion_runs(request).all), hold_evaluation(request.run, folder):
        return _evaluate(request, pair, folder)


def companion_runs(request: EvalRequest) -> CompanionRuns:
    return CompanionRuns(run=request.run, background=request.background, members=request.members, eval=request.eval,
                         checkpoint=request.checkpoint, recompute=request.recompute)


def _evaluate(request: EvalRequest, pair: Pair, folder: Path) -> EvalResult:
    cfg = request.eval
    record = RunRecord.read(request.run.config)
    module, checkpoint_path, checkpoint = open_module(request.run, request.checkpoint, cfg, record)
    sets = _load_sets(pair, record, request)
    check_writable(request.run.root, "--run")
    names = _score_names(cfg, folder, setup_hash(record, request, module, checkpoint_path))
    variants = score_variants(tuple(names))
    extras = tuple(dict.fromkeys(statistic for variant in variants for statistic in variant.extra_statistics
                                 if variant.families is None or record.model in variant.families))

    fit_set = FIT_SET if len(sets[FIT_SET]) else "in_train"
    try:
        stats, computed, writer = set_statistics(module, sets, cfg, paths=request.run, checkpoint=checkpoint_path,
                                                 bpd_dims=record.bpd_dims, quiet=request.quiet,
                                                 recompute=request.recompute, extras=extras,
                                                 extra_sets=compared_sets(variants, fit_set))
        stats, members = join_companions(stats, sets, companion_runs(request), record, request.quiet,
                                         only=compared_sets(variants, fit_set))
    except Interrupted as stop:
        stop.detail = f"nothing new was written to {folder}; rerun the same command to score it"
        raise
    if not all(np.isfinite(frame["bpd"]).all() for frame in stats.values()):
        raise OodbenchError(f"the model in {checkpoint_path} gives non-finite likelihoods; retrain it")
    base = base_row(stats, record=record, pair=pair, request=request, checkpoint=checkpoint_path, module=module, sets=sets,
                    trained=_training_done(request, checkpoint), members=members)
    passes = statistic_passes(module.model, extras, {name: extra_settings(name, cfg) for name in extras})
    rows, per_sample, skipped = score_rows(stats, base, variants, family=record.model, fit_set=fit_set, passes=passes)
    rows = [{column: row.get(column) for column in RESULT_COLUMNS} | {"fit_set": fit_set_text(row["fit_set"], record)}
            for row in rows]
    frames = [stats[name].assign(set=name, dataset=sets[name].name, split=sets[name].split) for name in SETS]
    scores = pd.concat(frames, ignore_index=True)
    scores = scores[[*SCORE_COLUMNS, *[c for c in scores if c not in SCORE_COLUMNS]]].assign(**per_sample)
    result = EvalResult(folder=folder, rows=rows, scores=scores, skipped=skipped, computed=tuple(computed),
                        written=writer)
    if not writer:  # under DDP only the global-zero process writes
        return result
    content = {"rows": rows, "scores": names, "skipped": skipped}
    # metrics.json marks the evaluation complete: remove an older one first, so that a kill between the
    # files below never leaves new scores beside old metrics.
    (folder / "metrics.json").unlink(missing_ok=True)
    write_with(folder / "scores.csv", lambda tmp: scores.to_csv(tmp, index=False, float_format="%.6f"))
    write_yaml(folder / "config.yaml", {"pair": str(pair), "checkpoint": str(checkpoint_path),
                                        "data_root": request.data_root, "eval": to_plain(cfg)})
    failpoints.reached("scores-written")
    write_json(folder / "metrics.json", content)
    return result
