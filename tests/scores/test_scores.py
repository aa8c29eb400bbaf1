"""Every score on tiny synthetic statistics whose AUROC is computed by hand; the registry and the
contract (larger = more OOD, fit on training-distribution statistics only, skipped with a reason
where a family cannot give what a score needs)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from oodbench.errors import OodbenchError
from oodbench.metrics import ood_metrics
from oodbench.scores import SCORES, parse_scores, score_variants
from oodbench.scores.complexity import InputComplexity
from oodbench.scores.dose import DoSE, summary_statistics
from oodbench.scores.likelihood import Likelihood
from oodbench.scores.typicality import Typicality


def stats(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"index": np.arange(n), **{k: np.asarray(v, dtype=float) for k, v in columns.items()}})


def auroc(score, fit, inside, outside) -> float:
    fitted = score.fit(fit)
    return ood_metrics(fitted.score(inside), fitted.score(outside)).auroc


def test_likelihood_is_the_bits_per_dim():
    inside, outside = stats(bpd=[3.0, 3.2, 3.4]), stats(bpd=[2.0, 3.3])
    assert np.array_equal(Likelihood().score(outside), [2.0, 3.3])
    # Pairs (out > in): 2.0 beats none, 3.3 beats 3.0 and 3.2: 2 of 6.
    assert auroc(Likelihood(), inside, inside, outside) == pytest.approx(2 / 6)


def test_input_complexity_subtracts_the_compressed_length():
    # SVHN-like OOD: lower bits/dim than the in-distribution set, but far simpler for PNG too.
    inside = stats(bpd=[3.0, 3.2, 3.4], png_bpd=[2.9, 3.0, 3.1])  # S = 0.1, 0.2, 0.3
    outside = stats(bpd=[2.0, 2.5], png_bpd=[1.0, 1.6])  # S = 1.0, 0.9
    score = InputComplexity("png")
    assert np.allclose(score.score(outside), [1.0, 0.9])
    assert auroc(score, inside, inside, outside) == 1.0  # every OOD S is above every in-distribution S
    assert auroc(Likelihood(), inside, inside, outside) == 0.0  # while the likelihood gets them all wrong
    assert InputComplexity("jpeg2000").needs == ("bpd", "jpeg2000_bpd")


def test_typicality_flags_batches_that_are_too_likely_as_well_as_too_unlikely():
    fit = stats(bpd=[1.9, 2.1] * 50)  # mean 2.0, every |bpd - mean| = 0.1
    fitted = Typicality(batch=1).fit(fit)
    assert fitted.train_mean == pytest.approx(2.0) and fitted.threshold == pytest.approx(0.1)
    inside, outside = stats(bpd=[2.0, 2.05, 1.95, 2.02]), stats(bpd=[1.0, 3.0])
    assert np.allclose(fitted.score(outside), [1.0, 1.0])
    # One OOD image far above, one far below: the likelihood splits them, typicality flags both.
    assert auroc(Typicality(batch=1), fit, inside, outside) == 1.0
    assert auroc(Likelihood(), fit, inside, outside) == pytest.approx(0.5)


def test_typicality_of_single_images_stays_beside_its_image():
    # M = 1 is a per-sample score: scores.csv and the gate put value i beside image i, so it must not be
    # shuffled like the batches of M > 1 (a seeded permutation still gives the right AUROC, not the right image).
    fitted = Typicality(batch=1).fit(stats(bpd=[0.0] * 4))
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 7.0])
    assert np.array_equal(fitted.score(stats(bpd=values)), values)


def test_typicality_on_batches_averages_disjoint_batches():
    fit = stats(bpd=[2.0] * 10)
    fitted = Typicality(batch=5).fit(fit)
    assert fitted.threshold == 0.0 and not fitted.per_sample
    scores = fitted.score(stats(bpd=[3.0] * 12))  # 12 images: 2 batches of 5, 2 images left over
    assert np.allclose(scores, [1.0, 1.0])
    # The batches are disjoint: with a training mean of 0, their means times 5 add up to every image once.
    values = np.arange(10, dtype=float)
    batches = Typicality(batch=5, seed=3).fit(stats(bpd=[0.0])).score(stats(bpd=values))
    assert len(batches) == 2 and batches.sum() * 5 == pytest.approx(values.sum())
    with pytest.raises(ValueError, match="no batch of 5"):
        fitted.score(stats(bpd=[1.0, 2.0]))


@pytest.mark.parametrize("batch", [1, 5, 25])
def test_typicality_threshold_is_the_99_percent_quantile_for_normal_bits_per_dim(batch):
    """For bits/dim ~ N(mu, sigma^2) the mean of M of them is N(mu, sigma^2 / M), so |mean - mu| has its
    1 - alpha = 99% quantile at sigma / sqrt(M) * Phi^-1(1 - alpha / 2) = 2.5758 sigma / sqrt(M). The
    bootstrap estimate of one seed scatters by ~4%; the mean of 20 seeds' by ~1% (and the 20,000
    held-out values' sd by 0.5%). A 95% or 99.5% quantile (-24%, +9%), bootstrap batches of 1 whatever M
    (x sqrt(M)) or a 1/M scale (/ sqrt(M)) fails. And the rule has its level: about 1% of in-distribution
    units score above the threshold (a 95% quantile flags 5%)."""
    rng = np.random.default_rng(0)
    mu, sigma = 3.0, 0.2
    fit = stats(bpd=rng.normal(mu, sigma, 20_000))
    expected = sigma / math.sqrt(batch) * scipy_stats.norm.ppf(1 - 0.01 / 2)
    thresholds = [Typicality(batch=batch, seed=seed).fit(fit).threshold for seed in range(20)]
    assert np.mean(thresholds) == pytest.approx(expected, rel=0.04)
    fitted = Typicality(batch=batch).fit(fit)
    assert fitted.train_mean == pytest.approx(mu, abs=5 * sigma / math.sqrt(20_000))
    flagged = np.mean(fitted.score(stats(bpd=rng.normal(mu, sigma, 100_000))) > fitted.threshold)
    assert 0.003 < flagged < 0.025, flagged  # 1%, give or take the one seed's threshold and 4,000+ units


def test_dose_scores_by_kernel_densities_of_each_statistic():
    rng = np.random.default_rng(0)
    fit = stats(bpd=rng.normal(3, 0.1, 500), kl=rng.normal(10, 1, 500))
    fitted = DoSE().fit(fit)
    assert fitted.statistics == ("bpd", "kl")
    # The KDE-sum by hand for one point: Gaussian kernels, Scott's bandwidth n^(-1/5) * std (ddof=1).
    point = {"bpd": 3.05, "kl": 12.0}
    expected = 0.0
    for name, x in point.items():
        data = fit[name].to_numpy()
        h = len(data) ** (-1 / 5) * data.std(ddof=1)
        expected += np.log(np.mean(np.exp(-0.5 * ((x - data) / h) ** 2) / (h * math.sqrt(2 * math.pi))))
    assert fitted.score(stats(**{k: [v] for k, v in point.items()}))[0] == pytest.approx(-expected, rel=1e-9)
    # An OOD set typical in bits/dim but not in KL is flagged; the likelihood cannot see it.
    inside = stats(bpd=rng.normal(3, 0.1, 50), kl=rng.normal(10, 1, 50))
    outside = stats(bpd=rng.normal(3, 0.1, 50), kl=rng.normal(20, 1, 50))
    assert auroc(DoSE(), fit, inside, outside) == 1.0


def test_dose_models_each_level_instead_of_totals_and_drops_constants():
    columns = ["index", "log_px", "bpd", "log_pz", "logdet", "log_pz_level1", "log_pz_level2", "logdet_level1",
               "logdet_level2", "png_bpd", "jpeg2000_bpd"]
    assert summary_statistics(columns) == ["bpd", "log_pz_level1", "log_pz_level2", "logdet_level1", "logdet_level2"]
    # CV-Glow: the log-determinant is the same for every image, so it tells nothing and is left out.
    fit = stats(bpd=[3.0, 3.1, 2.9], logdet_level1=[5.0, 5.0, 5.0])
    assert DoSE().fit(fit).statistics == ("bpd",)


def test_fitted_scores_must_be_fitted_first():
    with pytest.raises(ValueError, match="fitted"):
        Typicality().score(stats(bpd=[1.0]))
    with pytest.raises(ValueError, match="fitted"):
        DoSE().score(stats(bpd=[1.0]))


def test_registry_variants_and_labels():
    assert SCORES.registered() == ["likelihood", "input_complexity", "typicality", "dose", "likelihood_ratio",
                                   "ensemble_likelihood", "waic", "likelihood_regret", "score_statistic",
                                   "fisher_combined", "layer_gradients", "lid_dual_threshold", "diffpath", "msma"]
    labels = [v.label for v in score_variants(None)]
    assert labels[:3] == ["likelihood", "input_complexity(codec=png)", "input_complexity(codec=jpeg2000)"]
    assert [v.batch for v in score_variants(("typicality",))] == [1, 2, 5, 10, 25]
    assert parse_scores("likelihood, dose") == ("likelihood", "dose") and parse_scores(None) is None
    with pytest.raises(OodbenchError, match="unknown score 'regret'; valid names: diffpath, dose, ensemble_likelihood, fisher_"):
        parse_scores("likelihood,regret")


def test_a_score_says_why_it_cannot_be_computed():
    assert InputComplexity("png").unusable("glow", {"bpd"}) == "input_complexity needs the statistics png_bpd, which glow does not give"

    class VaeOnly(Likelihood):
        families = ("vae",)

    assert VaeOnly().unusable("glow", {"bpd"}) == "likelihood applies to vae, not glow"
    assert VaeOnly().unusable("vae", {"bpd"}) is None


def test_scores_are_finite_or_an_error():
    with pytest.raises(ValueError, match="gave 1 NaN or infinite scores of 2"):
        Likelihood().score(stats(bpd=[1.0, np.nan]))
