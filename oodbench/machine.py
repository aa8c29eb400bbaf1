"""What machine this is, in words, for the figures that depend on it (the cost columns of results,
`make bench`'s JSON): the CPU's model name as the kernel reports it."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """"Intel(R) Xeon(R) Processor", "AMD EPYC 9454 ..." (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
