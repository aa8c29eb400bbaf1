"""What each score costs (runner/costs.py): the statistics it reads, measured where they were computed and
kept with them, times the networks that score each image. Hand-made costs first, whose sums are known; then
`evaluate` on a real (tiny, untrained) run: every row has its cost, a score reading more statistics costs
more, and the figure survives the statistics cache."""

from __future__ import annotations

import pandas as pd
import pytest
from fake_runs import fake_run

from oodbench.config import EvalConfig
from oodbench.runner import EvalRequest, evaluate
from oodbench.runner.costs import networks, score_cost
from oodbench.scores.complexity import InputComplexity
from oodbench.scores.ensemble import EnsembleLikelihood
from oodbench.scores.likelihood import Likelihood
from oodbench.scores.likelihood_ratio import LikelihoodRatio
from oodbench.scores.regret import LikelihoodRegret

# seconds per image of each statistic, as runner/statistics.py records them
COMPARED = pd.DataFrame({
    "bpd": [1.0, 2.0], "png_bpd": [3.0, 3.0], "background_bpd": [1.0, 1.0],
    "member_log_px_0": [0.0, 0.0], "member_log_px_1": [0.0, 0.0], "member_log_px_2": [0.0, 0.0],
    "seconds:likelihood": [0.002, 0.002], "machine:likelihood": ["cpu A", "cpu A"],
    "seconds:png": [0.0005, 0.0005], "machine:png": ["cpu B", "cpu B"],
    "seconds:regret": [0.04, 0.04], "machine:regret": ["cpu A", "cpu A"],
})
PASSES = {"likelihood": "1 forward", "png": "PNG encoding", "regret": "20 x (forward + backward)"}


@pytest.mark.parametrize("score, seconds, n, passes", [
    (Likelihood(), 2.0, 1, "1 forward"),
    (InputComplexity("png"), 2.5, 1, "1 forward + PNG encoding"),
    (LikelihoodRatio(), 4.0, 2, "2 x (1 forward)"),  # the run's network and the background model's
    (EnsembleLikelihood(), 6.0, 3, "3 x (1 forward)"),  # three members, the run among them
    (LikelihoodRegret(), 42.0, 1, "1 forward + 20 x (forward + backward)"),
])
def test_a_score_costs_the_statistics_it_reads_times_its_networks(score, seconds, n, passes):
    cost = score_cost(score, COMPARED, PASSES)
    assert cost["cost_seconds_per_1000"] == pytest.approx(seconds)
    assert cost["cost_networks"] == n == networks(score, set(COMPARED.columns))
    assert cost["cost_passes"] == passes
    assert cost["cost_machine"].startswith("cpu A")


def test_statistics_cached_before_costs_were_measured_cost_nothing_known():
    old = COMPARED.drop(columns=["seconds:likelihood"])
    assert score_cost(Likelihood(), old, PASSES)["cost_seconds_per_1000"] is None


@pytest.mark.slow
def test_every_evaluated_row_has_its_measured_cost(tmp_path, staged_root, one_thread):
    run = fake_run(tmp_path / "run", staged_root)
    request = EvalRequest(run=run, pair="fashionmnist:mnist", data_root=str(staged_root), quiet=True,
                          eval=EvalConfig(limit=40, train_sample=20, scores=("likelihood", "input_complexity")))
    rows = {(r["score"], r["score_params"]): r for r in evaluate(request).rows}
    likelihood = rows[("likelihood", "")]
    png = next(r for (score, params), r in rows.items() if score == "input_complexity" and "png" in params)
    assert likelihood["cost_seconds_per_1000"] > 0 and likelihood["cost_networks"] == 1
    assert png["cost_seconds_per_1000"] > likelihood["cost_seconds_per_1000"]  # the likelihood and the encoding
    assert "thread" in likelihood["cost_machine"]
    assert likelihood["cost_passes"] == "1 forward" and png["cost_passes"] == "1 forward + PNG encoding"
    again = {(r["score"], r["score_params"]): r for r in evaluate(request).rows}  # from the statistics cache
    assert again[("likelihood", "")]["cost_seconds_per_1000"] == likelihood["cost_seconds_per_1000"]


def test_the_vae_says_what_its_bound_and_refits_cost():
    from oodbench.models import build_model, model_config

    vae = build_model("vae", model_config("vae", {"base_channels": 4, "latent_dim": 3, "iw_samples": 16}))
    assert vae.statistic_passes("likelihood", {}) == "1 encoder + 16 decoder forward"
    assert vae.statistic_passes("regret", {"regret_steps": 20, "regret_lr": 0.1}) == "20 x (decoder forward + backward)"
