"""Trains and evaluates models: data + models + scores + metrics, driven by Lightning."""

from oodbench.runner.evaluate import EvalRequest, EvalResult, evaluate
from oodbench.runner.layout import RunPaths, find_run
from oodbench.runner.train import TrainRequest, TrainResult, train

__all__ = ["EvalRequest", "EvalResult", "RunPaths", "TrainRequest", "TrainResult", "evaluate", "find_run", "train"]
