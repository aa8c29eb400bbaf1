"""The analyses' figures: each is written whole (a PNG of some size, no temporary left, the figure
closed) from hand-made inputs, and names what a reader needs: pair or dataset, model, seed, units,
and n per set; a constant volume term is a line with a note; a closed form orders of magnitude off
gets symmetric-log axes and says so."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from oodbench.report.analysis_figures import (
    decomposition_figure,
    decomposition_plot,
    ood_curve_figure,
    ood_curve_plot,
    second_order_figure,
    second_order_plot,
)
from oodbench.report.figures import save_figure

@pytest.fixture(autouse=True)
def _no_open_figures():
    """Each test starts with no open figure, so "the figure is closed once written" is about its own."""
    plt.close("all")
    yield
    plt.close("all")


ROW = {"model": "glow", "in_dataset": "cifar10", "pair": "cifar10:svhn", "seed": 3, "bpd_dims": 3072}


def _scores(constant_logdet: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    sets = {"in_train": ("cifar10", "train", 40), "in_val": ("cifar10", "train", 10),
            "in_test": ("cifar10", "test", 50), "out_test": ("svhn", "test", 60)}
    frames = []
    for name, (dataset, split, n) in sets.items():
        log_pz = rng.normal(-9000 if name != "out_test" else -7000, 300, n)
        logdet = np.full(n, 1234.5) if constant_logdet else rng.normal(2000, 100, n)
        log_px = log_pz + logdet - 3072 * math.log(256)
        frames.append(pd.DataFrame({"set": name, "dataset": dataset, "split": split, "index": np.arange(n),
                                    "log_px": log_px, "bpd": -log_px / (3072 * math.log(2)),
                                    "log_pz": log_pz, "logdet": logdet}))
    return pd.concat(frames, ignore_index=True)


def _texts(fig: plt.Figure) -> str:
    """Every piece of text on the figure, in one string."""
    return "\n".join(t.get_text() for t in fig.findobj(plt.Text))


def _check_png(path, tmp_path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert plt.get_fignums() == [], "the figure is closed once written"


def _smallest_font(fig: plt.Figure) -> float:
    return min(t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_text())


def test_decomposition_figure_has_two_labelled_panels_and_is_written(tmp_path):
    fig = decomposition_plot(_scores(), ROW)
    prior, volume = fig.axes
    assert "log p(z)" in prior.get_title() and "log|det" in volume.get_title()
    assert "bits/dim" in prior.get_xlabel() and "D = 3,072" in volume.get_xlabel()
    title = fig._suptitle.get_text()
    assert "glow" in title and "cifar10:svhn" in title and "seed 3" in title
    legend = [t.get_text() for t in prior.get_legend().get_texts()]
    assert [s.split(" (")[0] for s in legend] == ["cifar10 train", "cifar10 test", "svhn test"]  # no in_val
    assert "n=40" in legend[0] and "n=60" in legend[2] and "OOD" in legend[2]
    styles = {line.get_linestyle() for line in prior.get_legend().get_lines()}
    assert len(styles) == 3, "the sets differ by line style, not only colour"
    assert _smallest_font(fig) >= 8
    plt.close(fig)
    out = decomposition_figure(_scores(), ROW, tmp_path / "decomposition.png")
    _check_png(out, tmp_path)


def test_a_constant_volume_term_is_a_line_with_a_note():
    fig = decomposition_plot(_scores(constant_logdet=True), {**ROW, "model": "cv-glow"})
    _, volume = fig.axes
    vertical = [line for line in volume.get_lines() if isinstance(line, Line2D) and len(set(line.get_xdata())) == 1]
    assert len(vertical) == 3 and not volume.patches, "lines, not a one-bin histogram"
    expected = -1234.5 / (3072 * math.log(2))
    assert vertical[0].get_xdata()[0] == pytest.approx(expected)
    assert "the same for every input" in _texts(fig) and f"{expected:.4f}" in _texts(fig)
    assert fig.axes[0].patches, "the prior term is still a histogram"
    plt.close(fig)


def _second_order_rows(closed_form_scale: float) -> list[dict]:
    rows = []
    for i, (pair, measured) in enumerate([("cifar10:svhn", -0.6), ("fashionmnist:mnist", -0.3), ("cifar10:gray:cifar10", 0.2)]):
        rows.append({"run": f"runs/r{i}", "model": "cv-glow", "pair": pair, "measured_gap_bpd": measured,
                     "diag_term_bpd": 0.8 * measured, "closed_form_bpd": closed_form_scale * measured})
    return rows


def test_second_order_figure_compares_predictions_with_the_measured_gap(tmp_path):
    fig = second_order_plot(_second_order_rows(1.5))
    (ax,) = fig.axes
    assert ax.get_xscale() == "linear" and "symmetric-log" not in ax.get_title()
    assert "bits/dim" in ax.get_xlabel() and "bits/dim" in ax.get_ylabel() and "measured" in ax.get_xlabel()
    texts = _texts(fig)
    for pair in ("cifar10:svhn", "fashionmnist:mnist", "cifar10:gray:cifar10"):
        assert f"{pair} (cv-glow)" in texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("closed form" in t and "n=3" in t for t in legend) and any("diagonal" in t for t in legend)
    assert any(t == "prediction = measured" for t in legend)
    zero_lines = [line for line in ax.get_lines() if set(line.get_xdata()) == {0} or set(line.get_ydata()) == {0}]
    assert len(zero_lines) == 2
    assert _smallest_font(fig) >= 8
    plt.close(fig)
    _check_png(second_order_figure(_second_order_rows(1.5), tmp_path / "second_order.png"), tmp_path)


def test_a_closed_form_orders_of_magnitude_off_gets_symlog_axes_and_a_note():
    fig = second_order_plot(_second_order_rows(1e6))
    (ax,) = fig.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "symlog"), "the measured gaps span no orders of magnitude"
    assert "symmetric-log y axis" in ax.get_title() and "orders of magnitude off" in ax.get_title()
    assert "the closed form up to 1e+06x the measured gap" in ax.get_title()
    assert "the diagonal term" not in ax.get_title(), "only the prediction that is off is named"
    plt.close(fig)


def _curve() -> pd.DataFrame:
    rows = []
    for step in (0, 100, 200):
        for role, dataset, split, bpd in (("in_train", "cifar10", "train", 4.0), ("in_test", "cifar10", "test", 4.1),
                                          ("ood", "svhn", "test", 3.2), ("ood", "gray:cifar10", "test", 4.5)):
            rows.append({"step": step, "epoch": step // 100, "set": role, "dataset": dataset, "split": split,
                         "n": 200, "bpd_mean": bpd - step / 1000, "bpd_std": 0.3})
    return pd.DataFrame(rows)


def test_ood_curve_figure_names_the_run_and_every_set(tmp_path):
    info = {"model": "glow", "dataset": "cifar10", "seed": 1}
    fig = ood_curve_plot(_curve(), info)
    (ax,) = fig.axes
    title = ax.get_title()
    assert "glow" in title and "cifar10" in title and "seed 1" in title
    assert "below the in-distribution test set's" in title
    assert "svhn test at 3/3 points" in title and "gray:cifar10 test at 0/3 points" in title
    assert ax.get_xlabel() == "optimizer step" and "bits/dim" in ax.get_ylabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [t.split(" (")[0] for t in legend] == ["cifar10 train", "cifar10 test", "svhn test", "gray:cifar10 test"]
    assert all("n=200" in t for t in legend) and "OOD" in legend[2]
    assert len({line.get_linestyle() for line in ax.get_lines()}) == 4
    assert _smallest_font(fig) >= 8
    plt.close(fig)
    _check_png(ood_curve_figure(_curve(), info, tmp_path / "curve.png"), tmp_path)


def test_save_figure_closes_the_figure_even_when_writing_fails(tmp_path):
    fig, _ = plt.subplots()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        save_figure(fig, blocker / "out.png")  # its folder is a file
    assert plt.get_fignums() == []
