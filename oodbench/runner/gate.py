"""`oodbench score`: the density gate. Score a user's images with a trained run and give each a verdict.

What a user about to put a likelihood-based OOD gate in front of a model needs: for each new image its
bits/dim and every per-image OOD score the run supports (oodbench/scores/), each fitted on the run's
validation hold-out as in `evaluate`, and a verdict at a threshold picked by its in-distribution
acceptance rate: `accept=0.95` is the threshold that accepts 95% of the run's in-distribution test
images (`metrics.acceptance_threshold`), on the score named by `by`. Everything is scored in float32
through the same statistics cache as `evaluate`, so the run's own sets are scored once.

Scores that need another run get it as `evaluate` does: `background` (a background model, for the
likelihood ratio) and `members` (other seeds, for the ensemble's scores); without them, and for scores
of batches of images (typicality with M > 1), they give no per-image value and are listed as skipped with
why. A verdict by a score that is known to fail as a gate (the raw likelihood, Nalisnick et al. 2019)
comes with that warning. Files of a folder that could not be read (`skip_unreadable`) are rows too, with
the verdict "unreadable" and no scores, so that nothing is dropped without a trace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oodbench.config import EvalConfig
from oodbench.data import ImageSet, parse_dataset_ref
from oodbench.data.user import KINDS, image_files, is_user_name, parse_user
from oodbench.errors import OodbenchError
from oodbench.metrics import acceptance_threshold
from oodbench.runner.companion_runs import CompanionRuns, join_companions
from oodbench.runner.run_loading import RunImages, open_module
from oodbench.runner.layout import RunPaths
from oodbench.runner.locking import hold_runs
from oodbench.runner.statistics import set_statistics
from oodbench.schema import FIT_SET, RunRecord
from oodbench.scores import SCORES, score_variants

VERDICT_IN, VERDICT_OOD, VERDICT_UNREADABLE = "in-distribution", "OOD", "unreadable"


@dataclass(frozen=True)
class GateRequest:
    run: RunPaths
    images: str  # a folder or .npz path, "folder:PATH" / "npz:PATH", or a registered dataset (its test split)
    scores: tuple[str, ...] | None = None  # None: every score the family supports
    by: str = "likelihood"  # the score whose threshold gives the verdict
    accept: float = 0.95  # the fraction of the run's in-distribution test images the threshold accepts
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: str = "best"
    data_root: str | None = None
    download: bool = False
    skip_unreadable: bool = False
    quiet: bool = False
    background: RunPaths | None = None  # a background model of the run's family and data (likelihood ratio)
    members: tuple[RunPaths, ...] = ()  # other seeds of the run's setup (ensemble likelihood, WAIC)


@dataclass(frozen=True)
class GateResult:
    table: pd.DataFrame  # one row per image: file, index, bpd, each score, verdict (unreadable files too)
    by: str  # the label of the score giving the verdict
    threshold: float
    accepted_in: float  # the fraction of the in-distribution test images the threshold accepts
    n_in: int
    in_set: str  # e.g. "cifar10 test"
    skipped: dict[str, str]  # score label -> why it gives no per-image value here
    headings: dict[str, str]  # score label -> its short table heading ("typ M=1")
    unreadable: tuple[str, ...] = ()  # files left out because they could not be read (skip_unreadable)
    warning: str | None = None  # why the score giving the verdict is a poor gate, if it is known to be one


def images_ref(text: str) -> str:
    """A dataset reference for `--images`: a bare path becomes folder:PATH (or npz:PATH for a .npz file)."""
    if is_user_name(text):
        return text
    path = Path(text).expanduser()
    if path.exists() or "/" in text or text.startswith((".", "~")):
        if not path.exists():
            raise OodbenchError(f"--images {text}: no such file or folder; pass a folder of images or an .npz file")
        return f"{KINDS[1] if path.is_file() and path.suffix == '.npz' else KINDS[0]}:{path}"
    return text  # a registered dataset name; an unknown one is an error naming the valid ones


def _file_names(images: ImageSet) -> tuple[list[str], list[str]]:
    """(each image's name, the files left out as unreadable): a folder's files relative to it (an image's
    index is its file's position, so the positions no image has are the files that could not be read);
    for an npz, an array or a registered set, "#<index>" and none."""
    base = images.name.removeprefix("gray:")
    source = parse_user(base) if is_user_name(base) else None
    index = images.index.numpy()
    if source is not None and source.kind == KINDS[0]:
        root = source.where(images.split)
        files = [path.relative_to(root).as_posix() for path in image_files(root)]
        read = set(index.tolist())
        return [files[i] for i in index], [name for i, name in enumerate(files) if i not in read]
    return [f"#{i}" for i in index], []


def score_images(request: GateRequest) -> GateResult:
    """The gate on `request.images` (a path or a dataset), loaded at the model's channels and size."""
    record = RunRecord.read(request.run.config)
    loader = RunImages(record, request.run, request.data_root, request.download, request.skip_unreadable)
    parsed = parse_dataset_ref(images_ref(request.images))
    return gate(request, loader.load(parsed.name, parsed.split or "test"))


def gate(request: GateRequest, images: ImageSet) -> GateResult:
    """Score `images` with the run and give each a verdict (`request.images` is only their name here)."""
    if not 0.0 < request.accept <= 1.0:
        raise OodbenchError(f"--accept {request.accept}: the acceptance rate must be in (0, 1], e.g. 0.95")
    with hold_runs(request.run, _companions(request).all):  # no `train` may change them meanwhile
        return _gate(request, images)


def _companions(request: GateRequest) -> CompanionRuns:
    return CompanionRuns(run=request.run, background=request.background, members=request.members, eval=request.eval,
                         checkpoint=request.checkpoint)


def _gate(request: GateRequest, images: ImageSet) -> GateResult:
    record = RunRecord.read(request.run.config)
    module, checkpoint, _ = open_module(request.run, request.checkpoint, request.eval, record)
    loader = RunImages(record, request.run, request.data_root, request.download, request.skip_unreadable)
    new = loader.fitting(images, request.eval.match_channels)
    own = loader.in_distribution(parse_dataset_ref(record.dataset), request.eval)
    fit_set = FIT_SET if len(own[FIT_SET]) else "in_train"
    sets = {fit_set: own[fit_set], "in_test": own["in_test"], "images": new}
    stats, _, _ = set_statistics(module, sets, request.eval, paths=request.run, checkpoint=checkpoint,
                                 bpd_dims=record.bpd_dims, quiet=request.quiet)
    stats, _ = join_companions(stats, sets, _companions(request), record, request.quiet)
    columns = set(stats["images"].columns)
    names, unreadable = _file_names(new)
    table = pd.DataFrame({"file": names, "index": new.index.numpy(), "bpd": stats["images"]["bpd"].to_numpy()})
    skipped: dict[str, str] = {}
    in_test_scores: dict[str, np.ndarray] = {}
    headings: dict[str, str] = {}
    for variant in score_variants(request.scores):
        reason = variant.unusable(record.model, columns) or (
            None if variant.per_sample else "scores batches of images, not one image")
        if reason is not None:
            skipped[variant.label] = reason
            continue
        fitted = variant.fit(stats[fit_set])
        table[variant.label] = fitted.score(stats["images"])
        in_test_scores[variant.label] = fitted.score(stats["in_test"])
        headings[variant.label] = variant.short
    by = next((label for label in in_test_scores if label.partition("(")[0] == request.by or label == request.by), None)
    if by is None:
        why = skipped.get(request.by) or next((w for label, w in skipped.items() if label.startswith(request.by)), "")
        raise OodbenchError(f"--by {request.by}: this run gives no per-image {request.by} score"
                            f"{f' ({why})' if why else ''}; pick one of {', '.join(in_test_scores)}")
    threshold, accepted = acceptance_threshold(in_test_scores[by], request.accept)
    table["verdict"] = np.where(table[by].to_numpy() <= threshold, VERDICT_IN, VERDICT_OOD)
    if unreadable:  # a row each, no scores: the CSV accounts for every file of the folder
        table = pd.concat([table, pd.DataFrame({"file": unreadable, "verdict": VERDICT_UNREADABLE})], ignore_index=True)
    in_test = own["in_test"]
    fails = SCORES.get(by.partition("(")[0])[0].fails_as_gate
    warning = (f"--by {request.by}: a poor gate, known to fail: {fails}; pass --by with a score that separates your "
               "sets in `oodbench evaluate` (e.g. input_complexity, or likelihood_ratio with --background-run)"
               if fails else None)
    return GateResult(table=table, by=by, threshold=threshold, accepted_in=accepted, n_in=len(in_test),
                      in_set=f"{in_test.name} {in_test.split}", skipped=skipped, headings=headings,
                      unreadable=tuple(unreadable), warning=warning)
