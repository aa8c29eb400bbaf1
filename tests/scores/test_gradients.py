"""The per-image gradient statistic (models/gradients.py) and the three scores built on it
(scores/gradients.py), each against an independent reference:
- the statistic of every family against central finite differences of log p(x) in float64 (one image,
  every entry of the small layers), against a plain `.backward()` on that image alone (every layer, as
  the papers' code does it), and, on a Gaussian whose gradient is written by hand, against the formula;
- that an image's statistic is the same in any batch, through `predict_step` too, and the model is left as it was;
- the scores on hand-made statistics against hand computations (Fisher's method, empirical p-values, the
  per-layer Fisher, a Gaussian per layer), and their direction;
- one tiny trained Glow evaluated end to end with the three scores."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from oodbench.errors import OodbenchError
from oodbench.metrics import ood_metrics
from oodbench.models.base import LikelihoodModel
from oodbench.models.families import build_model, model_config
from oodbench.models.gradients import layers, per_image_gradients
from oodbench.schema import gradient_column, gradient_columns
from oodbench.scores import score_variants
from oodbench.scores.dose import summary_statistics
from oodbench.scores.gradients import FisherCombined, LayerGradients, ScoreStatistic, fisher_method, upper_tail

TINY = {"glow": {"levels": 2, "steps": 1, "hidden_channels": 4},
        "cv-glow": {"levels": 2, "steps": 1, "hidden_channels": 4},
        "pixelcnn": {"nr_resnet": 1, "nr_filters": 4, "nr_logistic_mix": 2},
        "vae": {"base_channels": 4, "latent_dim": 3, "iw_samples": 2}}
FAMILIES = tuple(TINY)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny(family: str) -> tuple[LikelihoodModel, torch.Tensor, torch.Tensor | None]:
    """A tiny float64 `family` model on 1x8x8 images, actnorm initialised and every weight moved off its
    initial value (Glow's zero-initialised convolutions would give zero gradients elsewhere), in eval mode;
    4 images and their evaluation noise."""
    torch.manual_seed(0)
    model = build_model(family, model_config(family, TINY[family], image_shape=(1, 8, 8))).double()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    index = torch.arange(4)
    with torch.no_grad():
        model.log_prob(x, model.eval_noise(x, index, 0))  # Glow: the data-dependent actnorm init, once
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    noise = model.eval_noise(x, index, 0)
    return model.eval(), x, None if noise is None else noise.double()


def _objective(model: LikelihoodModel, x: torch.Tensor, noise: torch.Tensor | None, i: int) -> torch.Tensor:
    return model.validation_log_prob(x[i:i + 1], None if noise is None else noise[i:i + 1]).sum()


@pytest.mark.parametrize("family", FAMILIES)
def test_squared_norms_match_finite_differences(family):
    """||d log p / d theta_l||^2 of one image against central differences over every entry of the layers
    of at most 40 entries (Glow: actnorm, LU factors, priors; PixelCNN++: weight-norm gains, biases; the
    VAE: batch-norm scales, biases), at most 12 layers a family."""
    model, x, noise = tiny(family)
    statistic = per_image_gradients(model, x, noise)
    i = 2
    checked = 0
    for name, parameter in layers(model):
        if parameter.numel() > 40 or checked == 12:
            continue
        squared = 0.0
        with torch.no_grad():
            for j in range(parameter.numel()):
                entry = np.unravel_index(j, tuple(parameter.shape))
                old = parameter[entry].item()
                step = 1e-5 * max(1.0, abs(old))
                parameter[entry] = old + step
                up = _objective(model, x, noise, i).item()
                parameter[entry] = old - step
                down = _objective(model, x, noise, i).item()
                parameter[entry] = old
                squared += ((up - down) / (2 * step)) ** 2
        got = statistic[gradient_column(name, parameter.numel())][i].item()
        assert got == pytest.approx(squared, rel=1e-3, abs=1e-9), name
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_matches_a_plain_backward_of_that_image_alone(family):
    """The papers' code: zero the grads, backward one image's log p, read p.grad per named parameter. Every
    layer has its column (named by parameter and size), and grad_norm is the whole gradient's norm."""
    model, x, noise = tiny(family)
    statistic = per_image_gradients(model, x, noise)
    assert set(statistic) == {*(gradient_column(n, p.numel()) for n, p in model.named_parameters()), "grad_norm"}
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            _objective(model, x, noise, i).backward()
        total = 0.0
        for name, parameter in model.named_parameters():
            want = 0.0 if parameter.grad is None else parameter.grad.pow(2).sum().item()
            total += want
            assert statistic[gradient_column(name, parameter.numel())][i].item() == pytest.approx(want, rel=1e-5, abs=1e-12)
        assert statistic["grad_norm"][i].item() == pytest.approx(math.sqrt(total), rel=1e-5)
    model.zero_grad(set_to_none=True)


class Gaussian(LikelihoodModel):
    """log p(x) = sum_i log N(x_i; mu, sigma^2) over an image's pixels, sigma = exp(log_sigma): the
    gradient by hand is d/dmu = sum (x_i - mu) / sigma^2, d/dlog_sigma = sum ((x_i - mu)^2 / sigma^2 - 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(100.0, dtype=torch.float64))
        self.log_sigma = torch.nn.Parameter(torch.tensor(math.log(60.0), dtype=torch.float64))

    def log_prob_parts(self, x, noise=None):
        y = x.double().flatten(1)
        sigma = self.log_sigma.exp()
        log_px = (-(y - self.mu) ** 2 / (2 * sigma**2) - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(dim=1)
        return {"log_px": log_px}


def test_a_gaussian_gets_its_gradient_by_hand_through_the_base_class():
    model = Gaussian().eval()
    x = torch.tensor([[[[0, 255], [100, 100]]], [[[10, 20], [30, 40]]]], dtype=torch.uint8)
    assert "gradients" in model.extra_statistics
    statistic = model.extra_statistic("gradients", x, None, {})
    y = x.double().flatten(1).numpy()
    d_mu = ((y - 100.0) / 60.0**2).sum(axis=1)
    d_log_sigma = ((y - 100.0) ** 2 / 60.0**2 - 1).sum(axis=1)
    assert np.allclose(statistic["grad_sq:mu[1]"].numpy(), d_mu**2, rtol=1e-6)
    assert np.allclose(statistic["grad_sq:log_sigma[1]"].numpy(), d_log_sigma**2, rtol=1e-6)
    assert np.allclose(statistic["grad_norm"].numpy(), np.sqrt(d_mu**2 + d_log_sigma**2), rtol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_images_gradient_does_not_depend_on_its_batch_and_the_model_is_untouched(family):
    model, x, noise = tiny(family)
    model = model.float()
    noise = None if noise is None else noise.float()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    whole = per_image_gradients(model, x, noise)
    order = torch.tensor([3, 1])  # image 3 first, with another companion
    part = per_image_gradients(model, x[order], None if noise is None else noise[order])
    alone = per_image_gradients(model, x[1:2], None if noise is None else noise[1:2])
    for column in whole:
        assert torch.allclose(part[column], whole[column][order], rtol=1e-6, atol=0), column
        assert torch.allclose(alone[column], whole[column][1:2], rtol=1e-6, atol=0), column
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # no actnorm re-initialised
    assert all(parameter.grad is None for parameter in model.parameters())
    with pytest.raises(OodbenchError, match="eval mode"):
        per_image_gradients(model.train(), x, noise)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_predict_step_computes_it_under_no_grad_with_the_index_seeded_noise(family):
    """What runner/statistics.py runs: `predict_step` with `statistic` set, inside Lightning's no_grad, in
    float32, on the noise drawn from each image's index; the same as the model's own, image by image."""
    from oodbench.models.module import LikelihoodModule

    torch.manual_seed(0)
    module = LikelihoodModule(family=family, model_settings=dict(TINY[family]), train_settings={}, noise_seed=3)
    module.model = tiny(family)[0].float()
    module.eval()
    module.statistic = "gradients"
    x, index = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8), torch.tensor([7, 2, 9])
    with torch.no_grad():
        out = module.predict_step((x, index), 0)
    assert torch.equal(out["index"], index)
    noise = module.model.eval_noise(x, index, 3)
    for i in range(3):
        want = per_image_gradients(module.model, x[i:i + 1], None if noise is None else noise[i:i + 1])
        for column, value in want.items():
            assert out[column][i].item() == pytest.approx(value.item(), rel=1e-5), column


def test_the_vae_differentiates_its_single_sample_elbo_on_the_first_draw():
    model, x, noise = tiny("vae")
    assert model.extra_statistics == ("regret", "gradients")
    statistic = model.extra_statistic("gradients", x, noise, {})
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model._elbo(x[:1], noise[:1, 0]).sum().backward()
    head = model.decoder.head.weight
    assert statistic[gradient_column("decoder.head.weight", head.numel())][0].item() == pytest.approx(
        head.grad.pow(2).sum().item(), rel=1e-5)
    model.zero_grad(set_to_none=True)


# ---- the scores, on hand-made statistics -------------------------------------------------------------

A, B = gradient_column("a.weight", 2), gradient_column("b.bias", 3)


def grads(a: list[float], b: list[float], log_px: list[float] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"index": np.arange(len(a)), A: a, B: b})
    frame["grad_norm"] = np.sqrt(frame[A] + frame[B])
    frame["log_px"] = log_px if log_px is not None else np.zeros(len(a))
    frame["bpd"] = -frame["log_px"]
    return frame


def test_columns_carry_the_layer_size_and_dose_leaves_them_out():
    assert gradient_columns(["index", A, "grad_norm", B, "grad_sq:odd"]) == {A: 2, B: 3}
    assert summary_statistics(["index", "log_px", "bpd", "log_pz", A, B, "grad_norm"]) == ["bpd", "log_pz"]


def test_empirical_p_values_and_fishers_method_by_hand():
    # The share of the reference strictly above each value: statsmodels' 1 - ECDF.
    assert upper_tail(np.array([4.0, 1.0, 3.0, 2.0]), np.array([0.0, 2.0, 2.5, 4.0, 9.0])).tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]
    got = fisher_method(np.array([0.5, 0.0]), np.array([0.25, 1.0]))
    want = [-2 * (math.log(0.5 + 1e-8) + math.log(0.25 + 1e-8)), -2 * (math.log(1e-8) + math.log(1 + 1e-8))]
    assert got == pytest.approx(want, rel=1e-12)


FIT = grads(a=[1.0, 3.0, 2.0, 2.0], b=[6.0, 3.0, 9.0, 6.0], log_px=[-10.0, -12.0, -11.0, -13.0])


def test_the_score_statistic_weighs_each_layer_by_its_fisher_information():
    test = grads(a=[2.0, 8.0], b=[6.0, 0.0])
    # F per entry: layer a: mean 2 over 2 entries = 1; layer b: mean 6 over 3 entries = 2.
    want = np.sqrt([2.0 / (1 + 1e-8) + 6.0 / (2 + 1e-8), 8.0 / (1 + 1e-8)])
    assert ScoreStatistic("layer").fit(FIT).score(test) == pytest.approx(want, rel=1e-12)
    assert ScoreStatistic("identity").fit(FIT).score(test) == pytest.approx(np.sqrt([8.0, 8.0]))
    with pytest.raises(ValueError, match="fitted"):
        ScoreStatistic("layer").score(test)
    with pytest.raises(ValueError, match="'layer' or 'identity'"):
        ScoreStatistic("diagonal")


def test_fishers_combination_of_the_typicality_and_score_tests_by_hand():
    fitted = FisherCombined().fit(FIT)
    # Fit set: mean log p = -11.5, T = 1.5, 0.5, 0.5, 1.5; S^2 = a/1 + b/2 = 4, 4.5, 6.5, 5.
    test = grads(a=[2.0, 1.0], b=[5.0, 20.0], log_px=[-11.0, -14.0])
    # Image 0: T = 0.5 (2 of 4 above: 0.5), S^2 = 4.5 (2 of 4 above: 0.5);
    # image 1: T = 2.5 (none above: 0), S^2 = 11 (none above: 0).
    p_typicality, p_score = fitted.p_values(test)
    assert p_typicality.tolist() == [0.5, 0.0] and p_score.tolist() == [0.5, 0.0]
    want = [-4 * math.log(0.5 + 1e-8), -4 * math.log(1e-8)]
    assert fitted.score(test) == pytest.approx(want, rel=1e-12)


def test_the_layer_density_is_a_gaussian_per_layer_on_log_squared_norms():
    fit = pd.concat([FIT, grads(a=[5.0], b=[6.0])], ignore_index=True)
    fit[gradient_column("constant", 4)] = 7.0  # the same for every fit image: left out (Dauncey's zero_keys)
    fitted = LayerGradients().fit(fit)
    assert fitted.layers == (A, B)
    test = grads(a=[2.0, 0.0], b=[4.0, 1e6])
    test[gradient_column("constant", 4)] = 1.0
    want = []
    for a, b in zip(test[A], test[B], strict=True):
        total = 0.0
        for values, value in ((fit[A], a), (fit[B], b)):
            logs = [math.log(v) for v in values]
            mu = sum(logs) / len(logs)
            sd = math.sqrt(sum((v - mu) ** 2 for v in logs) / (len(logs) - 1))
            z = (math.log(max(value, np.finfo(float).tiny)) - mu) / sd
            total += -0.5 * z * z - math.log(sd) - 0.5 * math.log(2 * math.pi)
        want.append(-total)
    got = fitted.score(test)
    assert np.all(np.isfinite(got)) and got == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        LayerGradients().fit(fit.iloc[:1])


def test_larger_or_odder_gradients_score_as_more_ood():
    rng = np.random.default_rng(0)

    def draw(n: int, scale: float, log_px_shift: float) -> pd.DataFrame:
        return grads(a=list(rng.chisquare(2, n) * scale), b=list(rng.chisquare(3, n) * scale),
                     log_px=list(rng.normal(-100 + log_px_shift, 1, n)))

    fit, inside, outside = draw(300, 1.0, 0), draw(200, 1.0, 0), draw(200, 30.0, 5)
    for variant in score_variants(("score_statistic", "fisher_combined", "layer_gradients")):
        fitted = variant.fit(fit)
        auroc = ood_metrics(fitted.score(inside), fitted.score(outside)).auroc
        assert auroc > 0.95, variant.label
        assert ood_metrics(fitted.score(outside), fitted.score(inside)).auroc < 0.05, variant.label


def test_without_the_statistic_the_scores_say_what_is_missing():
    for variant in score_variants(("score_statistic", "fisher_combined", "layer_gradients")):
        assert variant.extra_statistics == ("gradients",) and variant.families is None
        assert "per-image gradients" in variant.unusable("glow", {"index", "log_px", "bpd"})
        assert variant.unusable("pixelcnn", {"index", "log_px", "bpd", "grad_norm", A}) is None


@pytest.mark.slow
def test_a_tiny_trained_glow_is_evaluated_with_the_gradient_scores(tmp_path, staged_root):
    import oodbench

    run = oodbench.train(model="glow", dataset="fashionmnist", run_dir=tmp_path / "glow", data_root=str(staged_root),
                         epochs=1, limit_train=64, batch_size=32, val_size=24,
                         model_settings={"levels": 2, "steps": 1, "hidden_channels": 8})
    names = ["likelihood", "score_statistic", "fisher_combined", "layer_gradients"]
    rows = oodbench.evaluate(run, pair="fashionmnist:mnist", scores=names, data_root=str(staged_root), limit=30,
                             train_sample=10, batch_size=16)
    by_label = {(row["score"], row["score_params"]): row for row in rows}
    assert set(by_label) == {("likelihood", ""), ("score_statistic", "fisher=layer"), ("score_statistic", "fisher=identity"),
                             ("fisher_combined", ""), ("layer_gradients", "")}
    for row in rows:
        assert 0.0 <= row["auroc"] <= 1.0 and row["units_in"] == row["units_out"] == 30, row["score"]
        assert row["fit_set"] == "in_val", row["fit_set"]
    folder = run.path / "eval" / "fashionmnist_vs_mnist"
    scores = pd.read_csv(folder / "scores.csv")
    # The statistic is computed on the compared sets and the fit set only; in-train is left empty.
    layer = next(c for c in scores.columns if c.startswith("grad_sq:"))
    has = scores.groupby("set")[layer].apply(lambda s: s.notna().all()).to_dict()
    assert has == {"in_test": True, "out_test": True, "in_val": True, "in_train": False}
    assert scores.loc[scores["set"] == "in_test", "score:layer_gradients"].notna().all()
    # Cached on its own: a second evaluation scores nothing again.
    statistics = sorted(p.name for p in (run.path / "statistics").iterdir())
    assert any("-gradients-" in name for name in statistics)
    again = oodbench.evaluate(run, pair="fashionmnist:mnist", scores=names, data_root=str(staged_root), limit=30,
                              train_sample=10, batch_size=16)
    assert [row["auroc"] for row in again] == [row["auroc"] for row in rows]
    assert sorted(p.name for p in (run.path / "statistics").iterdir()) == statistics
