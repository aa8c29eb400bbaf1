"""Progress of the long loops outside Lightning (decoding a dataset into the cache, drawing a report's
figures): nothing for loops that end within a few seconds; after that a rich bar with an ETA on a
terminal, or one line with the count, rate and ETA every `OODBENCH_PROGRESS_SECONDS` (default 30) when
stderr is not a terminal (CI logs, pipes). Training and scoring show theirs through Lightning
(runner/progress.py). Output goes to stderr, so tables on stdout stay clean.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")
QUIET_FOR_SECONDS = 3.0  # a loop that ends sooner shows nothing
DEFAULT_SECONDS = 30.0


def _eta(done: int, total: int, seconds: float) -> str:
    if done == 0:
        return "?"
    left = (total - done) * seconds / done
    return f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"


def track(items: Iterable[T], *, total: int, what: str) -> Iterator[T]:
    """Yield `items` (`total` of them), showing `what` is being done once it has taken a few seconds."""
    start = time.monotonic()
    every = float(os.environ.get("OODBENCH_PROGRESS_SECONDS", DEFAULT_SECONDS))
    progress, task, last = None, None, start
    try:
        for done, item in enumerate(items):
            now = time.monotonic()
            if now - start >= QUIET_FOR_SECONDS:
                if sys.stderr.isatty():
                    if progress is None:
                        progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                            console=Console(stderr=True), transient=True)
                        progress.start()
                        task = progress.add_task(what, total=total)
                    progress.update(task, completed=done)
                elif now - last >= every or last == start:
                    last = now
                    print(f"{what}: {done:,}/{total:,} ({done / (now - start):,.1f}/s), about {_eta(done, total, now - start)} "
                          "left", file=sys.stderr, flush=True)
            yield item
    finally:
        if progress is not None:
            progress.stop()
