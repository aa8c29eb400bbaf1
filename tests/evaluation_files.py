"""Reading an evaluation's files in tests."""

from __future__ import annotations

import json
from pathlib import Path


def likelihood_row(eval_folder: Path) -> dict:
    """The raw-likelihood row of an evaluation's metrics.json (one row per score variant)."""
    rows = json.loads((Path(eval_folder) / "metrics.json").read_text())["rows"]
    return next(row for row in rows if row["score"] == "likelihood")
