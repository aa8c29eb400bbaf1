"""The diffusion OOD scores and their statistics (models/diffusion/ood_statistics.py, scores/diffpath.py,
scores/msma.py) against independent references:

- a model whose data are Gaussian, N(0, s^2 I) on [-1, 1] pixels, with its optimal noise prediction
  eps(z, t) = sigma_t z / (alpha_t^2 s^2 + sigma_t^2). Then every DDIM step scales z by a number,
  z_{i+1} = z_i (alpha_{i+1} alpha_i s^2 + sigma_{i+1} sigma_i) / (alpha_i^2 s^2 + sigma_i^2), so the path's
  noise predictions are eps_i = c_i x with scalars c_i (DiffPath's statistics follow as sums of powers of x);
  with many steps the path tends to the probability-flow ODE's, z_t = x r_t / r_0 with r_t^2 = alpha_t^2 s^2 +
  sigma_t^2; and the score norm at the clean image at VE noise rho is rho ||x|| / (s^2 + rho^2), whatever the
  schedule (MSMA);
- a clipping case worked by hand; the statistics of a small convolutional model per image equal in any batch;
- the densities against scipy's (a Gaussian kernel sum; one full-covariance Gaussian), and the scores on
  constructed clouds: a point far from the fit set scores higher, a shifted cloud is told apart.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from oodbench.metrics import ood_metrics
from oodbench.models.diffusion.ood_statistics import (
    ddim_path_eps,
    diffpath_statistics,
    msma_statistics,
    times_at_noise,
)
from oodbench.schema import DIFFPATH_STATISTICS, diffpath_column, msma_column
from oodbench.scores import SCORES, score_variants
from oodbench.scores.densities import gaussian_mixture
from oodbench.scores.diffpath import KDE_BANDWIDTH, DiffPath
from oodbench.scores.dose import summary_statistics
from oodbench.scores.msma import MSMA


class GaussianData(torch.nn.Module):
    """The optimal denoiser of data N(0, s^2 I) in [-1, 1] pixels; schedule alpha = cos, sigma = sin of
    pi/2 (start + (end - start) t) (`start`, `end` in [0, 1])."""

    def __init__(self, s: float, start: float = 0.0, end: float = 1.0) -> None:
        super().__init__()
        self.s, self.start, self.end = s, start, end

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) / 127.5 - 1.0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = math.pi / 2 * (self.start + (self.end - self.start) * t)
        return torch.cos(angle), torch.sin(angle)

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in self.alpha_sigma(t))
        return sigma * z / (alpha**2 * self.s**2 + sigma**2)


class VDMGaussianData(GaussianData):
    """The same data under a variational-diffusion-model schedule: alpha^2 = sigmoid(-gamma), gamma linear in t
    from -13.3 to 5 (Kingma et al. 2021's defaults)."""

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gamma = -13.3 + 18.3 * t
        return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def schedule(model: GaussianData, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    angle = np.pi / 2 * (model.start + (model.end - model.start) * t)
    return np.cos(angle), np.sin(angle)


def images(n: int, seed: int = 0, low: int = 64, high: int = 192, shape: tuple[int, ...] = (2, 3, 3)) -> torch.Tensor:
    return torch.randint(low, high, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gaussian_path_factors(model: GaussianData, steps: int) -> np.ndarray:
    """c_i with eps_i = c_i x along the N-step DDIM path of the Gaussian model (module docstring)."""
    alpha, sigma = schedule(model, np.arange(steps) / steps)
    s2 = model.s**2
    factors, scale = [], 1.0  # z_i = scale x
    for i in range(steps):
        r2 = alpha[i] ** 2 * s2 + sigma[i] ** 2
        factors.append(sigma[i] * scale / r2)
        if i + 1 < steps:
            scale *= (alpha[i + 1] * alpha[i] * s2 + sigma[i + 1] * sigma[i]) / r2
    return np.array(factors)


def test_the_ddim_path_of_gaussian_data_is_the_closed_form_one():
    model, steps = GaussianData(s=0.5), 10
    x = images(4)
    scaled = model.scaled(x)
    path = ddim_path_eps(model, scaled, steps)
    factors = gaussian_path_factors(model, steps)
    want = torch.as_tensor(factors).reshape(-1, 1, 1, 1, 1) * scaled
    assert path.shape == (steps, *x.shape)
    torch.testing.assert_close(path, want, rtol=1e-10, atol=1e-12)

    # DiffPath's six sums are sums of powers of x weighted by powers of c_i and of N (c_{i+1} - c_i)
    flat = scaled.flatten(1).numpy()
    rates = np.diff(factors) * steps
    want_stats = {"eps_sum": factors.sum() * flat.sum(1), "eps_sum_sq": (factors**2).sum() * (flat**2).sum(1),
                  "eps_sum_cb": (factors**3).sum() * (flat**3).sum(1), "deps_dt": rates.sum() * flat.sum(1),
                  "deps_dt_sq": (rates**2).sum() * (flat**2).sum(1), "deps_dt_cb": (rates**3).sum() * (flat**3).sum(1)}
    got = diffpath_statistics(model, x, {"diffpath_steps": steps})
    assert sorted(got) == sorted(diffpath_column(name) for name in DIFFPATH_STATISTICS)
    for name, value in want_stats.items():
        np.testing.assert_allclose(got[diffpath_column(name)].numpy(), value, rtol=1e-9, err_msg=name)


def test_with_many_steps_the_path_is_the_probability_flow_ode():
    # z_t = x r_t / r_0 exactly for Gaussian data, so eps_t = sigma_t x / (r_t r_0): the DDIM path converges to it
    model, steps = GaussianData(s=0.3), 2000
    x = model.scaled(images(2, seed=1))
    path = ddim_path_eps(model, x, steps)
    t = np.arange(steps) / steps
    alpha, sigma = schedule(model, t)
    r = np.sqrt(alpha**2 * model.s**2 + sigma**2)
    want = torch.as_tensor(sigma / (r * r[0])).reshape(-1, 1, 1, 1, 1) * x
    assert (path - want).abs().max() < 2e-3 * want.abs().max()
    # ... which 10 steps do not follow: the check can tell a path from another
    coarse = ddim_path_eps(model, x, 10)
    assert (coarse[-1] - want[-200]).abs().max() > 0.05 * want.abs().max()


class ConstantEps(GaussianData):
    """Predicts eps = -3 everywhere; sigma > 0 at t = 0 (start 0.1), so the predicted image overshoots 1."""

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, -3.0)


def test_the_predicted_image_is_clipped_and_eps_rederived_as_their_clip_denoised_does():
    model = ConstantEps(s=1.0, start=0.1, end=0.9)
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)  # 1.0 on [-1, 1]
    alpha0, sigma0 = schedule(model, np.array(0.0))
    # step 0: x0 = (1 + 3 sigma_0) / alpha_0 > 1 -> 1, eps re-derived (1 - alpha_0) / sigma_0; step 1 overshoots
    # again (x0 = 1 + sigma_1 (eps_0 + 3) / alpha_1) and re-derives the same eps: no rate of change
    eps0 = (1 - alpha0) / sigma0
    path = ddim_path_eps(model, model.scaled(x), 2)
    torch.testing.assert_close(path, torch.full_like(path, float(eps0)))
    stats = diffpath_statistics(model, x, {"diffpath_steps": 2})
    assert float(stats["diffpath:eps_sum"][0]) == pytest.approx(8 * eps0)
    assert float(stats["diffpath:deps_dt_sq"][0]) == pytest.approx(0.0, abs=1e-12)
    unclipped = ddim_path_eps(model, model.scaled(x), 2, clip=False)
    torch.testing.assert_close(unclipped, torch.full_like(unclipped, -3.0))


@pytest.mark.parametrize("model", [GaussianData(s=0.4), VDMGaussianData(s=0.4)], ids=["cosine", "vdm"])
def test_msma_norms_are_the_closed_form_score_norms_at_every_level(model):
    levels = 10
    x = images(3, seed=2, low=0, high=256)
    got = msma_statistics(model, x, {"msma_levels": levels})
    assert list(got) == [msma_column(level) for level in range(levels)]
    # their levels: 1 down to 0.01, geometric, on [0, 1] pixels; twice that on [-1, 1]
    rho = 2 * 10.0 ** -np.linspace(0, 2, levels)
    norm_x = model.scaled(x).flatten(1).norm(dim=1).numpy()
    for level in range(levels):
        want = rho[level] * norm_x / (model.s**2 + rho[level] ** 2)
        np.testing.assert_allclose(got[msma_column(level)].numpy(), want, rtol=1e-6, err_msg=str(level))


def test_msma_refuses_levels_the_schedule_does_not_reach():
    short = GaussianData(s=0.4, start=0.0, end=0.5)  # sigma / alpha reaches only tan(pi / 4) = 1 < 2
    with pytest.raises(ValueError, match="schedule spans"):
        msma_statistics(short, images(1), {"msma_levels": 3})
    t = times_at_noise(GaussianData(s=0.4), torch.tensor([0.02, 1.0, 2.0], dtype=torch.float64))
    np.testing.assert_allclose(t.numpy(), np.arctan([0.02, 1.0, 2.0]) / (np.pi / 2), rtol=1e-12)


class SmallConv(torch.nn.Module):
    """A denoiser with weights: a convolution across channels and pixels, modulated by t."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 127.5 - 1.0

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cos(math.pi / 2 * t), torch.sin(math.pi / 2 * t)

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(z) * (1 + t.reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("statistic", [diffpath_statistics, msma_statistics])
def test_an_images_statistics_do_not_depend_on_its_batch(statistic):
    model, x = SmallConv(), images(6, seed=3, low=0, high=256, shape=(3, 4, 4))
    settings = {"diffpath_steps": 4, "msma_levels": 3}
    together = statistic(model, x, settings)
    alone = [statistic(model, x[i:i + 1], settings) for i in range(len(x))]
    for name, values in together.items():
        torch.testing.assert_close(values, torch.cat([one[name] for one in alone]), rtol=1e-5, atol=1e-5)
        assert values.shape == (6,) and torch.isfinite(values).all()
    again = statistic(model, x, settings)  # no randomness: the same again
    assert all(torch.equal(again[name], values) for name, values in together.items())


# --- the scores -------------------------------------------------------------------------------------------------

def diffpath_frame(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({diffpath_column(name): values[:, i] for i, name in enumerate(DIFFPATH_STATISTICS)})


def msma_frame(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({msma_column(level): values[:, level] for level in range(values.shape[1])})


def test_diffpath_1d_is_minus_the_log_of_a_gaussian_kernel_sum():
    fit = pd.DataFrame({diffpath_column("deps_dt_sq"): np.array([100.0, 121.0, 144.0, 400.0])})  # roots 10, 11, 12, 20
    test = pd.DataFrame({diffpath_column("deps_dt_sq"): np.array([121.0, 225.0, 10_000.0])})  # roots 11, 15, 100
    scores = DiffPath(dims=1).fit(fit).score(test)
    roots = np.array([10.0, 11.0, 12.0, 20.0])
    want = [-np.log(norm.pdf(v, loc=roots, scale=KDE_BANDWIDTH).mean()) for v in (11.0, 15.0, 100.0)]
    np.testing.assert_allclose(scores, want, rtol=1e-10)
    assert scores[2] > scores[1] > scores[0]


def test_one_full_covariance_component_is_the_gaussian_fitted_to_the_standardised_features():
    rng = np.random.default_rng(0)
    cloud = rng.multivariate_normal([5.0, -2.0], [[4.0, 1.5], [1.5, 1.0]], size=400)
    density = gaussian_mixture(cloud, components=(1,), covariance_types=("full",))
    mean, std = cloud.mean(0), cloud.std(0)
    standard = (cloud - mean) / std
    reference = multivariate_normal(standard.mean(0), np.cov(standard.T, bias=True))
    points = np.array([[5.0, -2.0], [9.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(density.score_samples(points), reference.logpdf((points - mean) / std), rtol=1e-4)


def test_a_mixture_never_has_more_components_than_a_fold_has_images():
    cloud = np.random.default_rng(1).normal(size=(30, 3))  # 10 folds of 27 training images
    density = gaussian_mixture(cloud, components=(50, 100), covariance_types=("spherical",))
    assert density.named_steps["gmm"].n_components == 27
    with pytest.raises(ValueError, match="at least 10 fit images"):
        gaussian_mixture(cloud[:9], components=(1,), covariance_types=("full",))


@pytest.mark.parametrize("variant", score_variants(("diffpath", "msma")), ids=lambda v: v.label)
def test_a_far_point_and_a_shifted_cloud_score_as_more_ood(variant):
    rng = np.random.default_rng(4)
    width = 10 if variant.name == "msma" else 6
    frame = msma_frame if variant.name == "msma" else diffpath_frame
    centre = np.full(width, 50.0)  # positive: DiffPath-1D takes a root
    fit, inside = (frame(centre + rng.normal(size=(n, width)) * 3) for n in (200, 100))
    outside = frame(centre + 20 + rng.normal(size=(100, width)) * 3)
    fitted = variant.fit(fit)
    assert ood_metrics(fitted.score(inside), fitted.score(outside)).auroc > 0.95
    near_far = fitted.score(frame(np.stack([centre, centre + 40])))
    assert near_far[1] > near_far[0]
    again = variant.fit(fit).score(inside)  # seeded: the same fit gives the same scores
    np.testing.assert_array_equal(again, fitted.score(inside))


def test_the_scores_apply_to_diffusion_models_and_say_what_is_missing():
    assert [v.label for v in score_variants(("diffpath", "msma"))] == ["diffpath(dims=1)", "diffpath(dims=6)", "msma"]
    assert [v.short for v in SCORES.get("diffpath")] == ["DiffPath-1D", "DiffPath-6D"]
    for variant in score_variants(("diffpath", "msma")):
        assert variant.unusable("glow", {"bpd"}) == f"{variant.name} applies to diffusion, not glow"
        assert "when the score is asked for" in variant.unusable("diffusion", {"index", "log_px", "bpd"})
    assert DiffPath(dims=1).unusable("diffusion", {"bpd", "diffpath:deps_dt_sq"}) is None
    assert MSMA().unusable("diffusion", {"bpd", "msma:norm_00"}) is None
    with pytest.raises(ValueError, match="dims is 1"):
        DiffPath(dims=3)
    with pytest.raises(ValueError, match="fitted"):
        MSMA().score(msma_frame(np.ones((2, 3))))


def test_dose_leaves_the_diffusion_ood_statistics_out():
    columns = ["index", "log_px", "bpd", "band_0", diffpath_column("eps_sum"), msma_column(0), msma_column(1)]
    assert summary_statistics(columns) == ["bpd", "band_0"]
