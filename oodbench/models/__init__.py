"""Likelihood models: the contract (`base`), the families by name (`families`), and the one
Lightning module that trains and scores any of them (`module`)."""

from oodbench.models.base import DequantizedFlow, LikelihoodModel
from oodbench.models.families import FAMILIES, ModelFamily, build_model, model_config

__all__ = ["FAMILIES", "DequantizedFlow", "LikelihoodModel", "ModelFamily", "build_model", "model_config"]
