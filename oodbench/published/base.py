"""What a released checkpoint becomes: the contract every converter (one module per source) honours.

A `Source` names where weights were published (the repository, its files, the bits/dim it reports) and
converts the tensors of those files into one of oodbench's families: `convert(states)` takes the state
dicts read from the user's files (`read_state`, with weights_only=True) and returns a `Converted`: the
family, the model settings read off the tensors' shapes and key names, and a state dict of that family's
model. A release that is more than tensors (diffusers' folders: JSON configs beside safetensors weights)
is read by its source's own `load(paths)`, as safely, which returns the `Converted` model and the files it
read. `Converted.build()` loads it strictly: a file whose shapes do not fit is an error, never a partly
loaded model. Converters refuse, in one line naming what is supported, a layout they do not know or a
setting oodbench does not model (`ImportRefused`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from oodbench.errors import OodbenchError

State = dict[str, torch.Tensor]


class ImportRefused(OodbenchError):
    """A released file oodbench cannot convert exactly (another layout, an unsupported setting)."""


@dataclass(frozen=True)
class Converted:
    """A released model in oodbench's terms: `family` (models/families.py) built with `model_settings`
    holds exactly `state` (the keys of that model's own state_dict). `architecture` is what was read off
    the file (for the run record); `image_size` the side of the square images it was trained at;
    `resize_small` whether 28x28 sets reach it resized bilinearly to 32x32 (else zero-padded)."""

    family: str
    model_settings: dict[str, Any]
    state: State
    architecture: dict[str, Any]
    image_size: int = 32
    resize_small: bool = False

    def build(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """The family's model with these weights, loaded strictly, in eval mode."""
        from oodbench.models.families import build_model, model_config

        config = model_config(self.family, self.model_settings, where="the converted model settings")
        # In `dtype` before loading: float64 weights copied into a float32 model would be rounded to float32
        # and stay rounded after a later .to(float64).
        model = build_model(self.family, config).to(dtype)
        try:
            model.load_state_dict(self.state, strict=True)
        except RuntimeError as exc:  # missing or unexpected keys, shapes that do not fit
            first = str(exc).strip().splitlines()
            raise ImportRefused(f"the converted weights do not fit {self.family} with {self.model_settings} "
                                f"({first[1].strip() if len(first) > 1 else first[0]}); this is a bug in the "
                                "converter, please report it with the file's key names") from None
        return model.eval()


@dataclass(frozen=True)
class Source:
    """Where a family's weights were released and how to convert them.

    name: the command line's name (`oodbench import NAME FILE...`).
    repository: the public repository that released the code (and, where there are any, the files).
    family: the oodbench family the weights become.
    files: how many files one model takes (a VAE's encoder and decoder: 2).
    published: what was released, where, and the bits/dim its authors report, per dataset (README, run record).
    convert: the state dicts of the files (in any order) -> `Converted`.
    load: for a source that reads its files itself, the paths the user gave (files, or a folder) ->
        (`Converted`, the files read); `convert` and the count of `files` are then not used.
    """

    name: str
    repository: str
    family: str
    description: str
    convert: Callable[[list[State]], Converted] | None = None
    files: int = 1
    published: dict[str, dict[str, Any]] = field(default_factory=dict)
    load: Callable[[tuple[Path, ...]], tuple[Converted, tuple[Path, ...]]] | None = None


def read_state(path: Path) -> State:
    """The tensors of a released checkpoint file, read with weights_only=True (no code runs on load).

    Accepts a bare state dict, or a dict holding one under "state_dict", "model" or "net"; strips the
    "module." prefix that torch.nn.DataParallel adds to every key."""
    path = Path(path)
    if not path.is_file():
        raise OodbenchError(f"checkpoint file {path} does not exist; pass the path of the downloaded file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ImportRefused(
            f"{path} holds pickled Python objects, not only tensors, so it cannot be read safely (weights_only=True); "
            "load it once in the code that wrote it and save its state_dict() with torch.save, then import that"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise ImportRefused(f"{path} is not a PyTorch checkpoint ({type(exc).__name__}); TensorFlow checkpoints "
                            "(openai/glow) cannot be imported: see the README's list of published models") from None
    state = _state_dict(loaded)
    if state is None:
        raise ImportRefused(f"{path} holds no state dict of tensors (top-level keys: "
                            f"{', '.join(map(str, list(loaded)[:6])) if isinstance(loaded, Mapping) else type(loaded).__name__})")
    return strip_prefix(state, "module.")


def _state_dict(loaded: Any) -> State | None:
    if isinstance(loaded, Mapping) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model", "net"):
            if key in loaded:
                return _state_dict(loaded[key])
    return None


def strip_prefix(state: State, prefix: str) -> State:
    """`state` with `prefix` removed from every key that has it (all or none: DataParallel prefixes all)."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def take(state: State, key: str, source: str) -> torch.Tensor:
    """state[key], or a one-line refusal naming the missing key and the layout expected."""
    try:
        return state[key]
    except KeyError:
        raise ImportRefused(f"the file has no {key!r}: not a {source} checkpoint of a layout oodbench knows") from None
