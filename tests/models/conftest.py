"""Model tests run tiny tensors on one thread: threads gain nothing at these shapes, and on a shared CPU
every oneDNN call's thread barrier can wait out another process's time slice (a tiny forward: ~8 ms on
one thread, ~0.7 s on two)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
