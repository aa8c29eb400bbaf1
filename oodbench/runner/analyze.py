"""`oodbench analyze`: the paper's analyses of one trained flow (Nalisnick et al. 2019, Sections 4-5).

- decomposition (Section 4, Figure 3): an evaluation's per-image log p(z) and log|det| as bits/dim
  contributions per set (analysis/decomposition.py), a table and a figure;
- second order (Section 5): the function below;
- the likelihood over training: the figure of the run's logs/ood_curve.csv (runner/ood_curve.py);
- the model's own samples (any family with a sampler; Kamkari et al., ICML 2024): drawn, gridded and
  scored against each evaluated pair's test and OOD sets (runner/samples.py).
Each writes into the run's `analysis/` folder (layout.py), atomically; `oodbench report` gathers them.

The second-order analysis of one trained Glow run and one pair:

Loads the run's checkpoint and two image sets, p* = images the run trained on (its training split,
restricted to `splits.npz`) and q = the pair's OOD set, and hands them to the pure functions of
`analysis/second_order.py`: variance terms, the CV-Glow closed form, the exact Hessian terms, and the
gap actually measured by scoring the same images. Everything runs in float32 on the CPU or the
model's device; the images are dequantized with the evaluation's index-seeded noise, so the measured
log-likelihoods are the ones `oodbench evaluate` computes for the same images.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from oodbench.analysis.decomposition import decomposition_table
from oodbench.analysis.second_order import PAPER_SCALE, cv_glow_alphas, second_order_row, variance_difference
from oodbench.atomic import write_with
from oodbench.config import AnalysisConfig
from oodbench.data import ImageSet, Pair, parse_pair
from oodbench.data.quantize import dequantize
from oodbench.errors import OodbenchError
from oodbench.runner.run_loading import RunImages, load_module
from oodbench.runner.layout import RunPaths
from oodbench.runner.locking import hold_analyses, hold_run
from oodbench.runner.samples import Samples, grid_file, run_samples, samples_pair
from oodbench.schema import RunRecord

GLOW_FAMILIES = ("glow", "cv-glow")  # the analysis needs a flow's continuous density log p(y)
FLOW_ONLY = ("decomposition", "second-order")  # the analyses that need a flow (the others apply to any family)
# The file each per-pair analysis leaves (layout.analysis_file's kind): a sweep reads which are done.
PAIR_FILES = {"decomposition": "decomposition", "second-order": "second_order", "samples": "samples"}
SAMPLE_SEED = 2  # which images of each set the Hessian terms and the measured gap use


def _seeded_subset(images: ImageSet, n: int) -> ImageSet:
    """`n` images of `images` (seeded, in index order), or all of them."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SAMPLE_SEED))[:n]
    chosen = order.sort().values
    return dataclasses.replace(images, images=images.images[chosen].contiguous(), index=images.index[chosen].contiguous())


@torch.no_grad()
def _dequantize_and_score(model, images: ImageSet, seed: int, batch_size: int,
                          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, log p(x) in nats) per image, with the evaluation's noise: the y the Hessian terms use are the
    points whose log-likelihoods make the measured gap."""
    ys, log_px = [], []
    for start in range(0, len(images), batch_size):
        x = images.images[start:start + batch_size].to(device)
        noise = model.eval_noise(x, images.index[start:start + batch_size].to(device), seed)
        ys.append(dequantize(x, noise))
        log_px.append(model.log_prob_parts(x, noise)["log_px"].float())
    return torch.cat(ys), torch.cat(log_px)


def _check_sets(record: RunRecord, pair: Pair, sets: dict[str, ImageSet]) -> None:
    want = tuple(record.image_shape)
    for role, images in sets.items():
        if len(images) < 2:
            raise OodbenchError(f"the {role} set ({images.name} {images.split}) has {len(images)} images; "
                                "the variances need 2 or more: raise --n-images or check --data-root")
        if images.shape != want:
            raise OodbenchError(f"{images.name} images are {images.shape}, the model takes {want}; use an OOD set "
                                f"with {want[0]} channels (gray:NAME for grey) in --pair {pair}")


def second_order(run_dir: Path, pair: str | Pair, *, data_root: str | Path | None = None, n_images: int = 256,
                 sigma: float = 1.0, n_probes: int | None = None, chunk: int = 64, batch_size: int = 64,
                 checkpoint: str = "best", device: str = "cpu", match_channels: bool = False) -> dict[str, Any]:
    """One row of the second-order analysis of the Glow or CV-Glow run in `run_dir` on `pair` (IN:OUT, IN
    the run's dataset): `n_images` of each set, the Hessian's diagonal exactly (n_probes None: D products)
    or by Hutchinson's estimate from `n_probes`; an OOD set of other channels is converted with
    `match_channels` (as evaluation's --match-channels), else an error. For an affine Glow the closed form is only a comparison
    (it assumes a volume-preserving flow); the exact terms hold for any flow."""
    paths = RunPaths(Path(run_dir))
    record = RunRecord.read(paths.config)
    if record.model not in GLOW_FAMILIES:
        raise OodbenchError(f"the second-order analysis needs a {' or '.join(GLOW_FAMILIES)} run; {paths.root} is "
                            f"a {record.model} run")
    pair = parse_pair(pair) if isinstance(pair, str) else pair
    if pair.in_ref.name != record.dataset:
        raise OodbenchError(f"run {paths.root} was trained on {record.dataset}, not {pair.in_ref.name}; "
                            f"use --pair {record.dataset}:OUT")
    if n_images < 2:
        raise OodbenchError(f"bad n_images {n_images}: the variances need 2 or more images per set")

    loader = RunImages(record, paths, None if data_root is None else str(data_root))
    # The variance terms are cheap: of every image trained on and every OOD image (the paper's are of whole
    # sets); the Hessian terms and the measured gap use `n_images` of each.
    whole = {
        "p*": loader.trained_on(),
        "q": loader.fitting(loader.load(pair.out_ref.name, pair.out_ref.split or "test"), match_channels),
    }
    sets = {"p*": _seeded_subset(whole["p*"], n_images), "q": _seeded_subset(whole["q"], n_images)}
    _check_sets(record, pair, sets)

    checkpoint_path = paths.checkpoint(checkpoint)
    module, _ = load_module(checkpoint_path)
    target = torch.device(device)
    model = module.model.float().to(target).requires_grad_(False)  # gradients are taken of y only
    p_y, p_log_px = _dequantize_and_score(model, sets["p*"], module.noise_seed, batch_size, target)
    q_y, q_log_px = _dequantize_and_score(model, sets["q"], module.noise_seed, batch_size, target)

    def log_prob_fn(y: torch.Tensor) -> torch.Tensor:
        log_pz, logdet = model.flow_log_density(y)
        return log_pz + logdet

    row = second_order_row(log_prob_fn=log_prob_fn, p_y=p_y, q_y=q_y,
                           measured_gap_nats=float(q_log_px.double().mean() - p_log_px.double().mean()),
                           alphas=cv_glow_alphas(model), sigma=sigma, n_probes=n_probes, chunk=chunk)
    paper_units = variance_difference(whole["p*"].images, whole["q"].images, scale=PAPER_SCALE)
    return {
        "run": str(paths.root), "model": record.model, "pair": str(pair), "checkpoint": str(checkpoint_path),
        "p_set": f"{sets['p*'].name}@{sets['p*'].split}", "q_set": f"{sets['q'].name}@{sets['q'].split}",
        **row,
        # the paper's units (pixels in [0, 1]), of the whole sets: n_p_all trained-on images, n_q_all OOD images
        **{f"var_diff_paper_c{c}": float(v) for c, v in enumerate(paper_units)},
        "n_p_all": len(whole["p*"]), "n_q_all": len(whole["q"]),
    }


# --- `oodbench analyze`: the analyses of one run, written into its analysis/ folder ----------------------

@dataclass(frozen=True)
class AnalyzeRequest:
    run: RunPaths
    pairs: tuple[str, ...] = ()  # IN:OUT, IN the run's dataset (decomposition and second order)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    data_root: str | None = None
    checkpoint: str = "best"
    match_channels: bool = False  # convert an OOD set of other channels (as evaluation's --match-channels)
    # An analysis asked for that does not apply (not a flow, no curve, no evaluation of a pair, another
    # channel count) is an error; a sweep (False) skips it with the reason.
    strict: bool = True


@dataclass(frozen=True)
class AnalyzeResult:
    written: tuple[Path, ...]
    skipped: tuple[str, ...] = ()  # what did not apply, and why


def evaluation_scores(paths: RunPaths, pair: Pair) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(scores.csv, the likelihood's results row) of the run's evaluation of `pair`; none: an error saying
    what to run."""
    folder = paths.eval_dir(str(pair.in_ref), str(pair.out_ref))
    try:
        rows = json.loads((folder / "metrics.json").read_text())["rows"]
        row = next(row for row in rows if row["score"] == "likelihood")
        return pd.read_csv(folder / "scores.csv"), row
    except (OSError, ValueError, KeyError, StopIteration):
        raise OodbenchError(f"no evaluation of {pair} in {paths.root}: run `oodbench evaluate --run {paths.root} "
                            f"--pair {pair}` first (the decomposition and the samples read its per-image "
                            "statistics)") from None


def decomposition(paths: RunPaths, pair: Pair) -> Path:
    """The prior / volume decomposition of an evaluation (analysis/decomposition.py) as a table."""
    scores, _ = evaluation_scores(paths, pair)
    record = RunRecord.read(paths.config)
    table = decomposition_table(scores, record.bpd_dims, model_dims=math.prod(record.image_shape))
    table.insert(0, "pair", str(pair))
    table.insert(0, "seed", record.seed)
    table.insert(0, "model", record.model)
    csv_path = paths.analysis_file("decomposition", str(pair.in_ref), str(pair.out_ref))
    write_with(csv_path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    return csv_path


def applies(what: str, model: str) -> bool:
    """Whether analysis `what` applies to a run of family `model`."""
    return what not in FLOW_ONLY or model in GLOW_FAMILIES


def _pair_analysis(what: str, paths: RunPaths, pair: Pair, record: RunRecord, request: AnalyzeRequest,
                   samples: Samples | None) -> Path:
    if what == "decomposition":
        return decomposition(paths, pair)
    if what == "samples":
        return samples_pair(paths, pair, samples, evaluation_scores(paths, pair)[0], checkpoint=request.checkpoint)
    row = second_order(paths.root, pair, data_root=request.data_root, n_images=request.analysis.n_images,
                       n_probes=request.analysis.probes, checkpoint=request.checkpoint,
                       match_channels=request.match_channels)
    row.update({"seed": record.seed, "in_dataset": record.dataset})
    csv_path = paths.analysis_file("second_order", str(pair.in_ref), str(pair.out_ref))
    write_with(csv_path, lambda tmp: pd.DataFrame([row]).to_csv(tmp, index=False))
    return csv_path


def analyze(request: AnalyzeRequest) -> AnalyzeResult:
    """The tables of every analysis of `request.analysis.what` that applies to the run, written atomically
    into `analysis/` (the curve's table is the training's logs/ood_curve.csv; the figures are the report's,
    report/analysis_figures.py); one that does not apply is an error when `strict`, else skipped."""
    pairs = [parse_pair(text) for text in request.pairs]
    # The run shared (no `train` may change it meanwhile), its analyses exclusively (runner/locking.py).
    with hold_run(request.run, shared=True), hold_analyses(request.run):
        return _analyze(request, pairs)


def _analyze(request: AnalyzeRequest, pairs: list[Pair]) -> AnalyzeResult:
    paths = request.run
    record = RunRecord.read(paths.config)
    wanted = request.analysis.what
    if {"decomposition", "second-order"} & set(wanted) and not pairs and request.strict:
        raise OodbenchError("the decomposition and the second-order analysis need --pair IN:OUT; pass one, or "
                            "--what curve")
    written, skipped = [], []
    samples: Samples | None = None

    def not_applicable(why: str) -> None:
        if request.strict:
            raise OodbenchError(why)
        skipped.append(why)

    for what in wanted:
        if not applies(what, record.model):
            not_applicable(f"the {what} analysis applies to flows ({', '.join(GLOW_FAMILIES)}); {paths.root} is a "
                           f"{record.model} run")
            continue
        if what == "curve":
            if not paths.ood_curve.is_file():
                not_applicable(f"{paths.ood_curve} does not exist: train with OOD sets for the curve "
                               "(`oodbench train ... --curve-ood svhn`)")
                continue
            written.append(paths.ood_curve)
        if what == "samples":  # drawn once for every pair (and without one: the grid alone)
            try:
                samples = run_samples(paths, request.analysis, checkpoint=request.checkpoint)
            except OodbenchError as exc:
                not_applicable(f"samples: {exc}")
                continue
            written.append(grid_file(paths))
        for pair in pairs if what != "curve" else ():
            try:
                written.append(_pair_analysis(what, paths, pair, record, request, samples))
            except OodbenchError as exc:
                not_applicable(f"{what} of {pair}: {exc}")
    return AnalyzeResult(tuple(written), tuple(skipped))
