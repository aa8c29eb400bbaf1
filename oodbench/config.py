"""Typed, frozen configuration and the one place where `benchmarks.yaml` is parsed.

Priority, lowest to highest: the dataclass defaults below < a named profile in benchmarks.yaml <
flags given on the command line (`resolve`). The resolved configuration is written beside every
run (`config.yaml`) and every result.

A profile in benchmarks.yaml looks like:

    profiles:
      demo:
        data_root: demo            # "demo" = the subset embedded in the package
        train: {epochs: 2, batch_size: 64}
        eval: {batch_size: 500}
        scores: [likelihood, typicality]   # the OOD scores to compute (default: every one that applies)
        models:
          glow: {levels: 3, steps: 4, hidden_channels: 64}
          pixelcnn: {nr_filters: 32, train: {limit_train: 1500}}   # per-model train/eval overrides
        pairs: [fashionmnist:mnist]
        seeds: [0]                 # or per in-distribution dataset: {default: [0], cifar10: [0, 1, 2]}
        background: 0.2            # perturbation rate of the background models, when likelihood_ratio is scored

An unknown key or a value of the wrong type is an `OodbenchError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from oodbench.errors import OodbenchError

DEFAULT_BENCHMARKS = Path("benchmarks.yaml")
# The repository's benchmarks.yaml ships inside the package too, so `oodbench demo` works anywhere.
PACKAGED_BENCHMARKS = Path(__file__).with_name("benchmarks.yaml")


class SettingError(OodbenchError):
    """A setting outside what its field accepts; `from_mapping` and `resolve` say where it came from."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        super().__init__(f"bad value {value!r} for {key}: {reason}")
        self.key, self.value, self.reason = key, value, reason


def at_least(minimum: float, default: Any, *, exclusive: bool = False) -> Any:
    """A dataclass field whose value (unless None) must be >= `minimum` (> with `exclusive`)."""
    return field(default=default, metadata={"min": minimum, "exclusive": exclusive})


def fraction(default: Any) -> Any:
    """A dataclass field whose value (unless None) must lie in (0, 1]: a probability that does something."""
    return field(default=default, metadata={"min": 0, "exclusive": True, "max": 1})


def one_of(choices: tuple[Any, ...], default: Any) -> Any:
    """A dataclass field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": tuple(choices)})


def check_fields(config: Any) -> None:
    """The one check behind every config's `__post_init__`: each field against its `at_least` / `one_of`."""
    for spec in dataclasses.fields(config):
        value, meta = getattr(config, spec.name), spec.metadata
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            raise SettingError(spec.name, value, f"expected one of {', '.join(map(str, meta['choices']))}")
        if "min" in meta and isinstance(value, (int, float)) and not isinstance(value, bool):
            low = meta["min"]
            if value < low or (meta["exclusive"] and value == low):
                bound = f"greater than {low}" if meta["exclusive"] else f"at least {low}"
                if "max" in meta:
                    bound += f" and at most {meta['max']}"
                raise SettingError(spec.name, value, f"must be {bound}")
            if "max" in meta and value > meta["max"]:
                raise SettingError(spec.name, value, f"must be at most {meta['max']}")


# Lightning's precisions under which the weights stay float32, so that validation and scoring can run
# with autocast off and every likelihood is computed in float32 (module.py).
TRAIN_PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16")
# Those of them without autocast (Lightning's aliases included: "bf16" and "16" are mixed precisions).
FLOAT32_PRECISIONS = ("32-true", "32")
# Lightning's accelerator names (its AcceleratorRegistry, plus "auto" and "gpu"; tests/test_names.py
# compares them), here so that a misspelt --accelerator is answered before Lightning is imported.
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps", "tpu")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (optimisation and hardware), independent of its architecture."""

    epochs: int | None = at_least(1, 10)
    max_minutes: float | None = at_least(0, None, exclusive=True)
    batch_size: int = at_least(1, 64)
    lr: float = at_least(0, 1e-3, exclusive=True)
    optimizer: str = one_of(("adam", "adamax"), "adam")  # Glow's paper used both
    warmup_steps: int = at_least(0, 200)
    grad_clip_norm: float = at_least(0, 50.0, exclusive=True)
    weight_decay: float | None = at_least(0, None)  # an L2 penalty (Adam's weight_decay); Ren et al.'s option
    # A background model (Ren et al. 2019, data/perturb.py): each sub-pixel of every training batch is
    # replaced by a uniform 0..255 value with this probability (the paper's 0.1-0.3), afresh each epoch.
    background: float | None = fraction(None)
    limit_train: int | None = at_least(1, None)  # train on N images of the training split (CPU-scale runs)
    val_size: int = at_least(0, 500)  # held out from the training split, for the "best" checkpoint
    seed: int = 0
    accelerator: str = one_of(ACCELERATORS, "auto")
    devices: str = "auto"  # Lightning's, or "all": every visible GPU (runner/lightning.device_count)
    num_nodes: int = at_least(1, 1)
    strategy: str = "auto"
    # Training may use mixed precision; the likelihoods that pick the best checkpoint are float32 anyway.
    precision: str = one_of(TRAIN_PRECISIONS, "32-true")
    # torch.compile the training objective (models/module.training_objective): fuses the elementwise work
    # between the convolutions; the first steps pay the compilation (about a minute on 2 CPU cores).
    compile: bool = False
    num_workers: int = at_least(0, 0)
    # Where Lightning logs training curves, besides the run's own logs/metrics.csv: "auto" is TensorBoard
    # when it is installed; the others need their package (runner/train.py says which).
    logger: str = one_of(("auto", "none", "csv", "tensorboard", "wandb", "mlflow"), "auto")
    # The likelihood over training (runner/ood_curve.py, logs/ood_curve.csv), scored every N optimizer steps;
    # None: about 4 points per epoch when the run is given OOD sets to score, off otherwise; 0: off.
    curve_every: int | None = at_least(0, None)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class EvalConfig:
    """How a trained model is scored. Scoring always runs in float32 (no precision setting)."""

    batch_size: int = at_least(1, 256)
    train_sample: int = at_least(1, 2000)  # training images (of those the run trained on) scored as "in-train"
    limit: int | None = at_least(0, None)  # score only the first N images of each test set
    noise_seed: int = 0  # seeds the per-sample dequantization noise (see data/quantize.py)
    match_channels: bool = False  # convert the OOD set to the model's channel count
    iw_samples: int | None = at_least(1, None)  # importance samples of a VAE's bound; None: the model's default
    # Likelihood regret (VAE): Adam steps and learning rate of each image's posterior refit
    regret_steps: int = at_least(1, 20)
    regret_lr: float = at_least(0, 0.1, exclusive=True)
    # Local intrinsic dimension (flows, Kamkari et al. 2024; analysis/lid.py): the share of each compared set's
    # images that get one (a seeded draw per image; the exact Jacobian costs D products and a D x D
    # eigendecomposition each: 12-35 s per 3x32x32 image for the quick profile's Glow on 2 CPU cores), None: none;
    # and delta, the log of the singular value of the generative map above which a direction counts (the authors'
    # guide uses -3; in a quick CIFAR-10 Glow's [0,1) pixel space log singular values run from -7 to 2, median -4).
    lid_fraction: float | None = fraction(None)
    lid_delta: float = -3.0
    # Optional statistics (per-image gradients, LID, a VAE's regret) cost a backward pass or more per image:
    # computed on at most this many images of each set that needs them (a seeded choice, the same for every
    # score), None: all. The scores that read them are fitted and compared on those images (units_in/out).
    extra_images: int | None = at_least(2, None)
    # A diffusion model's OOD statistics (models/diffusion/ood_statistics.py): DiffPath's DDIM steps from the
    # image to noise (Heng et al. 2024 use 10) and MSMA's noise levels (Mahmood et al. 2021 use 10); one
    # network pass each per image.
    diffpath_steps: int = at_least(2, 10)
    msma_levels: int = at_least(1, 10)
    accelerator: str = one_of(ACCELERATORS, "auto")
    devices: str = "1"  # scoring is cheap; pass e.g. --devices 2 --strategy ddp to spread it
    num_nodes: int = at_least(1, 1)
    strategy: str = "auto"
    # The OOD scores to compute (oodbench/scores/): None is every score that applies to the family;
    # the raw likelihood is always among them.
    scores: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        if self.scores is not None and not isinstance(self.scores, tuple):
            object.__setattr__(self, "scores", tuple(self.scores))  # a YAML list


ANALYSES = ("decomposition", "second-order", "curve", "samples")


@dataclass(frozen=True)
class AnalysisConfig:
    """The paper's analyses (runner/analyze.py) of a run (all but samples: of a flow), as `oodbench analyze` and
    a sweep run them."""

    what: tuple[str, ...] = ANALYSES
    n_images: int = at_least(2, 256)  # images of each set in the second-order analysis
    # Hessian-diagonal probes of the second-order term: None is exact (one product per dimension, 3,072 for
    # 32x32 RGB); N is Hutchinson's estimate from N products, reported with its standard error.
    probes: int | None = at_least(1, None)
    curve: bool = True  # a sweep trains its flows' first seed with the likelihood curve over its pairs' OOD sets
    # The model's own samples (runner/samples.py), scored like any set: how many each run draws; PixelCNN++
    # fewer, as it draws pixel by pixel (H * W network passes per batch); Glow's temperature: 1.0 samples the
    # density whose likelihoods are compared (the Glow paper shows 0.7, which looks cleaner).
    n_samples: int = at_least(2, 64)
    n_samples_pixelcnn: int = at_least(2, 16)
    sample_temperature: float = at_least(0, 1.0, exclusive=True)

    def __post_init__(self) -> None:
        check_fields(self)
        what = tuple(self.what) if not isinstance(self.what, str) else tuple(self.what.split(","))
        unknown = [name for name in what if name not in ANALYSES]
        if unknown or not what:
            raise SettingError("what", self.what, f"expected a list of {', '.join(ANALYSES)}")
        object.__setattr__(self, "what", what)


@dataclass(frozen=True)
class Profile:
    """A named set of defaults from benchmarks.yaml."""

    name: str
    description: str = ""
    data_root: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # architecture settings per family
    pairs: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    dataset_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per in-distribution dataset
    background: float = 0.2  # the perturbation rate of background models (likelihood ratio), Ren et al.'s default
    model_train: dict[str, TrainConfig] = field(default_factory=dict)  # a family's own training settings
    model_eval: dict[str, EvalConfig] = field(default_factory=dict)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def seeds_for(self, dataset: str) -> tuple[int, ...]:
        """The training seeds of cells on `dataset`: the members of its ensembles when there are several."""
        return self.dataset_seeds.get(dataset, self.seeds)

    def train_for(self, model: str) -> TrainConfig:
        return self.model_train.get(model, self.train)

    def eval_for(self, model: str) -> EvalConfig:
        return self.model_eval.get(model, self.eval)


# The built-in defaults (no --profile) are sized for a CPU. The VAE's bound costs k decodes per image, and its
# likelihood regret ~3 decodes per refit step: with k=256 on every image of two 10,000-image test sets, scoring
# ran for hours on 2 cores (4.5 images/s). k=16 on 2,000 test images per set (and 500 in-train) takes minutes;
# every row says its `bound` and image counts. The `paper` profile keeps k=256 on whole test sets.
# The diffusion model's bound costs K = 32 U-Net passes per image (0.08 s at the CPU default size): the same cut.
CPU_VAE_EVAL = EvalConfig(iw_samples=16, limit=2000, train_sample=500)
CPU_DIFFUSION_EVAL = EvalConfig(limit=2000, train_sample=500)
DEFAULT_PROFILE = Profile(name="default", model_eval={"vae": CPU_VAE_EVAL, "diffusion": CPU_DIFFUSION_EVAL})

C = TypeVar("C")


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether `value` fits a simple annotation (int, float, str, bool, X | None)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # annotations are strings under `from __future__`
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    return True


def from_mapping(cls: type[C], values: dict[str, Any] | None, *, where: str, base: C | None = None) -> C:
    """Build (or update `base` of) the frozen dataclass `cls` from a mapping, checking keys, types and
    each field's constraints; an error names the key, the value, what it accepts and `where`."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise OodbenchError(f"unknown key {key!r} in {where}; valid keys: {valid}")
        if not _accepts(fields[key].type, value):
            raise OodbenchError(f"bad value {value!r} for {key!r} in {where}: expected {fields[key].type}")
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except SettingError as exc:
        raise OodbenchError(f"bad value {exc.value!r} for {exc.key!r} in {where}: {exc.reason}") from None


def resolve(base: C, cli_overrides: dict[str, Any]) -> C:
    """Apply command-line flags (those not None) on top of a profile's or the default configuration."""
    given = {key: value for key, value in cli_overrides.items() if value is not None}
    try:
        return dataclasses.replace(base, **given) if given else base
    except SettingError as exc:
        flag = "--" + exc.key.replace("_", "-")
        raise OodbenchError(f"bad value {exc.value!r} for {flag}: {exc.reason}") from None


_PROFILE_KEYS = {"data_root", "train", "eval", "models", "pairs", "seeds", "description", "scores", "background",
                 "analysis"}


def _seeds(raw: Any, where: str) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """`seeds: [0, 1]` (every dataset), or `seeds: {default: [0], cifar10: [0, 1, 2]}` (per in-distribution
    dataset) -> (the default seeds, the per-dataset ones)."""
    def seed_list(value: Any, key: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                               for s in value):
            raise OodbenchError(f"'{key}' in {where} must be a non-empty list of integer seeds, e.g. [0, 1, 2]")
        return tuple(dict.fromkeys(value))

    if raw is None:
        return (0,), {}
    if isinstance(raw, dict):
        per_dataset = {str(k): seed_list(v, f"seeds.{k}") for k, v in raw.items() if k != "default"}
        return seed_list(raw.get("default", [0]), "seeds.default"), per_dataset
    return seed_list(raw, "seeds"), {}


def load_profile(name: str | None, path: Path | None = None) -> Profile:
    """The named profile from `path` (default ./benchmarks.yaml, else the packaged copy); None gives
    the built-in defaults."""
    if name is None:
        return DEFAULT_PROFILE
    path = Path(path or DEFAULT_BENCHMARKS)
    if path == DEFAULT_BENCHMARKS and not path.is_file():
        path = PACKAGED_BENCHMARKS
    if not path.is_file():
        raise OodbenchError(f"config file {path} not found; pass --config PATH to a benchmarks.yaml")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise OodbenchError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    profiles = document.get("profiles") if isinstance(document, dict) else None
    if not isinstance(profiles, dict):
        raise OodbenchError(f"{path} has no 'profiles:' mapping; see the benchmarks.yaml in the repository")
    if name not in profiles:
        raise OodbenchError(f"unknown profile {name!r} in {path}; valid profiles: {', '.join(sorted(profiles))}")
    raw = profiles[name] or {}
    where = f"{path} (profile {name!r})"
    unknown = set(raw) - _PROFILE_KEYS
    if unknown:
        raise OodbenchError(
            f"unknown key {sorted(unknown)[0]!r} in {where}; valid keys: {', '.join(sorted(_PROFILE_KEYS))}"
        )
    models = raw.get("models") or {}
    if not isinstance(models, dict) or not all(isinstance(v, dict) or v is None for v in models.values()):
        raise OodbenchError(f"'models' in {where} must map a model name to its settings")
    train = from_mapping(TrainConfig, raw.get("train"), where=f"{where}, section 'train'")
    eval_section = dict(raw.get("eval") or {})
    if raw.get("scores") is not None:  # `scores:` beside `eval:` is the same setting for every model
        if not isinstance(raw["scores"], list) or not all(isinstance(n, str) for n in raw["scores"]):
            raise OodbenchError(f"'scores' in {where} must be a list of score names, e.g. [likelihood, dose]")
        eval_section["scores"] = raw["scores"]
    evaluation = from_mapping(EvalConfig, eval_section, where=f"{where}, section 'eval'")
    seeds, dataset_seeds = _seeds(raw.get("seeds"), where)
    # the background models' perturbation rate, checked as TrainConfig.background is
    background = from_mapping(TrainConfig, {"background": raw.get("background", 0.2)}, where=where).background
    architectures, model_train, model_eval = {}, {}, {}
    for model, settings in models.items():
        settings = dict(settings or {})
        # A family may carry its own `train:` / `eval:` overrides on top of the profile's sections.
        if "train" in settings:
            model_train[model] = from_mapping(TrainConfig, settings.pop("train"), base=train,
                                              where=f"{where}, models.{model}.train")
        if "eval" in settings:
            model_eval[model] = from_mapping(EvalConfig, settings.pop("eval"), base=evaluation,
                                             where=f"{where}, models.{model}.eval")
        architectures[model] = settings
    return Profile(
        name=name,
        description=str(raw.get("description") or ""),
        data_root=raw.get("data_root"),
        train=train,
        eval=evaluation,
        models=architectures,
        pairs=tuple(str(p) for p in raw.get("pairs") or ()),
        seeds=seeds,
        dataset_seeds=dataset_seeds,
        background=background,
        model_train=model_train,
        model_eval=model_eval,
        analysis=from_mapping(AnalysisConfig, raw.get("analysis"), where=f"{where}, section 'analysis'"),
    )


def to_plain(config: Any) -> Any:
    """A dataclass (possibly nested) as plain dicts/lists, for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(config):
        return {key: to_plain(value) for key, value in dataclasses.asdict(config).items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    if isinstance(config, dict):
        return {key: to_plain(value) for key, value in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config
