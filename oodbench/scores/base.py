"""The score contract: per-sample statistics in, one OOD score per test unit out, larger = more OOD.

A score is a pure function of the statistics a trained model gave some images (`schema.py`: one row
per image with `index`, `log_px`, `bpd`, the family's parts, the model-free compressed lengths); it
never loads a model. Every score:
- names the statistic columns it `needs` and the families it applies to (None: every family);
- is `fit` on statistics of training-distribution images only (the run's validation hold-out: images
  of the training split the model was not trained on), never on a test set; scores with nothing to
  fit return themselves;
- then `score`s a set's statistics: one number per test unit, larger = more OOD. A unit is an image,
  or, for batch scores (typicality with M > 1), a batch of M images drawn without replacement;
- may need statistics of other runs (a background model, ensemble members: `companions.py`), joined
  onto the run's before scoring, or statistics computed only on request (`extra_statistics`: the VAE's
  likelihood regret); `unusable` then says what to train or pass;
- may carry a decision `threshold` fitted on the training-distribution statistics (units scoring above
  it are flagged OOD); None where the score defines none.
"Larger = more OOD" is the one convention here; the metrics (`metrics.py`) rely on it.

Variants of one score (input complexity's two codecs, typicality's batch sizes) are instances with
different `params`; each is a row of results.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import field
from typing import Any, ClassVar

import numpy as np
import pandas as pd


def fitted_state() -> Any:
    """A dataclass field that `fit` fills in (not a parameter: not in `params` or the label)."""
    return field(default=None, repr=False, compare=False, metadata={"fitted": True})


class Score(abc.ABC):
    """One OOD score (a frozen dataclass whose fields are its parameters)."""

    name: ClassVar[str]
    paper: ClassVar[str]  # whom it follows, for docs and results.md
    needs: ClassVar[tuple[str, ...]] = ("bpd",)
    families: ClassVar[tuple[str, ...] | None] = None
    per_sample: ClassVar[bool] = True  # one score per image (False: per batch)
    extra_statistics: ClassVar[tuple[str, ...]] = ()  # statistics computed only on request (runner/statistics.py)
    needs_companions: ClassVar[bool] = False  # statistics of other runs of the same images (companions.py)
    missing_hint: ClassVar[str] = ""  # what gives the needed statistics when they are missing
    fails_as_gate: ClassVar[str] = ""  # the published evidence that it fails as an OOD gate, where there is
    threshold: float | None = None  # set by `fit` where the score has a decision rule

    @property
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if not f.metadata.get("fitted")}

    @property
    def short(self) -> str:
        """A column heading for tables that show every score side by side."""
        return self.name

    @property
    def params_text(self) -> str:
        """"batch=5,seed=0": the parameters as results.csv's `score_params` column writes them."""
        return ",".join(f"{key}={value}" for key, value in self.params.items())

    @property
    def label(self) -> str:
        """"typicality(batch=5,seed=0)": the name and parameters, as scores.csv's columns name them."""
        return f"{self.name}({self.params_text})" if self.params_text else self.name

    def unusable(self, family: str, columns: set[str]) -> str | None:
        """Why this score cannot be computed for `family` from statistics with `columns` (None: it can)."""
        if self.families is not None and family not in self.families:
            return f"{self.name} applies to {', '.join(self.families)}, not {family}"
        missing = self.missing(columns)
        if not missing:
            return None
        return self.missing_hint or f"{self.name} needs the statistics {', '.join(missing)}, which {family} does not give"

    def missing(self, columns: set[str]) -> list[str]:
        """The statistics this score needs that `columns` lacks."""
        return [c for c in self.needs if c not in columns]

    def fit(self, train: pd.DataFrame) -> Score:
        """A copy fitted on training-distribution statistics (scores with nothing to fit: itself)."""
        return self

    @abc.abstractmethod
    def _score(self, stats: pd.DataFrame) -> np.ndarray:
        """One value per test unit, larger = more OOD."""

    def score(self, stats: pd.DataFrame) -> np.ndarray:
        values = np.asarray(self._score(stats), dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"{self.label} gave non-vector scores")
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:  # an AUROC, a threshold or a KDE of them would be meaningless: the score is left out, saying why
            raise ValueError(f"{self.label} gave {bad} NaN or infinite scores of {len(values)} in one set "
                             "(a statistic it reads overflowed or is undefined there)")
        return values
