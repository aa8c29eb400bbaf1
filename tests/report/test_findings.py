"""The sentence on a result rests on the AUROC's interval: chance is said to be chance, whichever mean
bits/dim is lower, and the gate's cost is given in numbers."""

from __future__ import annotations

from oodbench.report.findings import finding

ROW = {"in_dataset": "celeba", "out_dataset": "cifar10", "out_split": "test", "fpr_at_95_tpr": 0.8}


def row(auroc: float, low: float, high: float, bpd_in: float, bpd_out: float, **extra) -> dict:
    return {**ROW, "auroc": auroc, "auroc_low": low, "auroc_high": high, "bpd_in_test_mean": bpd_in,
            "bpd_out_test_mean": bpd_out, "ood_lower_bpd": bpd_out < bpd_in, **extra}


def test_an_interval_holding_one_half_is_chance_whatever_the_means():
    for bpd_out in (4.01, 3.99):  # OOD a hair above, then a hair below
        sentence = finding(row(0.52, 0.47, 0.57, 4.00, bpd_out))
        assert "chance" in sentence and "cannot flag them" in sentence, sentence
        assert "flags them" not in sentence.replace("cannot flag them", "") and "let them through" not in sentence
        assert "AUROC 0.52, 95% interval 0.47-0.57" in sentence


def test_below_chance_lets_them_through_and_says_how_many():
    sentence = finding(row(0.10, 0.08, 0.12, 3.41, 2.38, fpr_at_95_tpr=0.99))
    assert "CIFAR-10 test images get lower bits/dim than CelebA's own test images" in sentence
    assert "let them through" in sentence and "accepts 99% of them" in sentence


def test_a_weak_separation_is_not_called_a_gate():
    sentence = finding(row(0.70, 0.66, 0.74, 3.0, 3.3))
    assert "only in part" in sentence and "here the likelihood flags them" not in sentence
    strong = finding(row(0.97, 0.96, 0.98, 3.0, 5.0, fpr_at_95_tpr=0.1))
    assert "here the likelihood flags them" in strong and "accepts 10% of them" in strong


def test_a_row_without_an_interval_still_reads():
    old = row(0.3, 0.0, 0.0, 4.0, 3.5)
    del old["auroc_low"], old["auroc_high"]
    assert "let them through" in finding(old) and "interval" not in finding(old)
