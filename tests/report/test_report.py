"""The report's pieces that a reader sees: the sentence of a finding, the figure's legend and title,
the progress labels; and summaries that never merge runs of different setups."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from oodbench.report import finding, summarize
from oodbench.report.figures import histogram_figure
from oodbench.runner.progress import epoch_label

ROW = {"model": "glow", "in_dataset": "cifar10", "in_split": "test", "out_dataset": "svhn", "out_split": "train",
       "pair": "cifar10:svhn@train", "seed": 0, "bpd_in_test_mean": 3.41, "bpd_out_test_mean": 2.38, "auroc": 0.1,
       "fpr_at_80_tpr": 0.99, "ood_lower_bpd": True}


def test_a_finding_says_in_words_what_the_likelihood_did():
    assert finding({**ROW, "in_dataset": "fashionmnist", "out_dataset": "mnist", "out_split": "test"}) == (
        "MNIST test images get lower bits/dim than Fashion-MNIST's own test images (2.38 vs 3.41 bits/dim, AUROC 0.10): "
        "the likelihood would let them through, as Nalisnick et al. (2019) found.")
    assert finding(ROW).startswith("SVHN train-split images get lower bits/dim than CIFAR-10's")
    flagged = finding({**ROW, "out_dataset": "gray:cifar10", "out_split": "test", "bpd_out_test_mean": 4.0,
                       "auroc": 0.8, "ood_lower_bpd": False})
    assert flagged.startswith("grey CIFAR-10 test images get higher bits/dim") and "flags them" in flagged


def scores(n_out: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "set": ["in_train"] * 10 + ["in_test"] * 20 + ["out_test"] * n_out,
        "dataset": ["cifar10"] * 30 + ["svhn"] * n_out,
        "split": ["train"] * 10 + ["test"] * 20 + ["train"] * n_out,
        "bpd": rng.normal(3, 0.5, 30 + n_out),
    })


def test_the_figure_names_each_set_by_split_role_and_size_and_the_title_the_pair():
    fig = histogram_figure(scores(), ROW)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    # SVHN's *train* split served as the OOD set: the legend says so (it used to say "svhn test (OOD)").
    assert labels == ["cifar10 train (in-distribution, trained on, n=10)", "cifar10 test (in-distribution, n=20)",
                      "svhn train (OOD, n=30)"]
    title = fig.axes[0].get_title()
    assert "cifar10:svhn@train" in title and "AUROC 0.100" in title
    other = histogram_figure(scores(), {**ROW, "pair": "cifar10:noise", "out_dataset": "noise", "auroc": 1.0})
    assert other.axes[0].get_title() != title  # two pairs of one model no longer share a title
    plt.close("all")


def test_epochs_are_counted_from_one():
    class Trainer:
        max_epochs = 6

    assert epoch_label(Trainer, 0) == "epoch 1/6" and epoch_label(Trainer, 5) == "epoch 6/6"
    Trainer.max_epochs = -1  # only --max-minutes bounds training
    assert epoch_label(Trainer, 0) == "epoch 1"


@pytest.mark.parametrize("setups, n_rows", [(["a", "a"], 1), (["a", "b"], 2)])
def test_seeds_merge_only_within_one_setup(setups, n_rows):
    base = {"model": "glow", "in_dataset": "cifar10", "in_split": "test", "out_dataset": "svhn", "out_split": "test",
            "pair": "cifar10:svhn", "score": "likelihood", "score_params": "", "short": "BPD", "bound": "dequantized",
            "bpd_in_train_mean": 3.0, "bpd_in_test_mean": 3.1, "bpd_out_test_mean": 2.0, "auroc": 0.1, "aupr_in": 0.3,
            "aupr_out": 0.3, "fpr_at_95_tpr": 0.9, "fpr_at_80_tpr": 0.9, "n_params": 1000, "n_train": 50, "epochs": 2}
    frame = pd.DataFrame([{**base, "seed": seed, "setup": setup} for seed, setup in enumerate(setups)])
    summary = summarize(frame)
    assert len(summary) == n_rows and summary["n_seeds"].tolist() == [2] * (n_rows == 1) + [1, 1] * (n_rows == 2)


def test_an_ensemble_is_shown_beside_its_own_members():
    def row(score, seed, auroc, setup="s1", members=None):
        return {"model": "glow", "pair": "cifar10:svhn", "in_dataset": "cifar10", "out_dataset": "svhn", "setup": setup,
                "score": score, "seed": seed, "auroc": auroc, "members": members}

    from oodbench.report.remedies import ensemble_markdown

    frame = pd.DataFrame([
        row("likelihood", 0, 0.10), row("likelihood", 1, 0.20), row("likelihood", 2, 0.30),
        row("likelihood", 3, 0.90, setup="other"),  # another setup: not a member
        row("ensemble_likelihood", 2, 0.15, members="0,1,2"), row("waic", 2, 0.60, members="0,1,2"),
    ])
    table = ensemble_markdown(frame)
    line = next(text for text in table.splitlines() if "cifar10:svhn" in text)
    cells = [c.strip() for c in line.strip("|").split("|")]
    # ensemble 0.150, WAIC 0.600; members 0.1, 0.2, 0.3: mean 0.200, sd 0.100, min 0.100, max 0.300, 3 of 3
    assert cells[2:] == ["0,1,2", "0.150", "0.600", "0.200", "0.100", "0.100", "0.300", "3 of 3"]


def test_remedies_table_puts_published_numbers_in_brackets():
    from oodbench.report.remedies import remedies_markdown

    summary = pd.DataFrame([
        {"model": "pixelcnn", "pair": "fashionmnist:mnist", "in_dataset": "fashionmnist", "out_dataset": "mnist",
         "score": score, "auroc_mean": auroc}
        for score, auroc in (("likelihood", 0.03), ("likelihood_ratio", 0.71))])
    table = remedies_markdown(summary)
    assert "0.030 (0.089)" in table and "0.710 (0.994)" in table
    assert "No score" in remedies_markdown(summary[summary["score"] == "likelihood"])


def test_a_long_scoring_run_says_how_long_it_will_take():
    from oodbench.runner.progress import scoring_estimate

    # 500 of 22,000 images in 50 s: 10 images/s, 2,150 s left -> "36 min"
    text = scoring_estimate(500, 50.0, 22_000, "iwae-256")
    assert text == ("scoring 22,000 images (iwae-256) will take about 36 min more at 10.0 images/s; --iw-samples and "
                    "--limit make it shorter")
    assert "2.1 h" in scoring_estimate(100, 50.0, 15_000, "exact") and "--iw-samples" not in scoring_estimate(
        100, 50.0, 15_000, "exact")
    assert scoring_estimate(900, 9.0, 1_000, "exact") is None  # 1 s left: nothing to say


def test_the_estimate_is_said_once_after_the_first_seconds(monkeypatch):
    from types import SimpleNamespace

    import torch

    from oodbench.runner import progress

    clock = iter([0.0, 1.0, 6.0, 7.0, 8.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    said = []
    callback = progress.ScoringEstimate(say=said.append)
    loader = SimpleNamespace(dataset=range(10_000))
    trainer = SimpleNamespace(predict_dataloaders=[loader, loader], world_size=1, is_global_zero=True)
    module = SimpleNamespace(model=SimpleNamespace(bound="iwae-16"))
    callback.on_predict_start(trainer, module)
    batch = (torch.zeros(50, 1), torch.arange(50))
    for i in range(4):
        callback.on_predict_batch_end(trainer, module, None, batch, i)
    # said at 6 s after 100 images (16.7 images/s, 19,900 left: ~20 min), and only once
    assert said == ["scoring 20,000 images (iwae-16) will take about 20 min more at 16.7 images/s; --iw-samples and "
                    "--limit make it shorter"]


def test_results_tex_bolds_the_best_score_per_pair_and_states_unit_and_bound():
    from oodbench.report.latex import latex

    def row(score, short, pair, auroc, bpd_in=3.0, bpd_out=2.0):
        return {"model": "pixel_cnn", "pair": pair, "score": score, "short": short, "auroc_mean": auroc,
                "bpd_in_test_mean_mean": bpd_in, "bpd_out_test_mean_mean": bpd_out, "bound": "exact", "n_seeds": 3}

    summary = pd.DataFrame([
        row("likelihood", "BPD", "cifar10:svhn", 0.2), row("likelihood_ratio", "LLR", "cifar10:svhn", 0.9),
        row("likelihood", "BPD", "fashionmnist:mnist", 0.99996, 4.5, 1.9),
        row("dose", "DoSE", "fashionmnist:mnist", 1.0),  # prints the same as 0.99996: both bold
    ])
    text = latex(summary)
    auroc, bpd = text.split(r"\end{table}")[:2]
    assert r"\toprule" in auroc and r"\bottomrule" in auroc
    assert "LLR & \\textbf{0.900} & --" in auroc and "BPD & 0.200 & \\textbf{1.000}" in auroc
    assert "DoSE & -- & \\textbf{1.000}" in auroc
    assert "pixel\\_cnn" in auroc and "bits per dimension" in auroc and "bound: exact" in auroc and "3 seed" in auroc
    assert "in-distribution test & 3.000 & 4.500" in bpd and "\\textbf" not in bpd


def test_the_roc_figure_has_every_per_sample_score_with_its_auroc():
    from oodbench.metrics import roc_points
    from oodbench.report.figures import roc_figure

    frame = pd.DataFrame({
        "set": ["in_train"] + ["in_test"] * 4 + ["out_test"] * 4,
        "score:likelihood": [9, 1, 2, 3, 4, 5, 6, 7, 8],  # perfectly separated
        "score:typicality(batch=1,seed=0)": [0, 1, 5, 3, 7, 2, 6, 4, 8],
    })
    fig = roc_figure(frame, ROW)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    # typicality by hand: out (2, 6, 4, 8) beat in (1, 5, 3, 7) in 1+3+2+4 = 10 of 16 pairs
    assert labels == ["BPD (AUROC 1.000)", "typ M=1 (AUROC 0.625)"]
    assert "in-test n=4, OOD n=4" in fig.axes[0].get_title()
    fpr, tpr = roc_points([1, 2, 3, 4], [5, 6, 7, 8])
    assert fpr[0] == 0 and tpr[-1] == 1 and np.trapezoid(tpr, fpr) == 1.0
    plt.close("all")


def test_the_roc_figure_draws_a_subsampled_score_on_the_images_it_scored():
    # A gradient score is computed on a seeded subsample (EvalConfig.extra_images): NaN elsewhere.
    from oodbench.report.figures import roc_figure

    frame = pd.DataFrame({
        "set": ["in_test"] * 4 + ["out_test"] * 4,
        "score:likelihood": [1, 2, 3, 4, 5, 6, 7, 8],
        "score:score_statistic": [1, np.nan, 3, np.nan, 2, np.nan, np.nan, 8],  # in (1, 3) vs out (2, 8): 3 of 4
    })
    labels = [text.get_text() for text in roc_figure(frame, ROW).axes[0].get_legend().get_texts()]
    assert labels == ["BPD (AUROC 1.000)", "score_statistic (AUROC 0.750, n=2/2)"]
    plt.close("all")


def test_published_numbers_sit_beside_ours_for_their_family_or_every_family_when_unstated(monkeypatch):
    from oodbench.report import tables
    from oodbench.report.published import Published

    monkeypatch.setattr(tables, "PUBLISHED", (
        Published("fisher_combined", None, "cifar10", "svhn", 0.87, "re-quoted, model not stated"),
        Published("likelihood", "pixelcnn", "cifar10", "svhn", 0.1, "a table"),
    ))
    row = dict(score="fisher_combined", in_dataset="cifar10", out_dataset="svhn", short="score+typ", n_seeds=1,
               n_params_mean=1e6, epochs_mean=2.0, n_train_mean=2000.0)
    summary = pd.DataFrame([{**row, "model": "glow", "auroc_mean": 0.74}, {**row, "model": "vae", "auroc_mean": 0.68},
                            {**row, "model": "glow", "score": "likelihood", "short": "BPD", "auroc_mean": 0.06}])
    lines = tables.published_markdown(summary).splitlines()[2:]
    assert len(lines) == 3
    assert "not stated (ours: glow)" in lines[0] and "0.740 (score+typ, 1 seed(s))" in lines[0]
    assert "not stated (ours: vae)" in lines[1] and "0.680" in lines[1]
    # a stated family is matched to that family only: our Glow's likelihood is not a PixelCNN++'s
    assert "pixelcnn" in lines[2] and "not run" in lines[2]
