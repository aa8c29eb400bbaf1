"""The scores that combine runs (likelihood ratio, ensemble likelihood, WAIC) and the VAE's likelihood
regret score, on hand-made statistics with hand-computed values; the join of a companion run's
statistics, which refuses images that do not match."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from oodbench.metrics import ood_metrics
from oodbench.scores.companions import join_background, join_members, join_statistics, member_columns
from oodbench.scores.ensemble import WAIC, EnsembleLikelihood, log_mean_exp, waic
from oodbench.scores.likelihood_ratio import LikelihoodRatio
from oodbench.scores.regret import LikelihoodRegret
from oodbench.units import bits_per_dim

D = 784


def frame(log_px, index=None, **extra) -> pd.DataFrame:
    log_px = np.asarray(log_px, dtype=float)
    index = np.arange(len(log_px)) if index is None else np.asarray(index)
    result = pd.DataFrame({"index": index, "log_px": log_px, "bpd": bits_per_dim(log_px, D), **extra})
    result.attrs["bpd_dims"] = D
    return result


def test_likelihood_ratio_sign_and_join():
    # Image 0: the foreground likes it much more than the background (in-distribution semantics, LLR +100
    # nats); image 1: both models like it the same (only background statistics, LLR 0); image 2: the
    # background likes it more (LLR -50).
    foreground = frame([-1000.0, -500.0, -800.0], index=[7, 3, 5])
    background = frame([-750.0, -1100.0, -500.0], index=[5, 7, 3])  # same images, another row order
    joined = join_background(foreground, background)
    assert joined["index"].tolist() == [7, 3, 5]  # the run's own order
    llr = np.array([-1000.0 + 1100.0, -500.0 + 500.0, -800.0 + 750.0])
    score = LikelihoodRatio().score(joined)
    assert np.allclose(score, -llr / (D * math.log(2)))  # -LLR in bits/dim: larger = more OOD
    assert np.argsort(score).tolist() == [0, 1, 2]
    # The raw likelihood calls image 1 the most typical; the ratio calls image 0.
    assert ood_metrics(score[:1], score[1:]).auroc == 1.0


def test_a_join_of_other_images_is_an_error():
    run = frame([-1.0, -2.0, -3.0], index=[0, 1, 2])
    with pytest.raises(ValueError, match="1 of 3 images have no match there and 1 of theirs none here"):
        join_background(run, frame([-1.0, -2.0, -3.0], index=[0, 1, 9]))
    with pytest.raises(ValueError, match="1 of 3 images have no match"):
        join_background(run, frame([-1.0, -2.0], index=[0, 1]))
    with pytest.raises(ValueError, match="0 of 3 images have no match there and 1 of theirs none here"):
        join_background(run, frame([-1.0, -2.0, -3.0, -4.0], index=[0, 1, 2, 3]))
    with pytest.raises(ValueError, match="repeat an image"):
        join_background(run, frame([-1.0, -2.0, -3.0], index=[0, 1, 1]))
    # The full key: the same index in another set is another image.
    keyed = run.assign(set="in_test", dataset="cifar10", split="test")
    other = keyed.assign(split="train")
    with pytest.raises(ValueError, match="3 of 3 images have no match"):
        join_statistics(keyed, other, {"log_px": "background_log_px"}, what="the background model")


def test_likelihood_ratio_without_a_background_says_what_to_do():
    reason = LikelihoodRatio().unusable("pixelcnn", {"bpd", "log_px"})
    assert "--background 0.2" in reason and "--background-run" in reason


def test_log_mean_exp_and_waic_by_hand():
    values = np.array([[0.0, math.log(3.0)], [-1000.0, -1000.0]])
    # log((1 + 3) / 2) = log 2; equal members: the common value, no underflow at -1000.
    assert np.allclose(log_mean_exp(values), [math.log(2.0), -1000.0])
    members = np.array([[-10.0, -12.0, -14.0], [-5.0, -5.0, -5.0]])
    # mean -12, variance (4 + 0 + 4) / 3 = 8/3 -> -12 - 8/3; identical members: no penalty.
    assert np.allclose(waic(members), [-12.0 - 8.0 / 3.0, -5.0])


def test_ensemble_scores_from_joined_members():
    own = frame([-1000.0, -900.0])
    others = [frame([-1002.0, -700.0]), frame([-998.0, -1100.0])]
    joined = join_members(own, [own, *others])
    assert member_columns(joined.columns) == ["member_log_px_0", "member_log_px_1", "member_log_px_2"]
    log_px = np.array([[-1000.0, -1002.0, -998.0], [-900.0, -700.0, -1100.0]])
    expected = [-(np.log(np.exp(row - row.max()).mean()) + row.max()) / (D * math.log(2)) for row in log_px]
    assert np.allclose(EnsembleLikelihood().score(joined), expected)
    # Image 1: the same mean log p as image 0 would have, but the members disagree: WAIC flags it.
    assert np.allclose(WAIC().score(joined), [1000.0 + 8 / 3, 900.0 + 80000.0 / 3])
    assert ood_metrics(WAIC().score(joined)[:1], WAIC().score(joined)[1:]).auroc == 1.0


def test_an_ensemble_needs_two_members():
    one = join_members(frame([-1.0]), [frame([-1.0])])
    reason = EnsembleLikelihood().unusable("glow", set(one.columns))
    assert reason.startswith("ensemble_likelihood needs an ensemble") and "--member-run" in reason
    assert WAIC().unusable("glow", set(join_members(frame([-1.0]), [frame([-1.0])] * 2).columns)) is None


def test_regret_score_is_the_statistic_and_only_for_the_vae():
    stats = frame([-1.0, -2.0], regret=[0.0, 3.5])
    assert np.array_equal(LikelihoodRegret().score(stats), [0.0, 3.5])
    assert LikelihoodRegret().unusable("glow", set(stats.columns)) == "likelihood_regret applies to vae, not glow"
    assert LikelihoodRegret().extra_statistics == ("regret",)
