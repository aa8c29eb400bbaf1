"""oodbench from Python: the functions the CLI runs, with keyword arguments and `OodbenchError`s.

    import oodbench
    run = oodbench.train(model="glow", dataset="fashionmnist", epochs=1, data_root="/data")
    row = oodbench.evaluate(run, pair="fashionmnist:mnist", scores=["likelihood", "input_complexity"])
    gate = run.score(images)                       # uint8 (N, H, W, C) or (N, C, H, W): one row per image
    oodbench.ood_metrics(in_scores, out_scores)    # AUROC, AUPR, FPR@95/80%TPR of two score arrays
    run = oodbench.import_checkpoint("y0ast-glow", "glow_affine_coupling.pt", dataset="cifar10")  # a released model

There is one code path: `train` is `oodbench train` (runner/train.py), `import_checkpoint` is `oodbench
import` (runner/importing.py), `evaluate` is `oodbench evaluate`
(runner/evaluate.py), `Run.score` is `oodbench score`'s gate (runner/gate.py) on in-memory images, and
`ood_metrics` is the function every results row comes from (metrics.py). Errors are the CLI's messages, as
`OodbenchError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from oodbench.config import EvalConfig, TrainConfig, from_mapping
from oodbench.data import ImageSet, parse_dataset_ref
from oodbench.errors import OodbenchError
from oodbench import metrics
from oodbench.runner.evaluate import EvalRequest, evaluate as run_evaluation
from oodbench.runner.gate import GateRequest, GateResult, gate
from oodbench.runner.layout import RunPaths, run_name
from oodbench.runner.train import TrainRequest, train as run_training
from oodbench.schema import RunRecord
from oodbench.scores import parse_scores


@dataclass(frozen=True)
class Run:
    """A trained run folder: what `config.yaml` records, and the gate on new images."""

    path: Path
    record: RunRecord

    @property
    def model(self) -> str:
        return self.record.model

    @property
    def dataset(self) -> str:
        return self.record.dataset

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the model takes."""
        return self.record.image_shape

    def score(self, images: np.ndarray | torch.Tensor, *, scores: Sequence[str] | None = None, by: str = "likelihood",
              accept: float = 0.95, data_root: str | None = None, batch_size: int = 256,
              checkpoint: str = "best") -> GateResult:
        """Per-image bits/dim, every per-image OOD score (or those named) and a verdict at the threshold that
        accepts `accept` of the run's in-distribution test images: `oodbench score` on an array of uint8
        images (N, H, W, C) or (N, C, H, W) in the model's shape. `.table` is one row per image."""
        request = GateRequest(run=RunPaths(self.path), images="array", scores=parse_scores(list(scores) if scores
                                                                                             else None),
                              by=by, accept=accept, eval=EvalConfig(batch_size=batch_size), checkpoint=checkpoint,
                              data_root=data_root, quiet=True)
        return gate(request, _image_set(images, self.image_shape))


def _image_set(images: np.ndarray | torch.Tensor, shape: tuple[int, int, int]) -> ImageSet:
    """uint8 (N, H, W, C) / (N, C, H, W) -> an ImageSet named by its content (the statistics cache keys on it)."""
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4:
        raise OodbenchError(f"images must be uint8 (N, H, W, C) or (N, C, H, W), got {array.dtype} {array.shape}")
    if tuple(array.shape[1:]) != tuple(shape) and tuple(array.shape[1:]) == (shape[1], shape[2], shape[0]):
        array = array.transpose(0, 3, 1, 2)
    if tuple(array.shape[1:]) != tuple(shape):
        raise OodbenchError(f"images are {array.shape[1:]}, the model takes (C, H, W) = {shape} (or (H, W, C)); "
                            "resize them, or save them to a folder and use folder:PATH, which resizes")
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(array.tobytes()).hexdigest()[:16]
    return ImageSet(name="array", split="test", images=torch.from_numpy(array), index=torch.arange(len(array)),
                    source=f"in-memory array sha256 {digest}", digest=digest)


def load_run(path: str | Path) -> Run:
    """The run in `path` (a folder `oodbench train` made); not one: OodbenchError."""
    folder = Path(path).expanduser()
    return Run(path=folder, record=RunRecord.read(RunPaths(folder).config))


def train(*, model: str, dataset: str, run_dir: str | Path | None = None, runs_dir: str | Path = "runs",
          data_root: str | None = None, model_settings: dict[str, Any] | None = None, image_size: int | None = None,
          quiet: bool = True, **train_settings: Any) -> Run:
    """Train `model` on `dataset` (a name, "folder:PATH" or "npz:PATH") as `oodbench train` does; the other
    keywords are TrainConfig's (epochs=, batch_size=, lr=, seed=, limit_train=, precision=, ...). Rerunning
    with the same settings returns the finished run."""
    cfg = from_mapping(TrainConfig, train_settings, where="oodbench.train's keywords")  # checked as the CLI checks
    name = str(parse_dataset_ref(dataset))
    folder = Path(run_dir) if run_dir is not None else Path(runs_dir) / run_name(model, name, cfg.seed, cfg.background)
    run_training(TrainRequest(model=model, dataset=name, run_dir=folder, train=cfg, model_settings=model_settings or {},
                              data_root=data_root, image_size=image_size, quiet=quiet))
    return load_run(folder)


def import_checkpoint(source: str, files: str | Path | Sequence[str | Path], *, dataset: str,
                      run_dir: str | Path | None = None, data_root: str | None = None,
                      reported_bpd: float | None = None, overwrite: bool = False) -> Run:
    """`oodbench import`: the released checkpoint `files` of `source` ("y0ast-glow", "pclucas14-pixelcnn",
    "likelihood-regret-vae": the encoder and decoder files; "diffusers-ddpm": the model's folder) as a run
    folder, for a model trained on `dataset`. Returns the run, which `evaluate` and `Run.score` take like a trained one."""
    from oodbench.names import check_checkpoint_source
    from oodbench.runner.importing import ImportRequest, import_checkpoint as run_import

    paths = (files,) if isinstance(files, (str, Path)) else tuple(files)
    result = run_import(ImportRequest(source=check_checkpoint_source(source), files=tuple(Path(f) for f in paths),
                                      dataset=str(parse_dataset_ref(dataset)),
                                      run_dir=Path(run_dir) if run_dir is not None else None, data_root=data_root,
                                      reported_bpd=reported_bpd, overwrite=overwrite))
    return load_run(result.paths.root)


def evaluate(run: Run | str | Path, *, pair: str, scores: Sequence[str] | None = None, data_root: str | None = None,
             quiet: bool = True, **eval_settings: Any) -> list[dict[str, Any]]:
    """`oodbench evaluate` of `run` on `pair` ("IN:OUT"): one results row per score variant (the columns of
    results.csv). Other keywords are EvalConfig's (limit=, train_sample=, iw_samples=, batch_size=, ...)."""
    folder = run.path if isinstance(run, Run) else Path(run)
    settings = {**eval_settings, **({"scores": parse_scores(list(scores))} if scores else {})}
    cfg = from_mapping(EvalConfig, settings, where="oodbench.evaluate's keywords")
    return run_evaluation(EvalRequest(run=RunPaths(folder), pair=pair, eval=cfg, data_root=data_root, quiet=quiet)).rows


def ood_metrics(in_scores: Sequence[float] | np.ndarray, out_scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """AUROC (OOD positive), AUPR-in, AUPR-out, FPR@95%TPR and FPR@80%TPR of two score arrays, larger = more
    OOD (metrics.py names each convention)."""
    try:
        return metrics.ood_metrics(in_scores, out_scores).as_dict()
    except ValueError as exc:
        raise OodbenchError(str(exc)) from None
