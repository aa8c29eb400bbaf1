"""The decomposition of a flow's bits/dim into prior and volume terms (Nalisnick et al. 2019, Fig. 3).

- means and stds (ddof=1) of hand-made frames against numpy;
- on a real tiny Glow's outputs (`log_prob_parts` of random 8-bit images, the evaluation's path), the
  prior and volume contributions plus the dequantization constant give bpd image by image, with and
  without zero padding (D_model != D), and a wrong model size is refused;
- CV-Glow's volume term is detected as one constant, affine Glow's is not;
- the finding names the term that favours the OOD set; scores without flow terms are a one-line error.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from oodbench.analysis.decomposition import (
    CONSTANT,
    TABLE_COLUMNS,
    decomposition_finding,
    decomposition_table,
    dequantization_bpd,
    term_contributions,
    volume_is_constant,
)
from oodbench.data.quantize import index_noise
from oodbench.errors import OodbenchError
from oodbench.models.glow import Glow, GlowConfig
from oodbench.units import bits_per_dim

SETS = {"in_train": ("cifar10", "train", 7), "in_test": ("cifar10", "test", 9), "out_test": ("svhn", "test", 8)}


def _frame(bpd_dims: int, *, seed: int = 0, logdet_shift: dict[str, float] | None = None,
           constant_logdet: bool = False) -> pd.DataFrame:
    """A hand-made scores frame of a two-level flow, nats, bpd made from log_px as evaluation does."""
    rng = np.random.default_rng(seed)
    frames = []
    for name, (dataset, split, n) in SETS.items():
        lp1, lp2 = rng.normal(-900, 30, n), rng.normal(-300, 10, n)
        if constant_logdet:
            ld1, ld2 = np.full(n, 700.0), np.full(n, 150.0)
        else:
            ld1, ld2 = rng.normal(700, 20, n), rng.normal(150, 5, n) + (logdet_shift or {}).get(name, 0.0)
        log_px = lp1 + lp2 + ld1 + ld2 - bpd_dims * math.log(256)
        frames.append(pd.DataFrame({
            "set": name, "dataset": dataset, "split": split, "index": np.arange(n), "log_px": log_px,
            "bpd": bits_per_dim(log_px, bpd_dims), "log_pz": lp1 + lp2, "logdet": ld1 + ld2,
            "log_pz_level1": lp1, "log_pz_level2": lp2, "logdet_level1": ld1, "logdet_level2": ld2}))
    return pd.concat(frames, ignore_index=True)


def test_means_and_stds_per_set_and_term_match_numpy():
    dims = 3 * 32 * 32
    scores = _frame(dims)
    table = decomposition_table(scores, dims)
    assert tuple(table.columns) == TABLE_COLUMNS
    assert list(dict.fromkeys(table["set"])) == ["in_train", "in_test", "out_test"]
    assert list(dict.fromkeys(table["term"])) == ["log_pz", "logdet", CONSTANT, "bpd", "log_pz_level1", "logdet_level1",
                                                  "log_pz_level2", "logdet_level2"]
    for name, (dataset, split, n) in SETS.items():
        subset = scores[scores["set"] == name]
        for term in ("log_pz", "logdet", "log_pz_level2", "logdet_level1"):
            row = table[(table["set"] == name) & (table["term"] == term)].iloc[0]
            bits = -subset[term].to_numpy() / (dims * np.log(2))
            assert (row["dataset"], row["split"], row["n"]) == (dataset, split, n)
            assert row["mean_bpd"] == pytest.approx(np.mean(bits), abs=1e-12)
            assert row["std_bpd"] == pytest.approx(np.std(bits, ddof=1), abs=1e-12)
        bpd = table[(table["set"] == name) & (table["term"] == "bpd")].iloc[0]
        assert bpd["mean_bpd"] == pytest.approx(subset["bpd"].mean(), abs=1e-12)
        constant = table[(table["set"] == name) & (table["term"] == CONSTANT)].iloc[0]
        assert (constant["mean_bpd"], constant["std_bpd"]) == (8.0, 0.0)


def test_in_val_is_kept_when_present():
    scores = _frame(64)
    val = scores[scores["set"] == "in_train"].assign(set="in_val")
    table = decomposition_table(pd.concat([scores, val]), 64)
    assert list(dict.fromkeys(table["set"])) == ["in_train", "in_val", "in_test", "out_test"]


def _tiny_glow(coupling: str) -> Glow:
    """A float64 two-level Glow on 1x8x8, actnorm initialised, every parameter perturbed (so affine
    couplings depend on their input; fresh ones are zero-initialised)."""
    torch.manual_seed(0)
    model = Glow(GlowConfig(in_channels=1, levels=2, steps=2, hidden_channels=8, coupling=coupling))
    with torch.no_grad():
        model.log_prob(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8))
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.double().eval()


def _glow_scores(model: Glow, bpd_dims: int) -> pd.DataFrame:
    """scores.csv's columns for random 8-bit images in three sets, from `log_prob_parts` (float64
    noise makes the dequantized y, and so everything after it, float64)."""
    frames = []
    generator = torch.Generator().manual_seed(1)
    for offset, (name, (dataset, split, n)) in enumerate(SETS.items()):
        high = 256 if name != "out_test" else 120  # darker OOD images: other statistics
        x = torch.randint(0, high, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
        index = torch.arange(n) + 100 * offset
        with torch.no_grad():
            parts = model.log_prob_parts(x, index_noise(index, (1, 8, 8), seed=0).double())
        columns = {k: v.numpy() for k, v in parts.items()}
        frames.append(pd.DataFrame({"set": name, "dataset": dataset, "split": split, "index": index.numpy(),
                                    "bpd": bits_per_dim(columns["log_px"], bpd_dims), **columns}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("bpd_dims", [64, 36], ids=["unpadded", "padded-6x6-in-8x8"])
def test_contributions_add_up_to_bpd_on_a_real_glow(bpd_dims):
    scores = _glow_scores(_tiny_glow("affine"), bpd_dims)
    parts = term_contributions(scores, bpd_dims)
    constant = dequantization_bpd(bpd_dims, model_dims=64)
    assert constant == pytest.approx(8 * 64 / bpd_dims)
    np.testing.assert_allclose(parts["log_pz"] + parts["logdet"] + constant, scores["bpd"], rtol=0, atol=1e-6)
    for term in ("log_pz", "logdet"):  # the levels add up to their total
        np.testing.assert_allclose(parts[f"{term}_level1"] + parts[f"{term}_level2"], parts[term], rtol=0, atol=1e-9)
    table = decomposition_table(scores, bpd_dims, model_dims=64)
    means = table.pivot(index="set", columns="term", values="mean_bpd")
    np.testing.assert_allclose(means["log_pz"] + means["logdet"] + means[CONSTANT], means["bpd"], rtol=0, atol=1e-6)
    assert not volume_is_constant(table), "a perturbed affine Glow's volume term depends on the input"
    if bpd_dims != 64:
        with pytest.raises(OodbenchError, match="misses bpd"):
            decomposition_table(scores, bpd_dims)  # model_dims defaults to bpd_dims: off by whole bits


def test_cv_glow_volume_term_is_one_constant_and_the_finding_says_so():
    scores = _glow_scores(_tiny_glow("additive"), 64)
    table = decomposition_table(scores, 64)
    assert volume_is_constant(table)
    finding = decomposition_finding(table)
    assert finding["volume_constant"] and not finding["volume_favours_ood"]
    expected = -scores["logdet"].iloc[0] / (64 * np.log(2))
    assert finding["volume_constant_bpd"] == pytest.approx(expected, abs=1e-9)
    assert finding["gap_bpd"]["logdet"] == pytest.approx(0.0, abs=1e-9)
    assert finding["gap_bpd"]["bpd"] == pytest.approx(finding["gap_bpd"]["log_pz"], abs=1e-9)
    assert "same constant" in finding["summary"]


def test_finding_names_the_term_that_favours_the_ood_set():
    dims = 3 * 32 * 32
    # a larger log|det| for SVHN: a lower volume contribution, so the volume term favours it
    table = decomposition_table(_frame(dims, logdet_shift={"out_test": 3000.0}), dims)
    finding = decomposition_finding(table)
    means = table.pivot(index="set", columns="term", values="mean_bpd")
    assert finding["gap_bpd"]["logdet"] == pytest.approx(means.loc["out_test", "logdet"] - means.loc["in_test", "logdet"])
    assert finding["gap_bpd"]["logdet"] < -0.5
    assert finding["volume_favours_ood"] and "logdet" in finding["favours_ood"]
    assert "logdet_level2" in finding["favours_ood"] and "logdet_level1" not in finding["favours_ood"]
    assert finding["ood_lower_bpd"] and not finding["volume_constant"] and finding["volume_constant_bpd"] is None
    assert finding["in_set"] == "cifar10 test" and finding["out_set"] == "svhn test"
    assert "svhn test gets lower bits/dim" in finding["summary"]
    assert "the volume term favours svhn test" in finding["summary"]


def test_scores_without_flow_terms_are_a_one_line_error():
    scores = _frame(64).drop(columns=["log_pz", "logdet"])  # as a PixelCNN++ or VAE evaluation
    with pytest.raises(OodbenchError, match=r"decomposition applies to flows \(glow, cv-glow\)") as error:
        decomposition_table(scores, 64)
    assert "\n" not in str(error.value)
    table = decomposition_table(_frame(64), 64)
    with pytest.raises(OodbenchError, match="out_test"):
        decomposition_finding(table[table["set"] != "out_test"])
