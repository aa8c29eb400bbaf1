"""oodbench: do deep generative models know what they don't know?

A benchmark that trains likelihood models (Glow, CV-Glow, PixelCNN++, a VAE) on one image dataset and
measures whether their likelihood separates that dataset's test set from out-of-distribution sets
(Nalisnick et al., ICLR 2019). See README.md for the commands and PAPER.md for the science.

The Python API (api.py; the README's examples run in tests/test_readme.py) is imported on first use,
so `import oodbench` and the CLI's start stay fast:

    oodbench.train(model=..., dataset=..., **settings) -> Run     oodbench.load_run(path) -> Run
    oodbench.import_checkpoint(source, files, dataset=...) -> Run  (a released checkpoint as a run)
    oodbench.evaluate(run, pair="IN:OUT", ...) -> result rows     Run.score(images) -> the gate's verdicts
    oodbench.ood_metrics(in_scores, out_scores) -> AUROC, AUPR, FPR oodbench.OodbenchError
"""

from __future__ import annotations

from typing import Any

from oodbench.errors import OodbenchError

__version__ = "0.1.0"
_API = ("Run", "evaluate", "import_checkpoint", "load_run", "ood_metrics", "train")
__all__ = ["OodbenchError", "__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from oodbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'oodbench' has no attribute {name!r}")
