"""Glow and CV-Glow (Kingma & Dhariwal 2018; Nalisnick et al. 2019, Section 5), one file per layer:
`actnorm`, `invconv` (LU 1x1 conv), `coupling` (with its network in `nets`), `squeeze_split`
(multi-scale glue and priors), `flow` (the step and the model), `config` (its settings)."""

from oodbench.models.glow.config import GlowConfig
from oodbench.models.glow.flow import FlowStep, Glow

__all__ = ["FlowStep", "Glow", "GlowConfig"]
