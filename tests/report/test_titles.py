"""Every report figure's titles and legends lie inside the figure when the datasets are a user's folders
with long paths: names are shown by their last path component and a text still too wide is rewrapped
(matplotlib would clip it at the figure's edge). Measured on the drawn figure: each text's window extent
against the figure's."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from oodbench.report.analysis_figures import decomposition_plot, ood_curve_plot, second_order_plot
from oodbench.report.figures import histogram_figure, roc_figure

IN = "folder:/home/someone/projects/datasets/my_long_dataset_folder/my_training_images"
OUT = "folder:/home/someone/projects/datasets/other_folder/ood_images_from_the_field"
# A folder whose own name is longer than any title line: it must be broken, not clipped.
HUGE = "folder:/data/" + "an_extremely_long_folder_name_without_any_spaces_" * 4
CASES = {"long paths": (IN, OUT), "a huge folder name": (HUGE, OUT), "registered sets": ("cifar10", "svhn")}


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    plt.close("all")


def _scores(in_name: str, out_name: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for name, (dataset, split, n) in {"in_train": (in_name, "train", 40), "in_val": (in_name, "train", 10),
                                      "in_test": (in_name, "test", 50), "out_test": (out_name, "test", 60)}.items():
        log_pz, logdet = rng.normal(-9000, 300, n), rng.normal(2000, 100, n)
        log_px = log_pz + logdet - 3072 * math.log(256)
        frames.append(pd.DataFrame({"set": name, "dataset": dataset, "split": split, "index": np.arange(n),
                                    "log_px": log_px, "bpd": -log_px / (3072 * math.log(2)), "log_pz": log_pz,
                                    "logdet": logdet, "score:likelihood": -log_px}))
    return pd.concat(frames, ignore_index=True)


def _figures(in_name: str, out_name: str) -> dict[str, plt.Figure]:
    pair = f"{in_name}:{out_name}"
    row = {"model": "cv-glow", "in_dataset": in_name, "pair": pair, "seed": 3, "bpd_dims": 3072, "auroc": 0.1,
           "fpr_at_80_tpr": 0.9}
    scores = _scores(in_name, out_name)
    second = [{"run": "runs/r", "model": "cv-glow", "seed": 0, "pair": pair, "measured_gap_bpd": -0.5,
               "diag_term_bpd": -0.4, "closed_form_bpd": -0.7}]
    curve = pd.DataFrame([{"step": step, "epoch": 0, "set": role, "dataset": dataset, "split": split, "n": 100,
                           "bpd_mean": 3.0 + i, "bpd_std": 0.1}
                          for step in (0, 100) for i, (role, dataset, split) in
                          enumerate((("in_train", in_name, "train"), ("in_test", in_name, "test"), ("ood", out_name, "test")))])
    return {"histogram": histogram_figure(scores, row), "roc": roc_figure(scores, row),
            "decomposition": decomposition_plot(scores, row), "second order": second_order_plot(second),
            "curve": ood_curve_plot(curve, {"model": "glow", "dataset": in_name, "seed": 0})}


def _texts(fig: plt.Figure) -> list:
    """The figure's title, each axes' title and legend."""
    found = [text for text in fig.texts if text.get_text()]
    for ax in fig.axes:
        found += [ax.title] if ax.title.get_text() else []
        found += [ax.get_legend()] if ax.get_legend() is not None else []
    return found


@pytest.mark.parametrize("case", CASES)
def test_titles_and_legends_fit_inside_the_figure(case):
    in_name, out_name = CASES[case]
    for name, fig in _figures(in_name, out_name).items():
        fig.canvas.draw()
        renderer, edge = fig.canvas.get_renderer(), fig.bbox
        for text in _texts(fig):
            box = text.get_window_extent(renderer)
            inside = (box.x0 >= edge.x0 - 0.5 and box.x1 <= edge.x1 + 0.5 and box.y0 >= edge.y0 - 0.5
                      and box.y1 <= edge.y1 + 0.5)
            label = text.get_text() if hasattr(text, "get_text") else "legend"
            assert inside, f"{case}, {name}: {label!r} spans x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f}" \
                           f" of a {edge.width:.0f} x {edge.height:.0f} figure"
        plt.close(fig)


def test_a_folder_is_named_by_its_last_component_and_registered_names_stay_as_they_are():
    figures = _figures(IN, OUT)
    histogram = figures["histogram"].axes[0]
    title = histogram.get_title().replace("\n", "")
    assert "/home/someone" not in title and "my_training_images" in title and "ood_images_from_the_field" in title
    legend = [t.get_text() for t in histogram.get_legend().get_texts()]
    assert legend[0].startswith("folder:…/my_training_images train")
    plt.close("all")
    registered = _figures("cifar10", "svhn")["histogram"].axes[0].get_title()
    assert registered.startswith("cv-glow trained on cifar10 (seed 3): cifar10:svhn\n"), "short titles are untouched"


def test_layout_breaks_a_title_with_no_spaces_and_keeps_every_character():
    from oodbench.report.figures import layout

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    words = "run:" + "x" * 60 + "/" + "y" * 60
    ax.set_title(f"trained on {words}\nsecond line")
    layout(fig)
    fig.canvas.draw()
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    lines = ax.title.get_text().split("\n")
    assert "".join(lines).replace(" ", "") == f"trainedon{words}secondline", "wrapped, nothing cut"
    assert lines[-1] == "second line" and any(line.endswith("run:") for line in lines), "broken after ':' first"
