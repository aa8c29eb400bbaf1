"""`oodbench import`: a released checkpoint becomes a run folder that `evaluate`, `score`, `analyze`,
`report` and `sweep` read like one oodbench trained (layout.py), so published-quality models get the
same scores and analyses as the CPU-scale ones.

Steps: read the files with weights_only=True (published/base.read_state; a source whose release is a
folder of configs and weights, diffusers', reads it itself: JSON and safetensors); convert them into the
family's parameters (the source's converter, which refuses layouts and settings oodbench does not model);
build the family's model from them strictly; then write, atomically and under the run folder's lock:
    checkpoints/best.ckpt   the module's hyper-parameters and weights, as training writes them
    config.yaml             the run record, its `origin` saying where the weights came from (source,
                            repository, file names and sha256, the bits/dim its authors report, the
                            architecture read off the files), that the model trained on the whole training
                            split and not in oodbench
    trained.json            written last: the run is complete ({"imported": true}; no epochs, no seconds)
An imported run has no validation hold-out of its own: its fitted scores are fitted on a seeded half of
the test split and compared on the other half (run_loading.py).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from oodbench.atomic import check_writable, write_json, write_with
from oodbench.data import get_dataset, parse_dataset_ref
from oodbench.data.loading import canonical_root
from oodbench.errors import OodbenchError
from oodbench.models.module import LikelihoodModule
from oodbench.published import SOURCES, read_state
from oodbench.published.base import Converted, Source
from oodbench.runner.layout import DEFAULT_RUNS, RunPaths, slug
from oodbench.runner.locking import hold_run
from oodbench.runner.train import versions
from oodbench.schema import RunRecord, file_digest


@dataclass(frozen=True)
class ImportRequest:
    source: str  # a name in published.SOURCES
    files: tuple[Path, ...]
    dataset: str  # the dataset the model was trained on (its whole training split)
    run_dir: Path | None = None  # None: runs/<family>-<dataset>-<source>
    data_root: str | None = None  # where evaluate finds the dataset by default (as `train --data-root`)
    reported_bpd: float | None = None  # the authors' test bits/dim, when the source does not publish one
    overwrite: bool = False


@dataclass(frozen=True)
class ImportResult:
    paths: RunPaths
    record: RunRecord
    n_params: int


def default_run_dir(source: Source, family: str, dataset: str) -> Path:
    return DEFAULT_RUNS / f"{family}-{slug(dataset)}-{source.name}"


def import_checkpoint(request: ImportRequest) -> ImportResult:
    source = SOURCES.get(request.source)
    if source.load is None and len(request.files) != source.files:
        raise OodbenchError(f"{source.name} takes {source.files} file(s) per model ({source.description}); "
                            f"got {len(request.files)}")
    ref = parse_dataset_ref(request.dataset)
    if ref.gray or ref.split_override or get_dataset(ref.base).user is not None:
        raise OodbenchError(f"--dataset {request.dataset}: an imported model names the registered dataset it was "
                            "trained on (e.g. cifar10, fashionmnist), without prefixes or @split")
    spec = get_dataset(ref.base)
    files = tuple(Path(f) for f in request.files)
    if source.load is not None:  # a release of configs and weights, or its folder: the source reads it
        converted, files = source.load(files)
    else:
        converted = source.convert([read_state(f) for f in files])
    model = converted.build()  # strict: a file whose shapes do not fit never becomes a run
    channels, size = converted.model_settings.get("in_channels"), converted.image_size
    if (channels, size, size) != spec.shape:
        raise OodbenchError(f"the file holds a model of {channels}x{size}x{size} images; {spec.name} is "
                            f"{'x'.join(map(str, spec.shape))}: pass the --dataset it was trained on")
    paths = RunPaths(Path(request.run_dir) if request.run_dir is not None
                     else default_run_dir(source, converted.family, spec.name))
    check_writable(paths.root, "--run-dir")
    record = _record(request, source, converted, spec, files)
    with hold_run(paths, shared=False):
        if paths.config.is_file() and not request.overwrite:
            raise OodbenchError(f"{paths.root} already holds a run; pass --overwrite to replace it, or another --run-dir")
        _write(paths, record, converted, model)
    return ImportResult(paths=paths, record=record, n_params=sum(p.numel() for p in model.parameters()))


def _record(request: ImportRequest, source: Source, converted: Converted, spec: Any, files: tuple[Path, ...]) -> RunRecord:
    published = source.published.get(spec.name, {})
    reported = request.reported_bpd if request.reported_bpd is not None else published.get("bpd")
    image_shape = spec.shape
    # bits/dim is per dimension of the image the model is a density of: the dataset's own 28x28 when the
    # 32x32 input is its zero-padded copy, the resized 32x32 image when it was resized.
    data_shape = image_shape if converted.resize_small else spec.native_shape
    origin = {
        "source": source.name, "repository": source.repository,
        "files": [{"name": f.name, "sha256": file_digest(f)} for f in files],
        "reported_bpd": reported, "reported_how": published.get("how"),
        "architecture": converted.architecture,
        "trained_on": f"the whole {spec.name} training split ({spec.sizes.get('train')} images), outside oodbench",
        "trained_by": f"{source.repository}'s own training code, not oodbench",
    }
    return RunRecord(
        model=converted.family, dataset=spec.name, seed=0, data_root=canonical_root(request.data_root),
        data_source=f"{spec.name} train (as published by {source.repository})",
        image_shape=tuple(image_shape), data_shape=tuple(data_shape), n_train=spec.sizes.get("train") or 0, n_val=0,
        model_settings=converted.model_settings, train={}, versions=versions(),
        small_images="resize" if converted.resize_small else "pad", origin=origin)


def _write(paths: RunPaths, record: RunRecord, converted: Converted, model: torch.nn.Module) -> None:
    # A previous run in the folder (with --overwrite) goes first, trained.json before anything else: a kill
    # meanwhile leaves a folder that is not a complete run, and rerunning the command writes it again.
    paths.trained.unlink(missing_ok=True)
    for sub in (paths.checkpoints, paths.logs, paths.statistics, paths.root / "eval", paths.analysis):
        shutil.rmtree(sub, ignore_errors=True)
    paths.splits.unlink(missing_ok=True)
    module = LikelihoodModule(family=converted.family, model_settings=converted.model_settings, train_settings={},
                              bpd_dims=record.bpd_dims)
    module.model.load_state_dict(model.state_dict(), strict=True)
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                  "imported": record.origin}
    write_with(paths.best, lambda tmp: torch.save(checkpoint, tmp))
    record.write(paths.config)
    write_json(paths.trained, {"imported": True, "epochs": None, "seconds": None, "source": record.origin["source"]})
