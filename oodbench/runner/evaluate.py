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

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from oodbench import failpoints
from oodbench.atomic import check_writable, write_json, write_with, write_yaml
from oodbench.config import EvalConfig, to_plain
from oodbench.data import DatasetRef, ImageSet, Pair, get_dataset, load_images, match_channels, parse_pair
from oodbench.errors import Interrupted, OodbenchError
from oodbench.metrics import auroc_interval, ood_metrics
from oodbench.models.module import LikelihoodModule
from oodbench.runner.callbacks import checkpoint_progress
from oodbench.runner.layout import RunPaths
from oodbench.runner.lightning import read_checkpoint
from oodbench.runner.locking import hold_evaluation, hold_runs
from oodbench.runner.statistics import set_statistics
from oodbench.schema import (
    FIT_SET,
    RESULT_COLUMNS,
    SCORE_COLUMNS,
    SCORE_PREFIX,
    SETS,
    RunRecord,
    ood_gets_lower_bpd,
    read_splits,
    short_hash,
)
from oodbench.scores import SCORES, Score, score_variants
from oodbench.scores.companions import join_background, join_members

IN_TRAIN_SEED = 1  # which of the trained-on images the in-train set samples
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
    return ImageSet(name=images.name, split=images.split, images=images.images[chosen].contiguous(),
                    index=images.index[chosen].contiguous(), source=images.source)


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


def in_split(pair: Pair) -> str:
    """The split the in-distribution test images come from: HELD_OUT for a user's set without test/."""
    source = get_dataset(pair.in_ref.base).user
    return HELD_OUT if source is not None and source.shared_splits else pair.in_ref.split or "test"


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
                           size=size, skip_unreadable=self.skip_unreadable)

    def in_distribution(self, ref: DatasetRef, cfg: EvalConfig) -> dict[str, ImageSet]:
        """in_train (a sample of the images trained on), in_val (the validation hold-out) and in_test."""
        if ref.name != self.record.dataset:
            raise OodbenchError(f"run {self.run.root} was trained on {self.record.dataset}, not {ref.name}; "
                                f"use --pair {self.record.dataset}:OUT or another --run")
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
    return sets


def _training_done(request: EvalRequest, checkpoint: dict[str, Any]) -> tuple[int, float | None]:
    """(epochs, seconds) the run trained: from trained.json, else (an unfinished run) from the checkpoint."""
    if request.run.trained.is_file():
        done = json.loads(request.run.trained.read_text())
        return int(done["epochs"]), float(done["seconds"])
    return checkpoint_progress(checkpoint)


def _flagged(scores: np.ndarray, threshold: float | None) -> float | None:
    return float(np.mean(scores > threshold)) if threshold is not None else None


def _score_units(variant: Score, stats: dict[str, pd.DataFrame], fit_set: str) -> tuple[Score, np.ndarray, np.ndarray]:
    fitted = variant.fit(stats[fit_set])
    return fitted, fitted.score(stats["in_test"]), fitted.score(stats["out_test"])


def _set_scores(fitted: Score, stats: pd.DataFrame) -> np.ndarray:
    """A set's per-sample scores; NaN for a set without the statistics the score needs (see `compared_sets`)."""
    if len(stats) == 0:
        return np.empty(0)
    if fitted.missing(set(stats.columns)) or stats[list(fitted.needs)].isna().any(axis=None):
        return np.full(len(stats), np.nan)
    return fitted.score(stats)


def score_rows(stats: dict[str, pd.DataFrame], base: dict[str, Any], variants: list[Score], *, family: str,
               fit_set: str) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, str]]:
    """For each score variant: its results row, fitted on `fit_set` and compared on in-test vs out-test;
    the per-sample scores of every set ("score:<label>" -> values over the sets in order); and the
    variants that could not be computed, with why."""
    columns = set(stats["in_test"].columns)
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
               "flagged_in": _flagged(in_scores, fitted.threshold), "flagged_out": _flagged(out_scores, fitted.threshold)}
        rows.append(row)
        if variant.per_sample:
            per_sample[SCORE_PREFIX + variant.label] = np.concatenate(
                [_set_scores(fitted, stats[name]) for name in SETS])
    return rows, per_sample, skipped


def base_row(stats: dict[str, pd.DataFrame], *, record: RunRecord, pair: Pair, request: EvalRequest,
             checkpoint: Path, module: LikelihoodModule, trained: tuple[int, float | None],
             members: str | None = None) -> dict[str, Any]:
    """What every row of this evaluation shares: what was scored against what, training, bits/dim per set."""
    bound = module.model.bound
    row: dict[str, Any] = {
        "model": record.model, "in_dataset": pair.in_ref.name, "in_split": in_split(pair),
        "out_dataset": pair.out_ref.name, "out_split": pair.out_ref.split or "test", "pair": str(pair),
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
    checkpoint = paths.checkpoint(runs.checkpoint)
    module, _ = load_module(checkpoint)
    module.noise_seed = runs.eval.noise_seed
    if runs.eval.iw_samples is not None:
        set_iw_samples(module, runs.eval.iw_samples, other)
    return Companion(paths=paths, module=module, checkpoint=checkpoint, record=other)


def compared_sets(variants: list[Score], fit_set: str) -> tuple[str, ...]:
    """The sets whose optional statistics and companion statistics the scores use: the two compared ones,
    and the fit set when a score that needs more than the run's own likelihood is fitted. The others
    (in-train, and usually the validation hold-out) are not scored by the regret refits or the other
    runs: their per-sample values of those scores are left empty (NaN) in scores.csv."""
    fitted = any(type(v).fit is not Score.fit for v in variants if v.extra_statistics or v.needs_companions)
    return ("in_test", "out_test", *((fit_set,) if fitted else ()))


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


def set_iw_samples(module: LikelihoodModule, k: int, record: RunRecord) -> None:
    if not hasattr(module.model, "iw_samples"):
        raise OodbenchError(f"--iw-samples applies to latent-variable models (vae); this run is a {record.model}, "
                            "whose likelihood needs no samples: drop --iw-samples")
    module.model.iw_samples = k


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
    checkpoint_path = request.run.checkpoint(request.checkpoint)
    module, checkpoint = load_module(checkpoint_path)
    module.noise_seed = cfg.noise_seed
    if cfg.iw_samples is not None:
        set_iw_samples(module, cfg.iw_samples, record)
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
    base = base_row(stats, record=record, pair=pair, request=request, checkpoint=checkpoint_path, module=module,
                    trained=_training_done(request, checkpoint), members=members)
    rows, per_sample, skipped = score_rows(stats, base, variants, family=record.model, fit_set=fit_set)
    rows = [{column: row.get(column) for column in RESULT_COLUMNS} for row in rows]
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
