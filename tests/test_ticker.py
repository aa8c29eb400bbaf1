"""Progress of long loops outside Lightning (ticker.py): silent when short, lines with an ETA when piped."""

from __future__ import annotations

import oodbench.ticker as ticker


def test_short_loops_say_nothing_and_long_ones_report_count_rate_and_eta(monkeypatch, capsys):
    assert list(ticker.track(range(5), total=5, what="decoding x")) == list(range(5))
    assert capsys.readouterr().err == ""
    clock = iter(float(t) for t in range(0, 100, 2))  # every item takes 2 s
    monkeypatch.setattr(ticker.time, "monotonic", lambda: next(clock))
    monkeypatch.setenv("OODBENCH_PROGRESS_SECONDS", "4")
    assert list(ticker.track(range(6), total=6, what="decoding y")) == list(range(6))
    lines = capsys.readouterr().err.splitlines()
    # at 4 s (past QUIET_FOR_SECONDS = 3) one item is done at 0.25/s: 5 left -> 20 s; then a line every 4 s
    assert lines == ["decoding y: 1/6 (0.2/s), about 20 s left", "decoding y: 3/6 (0.4/s), about 8 s left",
                     "decoding y: 5/6 (0.4/s), about 2 s left"]
