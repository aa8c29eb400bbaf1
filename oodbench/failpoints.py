"""Named moments at which a test can make the process die, to prove that a kill at any moment loses
at most the work in progress (the technique of etcd's and TiKV's failpoints).

The runner calls `reached("validation")` and friends at the moments that matter: after start-up,
inside a training batch, inside validation, between an epoch's log row and its checkpoint, right after
a resume, during scoring, between two result files. Unless the environment variable
`OODBENCH_KILL_AT` names that moment, `reached` returns at once. `OODBENCH_KILL_AT=NAME[:N[:SIGNAL]]`
sends SIGNAL (default KILL) to this process the N-th time (default 1) it reaches NAME.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "OODBENCH_KILL_AT"
POINTS = ("startup", "train-batch", "validation", "epoch-logged", "resumed", "scoring", "scores-written")
_seen: Counter[str] = Counter()


def armed() -> bool:
    """Whether a failpoint is set (the runner adds its failpoint callback only then)."""
    return bool(os.environ.get(ENV))


def reached(point: str) -> None:
    assert point in POINTS, point  # a misspelt point would silently never fire
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    nth, _, signal_name = rest.partition(":")
    _seen[point] += 1
    if _seen[point] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{signal_name or 'KILL'}"))
