"""The local intrinsic dimension of a flow (analysis/lid.py, Kamkari et al. 2024) against references that do not
share its code: linear flows whose Jacobian has singular values chosen here (a known rank), a hand-computed 2-d
case, the LIDL rate as a finite difference of an explicit Gaussian log-density, and, for Glow, the change of
variables (its Jacobian's log-determinant must be log N(eps) - log p(y), which fails if the priors' scales are
left out of the generative map)."""

from __future__ import annotations

import math

import pytest
import torch

from oodbench.analysis.lid import flow_lid, generative_jacobian, jtj_spectrum, lidl_lid, threshold_lid
from oodbench.models.glow import Glow
from oodbench.models.glow.config import GlowConfig
from oodbench.models.glow.flow import lid_subsample


def linear_flow(singular_values: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, b) of g(eps) = A eps + b with A = U diag(s) V^T, U and V random rotations."""
    generator = torch.Generator().manual_seed(seed)
    d = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    a = u @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ v.T
    return a, torch.randn(d, generator=generator, dtype=torch.float64)


def test_a_flow_of_known_rank_has_that_lid_by_both_estimators():
    # 3 directions stretched (singular values 0.5-2), 5 squeezed to 1e-4: LID 3 at any scale e^delta in between
    a, b = linear_flow([2.0, 1.0, 0.5] + [1e-4] * 5)
    eps = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jacobian = generative_jacobian(lambda e: e @ a.T + b, eps[0], chunk=3)
    assert torch.allclose(jacobian, a, atol=1e-12)  # chunks of 3 columns reassembled in order
    found = flow_lid(lambda e: e @ a.T + b, eps, delta=math.log(1e-2))
    assert found["lid"].tolist() == [3.0] * 4
    # the smooth LIDL count: sum lambda / (lambda + 1e-4) = 3 - O(1e-4 / 0.25) + 5 * O(1e-8 / 1e-4), plus the
    # latent term, of the same order for |eps| ~ 1
    assert torch.allclose(found["lid_lidl"], torch.full((4,), 3.0, dtype=torch.float64), atol=0.05)
    # at a scale below every singular value all 8 count; above every one, none
    values, _ = jtj_spectrum(a)
    assert threshold_lid(values, math.log(1e-5)) == 8 and threshold_lid(values, math.log(3.0)) == 0


def test_a_two_dimensional_case_by_hand():
    # A = diag(3, 0.5): J^T J has eigenvalues 9 and 0.25 along the axes; delta = 0, var = e^0 = 1
    a = torch.diag(torch.tensor([3.0, 0.5], dtype=torch.float64))
    values, vectors = jtj_spectrum(generative_jacobian(lambda e: e @ a.T, torch.zeros(2, dtype=torch.float64)))
    assert torch.allclose(values, torch.tensor([0.25, 9.0], dtype=torch.float64))
    assert threshold_lid(values, 0.0) == 1  # only sigma = 3 is above e^0
    # LIDL at eps0 = (1, 2): 2 + 1 * [-(1/10 + 1/1.25) + 9 * 1^2 / 10^2 + 0.25 * 2^2 / 1.25^2] = 2 - 0.9 + 0.73
    eps0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert lidl_lid(values, vectors, eps0, 0.0).item() == pytest.approx(1.83, abs=1e-12)
    # strictly above, as the authors count: a singular value equal to e^delta does not
    assert threshold_lid(torch.tensor([1.0, 4.0], dtype=torch.float64), 0.0) == 1


@pytest.mark.parametrize("delta", [-2.0, 0.3])
def test_the_lidl_rate_is_the_derivative_of_the_linearised_smoothed_log_density(delta):
    # rho_delta(y0) = N(y0; y0 - J eps0, J J^T + e^(2 delta) I); LID = D + d/d delta log rho_delta(y0), by central
    # differences of torch's own Gaussian log-density, independent of the eigendecomposition
    a, _ = linear_flow([1.5, 0.7, 0.2, 0.05], seed=3)
    eps0 = torch.tensor([0.3, -1.2, 0.8, 2.0], dtype=torch.float64)

    def log_rho(d: float) -> float:
        covariance = a @ a.T + math.exp(2 * d) * torch.eye(4, dtype=torch.float64)
        gaussian = torch.distributions.MultivariateNormal(-a @ eps0, covariance_matrix=covariance)
        return gaussian.log_prob(torch.zeros(4, dtype=torch.float64)).item()

    h = 1e-5
    reference = 4 + (log_rho(delta + h) - log_rho(delta - h)) / (2 * h)
    values, vectors = jtj_spectrum(a)
    assert lidl_lid(values, vectors, eps0, delta).item() == pytest.approx(reference, abs=1e-6)


def tiny_glow(seed: int = 0, coupling: str = "affine") -> tuple[Glow, torch.Tensor]:
    """A 1x8x8 Glow (D = 64) with actnorm initialised and every prior's mean and scale made non-trivial (a fresh
    Glow's priors are N(0, I), which would hide a generative map that forgets them); and 3 images y."""
    torch.manual_seed(seed)
    glow = Glow(GlowConfig(in_channels=1, levels=2, steps=1, hidden_channels=8, coupling=coupling)).eval()
    y = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        glow.flow_parts(y)  # actnorm's data-dependent initialisation
        for level in glow.levels:
            if level.split is not None:
                for parameter in level.split.prior.parameters():
                    parameter.normal_(0, 0.1)
        glow.top_prior.mean.normal_(0, 0.3)
        glow.top_prior.log_scale.normal_(0, 0.3)
    return glow, y


@pytest.mark.parametrize("coupling", ["affine", "additive"])  # glow, cv-glow
def test_glows_generative_map_inverts_to_noise_and_its_jacobian_obeys_the_change_of_variables(coupling):
    glow, y = tiny_glow(coupling=coupling)
    with torch.no_grad():  # as in the evaluation's predict loop: forward mode still works
        eps = glow.to_noise(y)
        assert eps.shape == (3, 64)
        assert torch.allclose(glow.from_noise(eps, (1, 8, 8)), y, atol=1e-5)
        parts = glow.flow_parts(y)
        for i in range(3):
            jacobian = generative_jacobian(lambda e: glow.from_noise(e, (1, 8, 8)), eps[i], chunk=20)
            values, _ = jtj_spectrum(jacobian)
            log_det = 0.5 * values.log().sum().item()  # log |det J| = sum log sigma_i
            log_noise = (-0.5 * eps[i].double() ** 2 - 0.5 * math.log(2 * math.pi)).sum().item()
            # log p(y) = log N(eps) - log |det dg/deps|
            assert log_det == pytest.approx(log_noise - (parts["log_pz"][i] + parts["logdet"][i]).item(), abs=2e-3)


def test_glow_gives_lid_on_a_subsample_that_does_not_depend_on_the_batch():
    glow, _ = tiny_glow()
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    noise = torch.rand(6, 1, 8, 8)
    noise[:, 0, 0, 0] = torch.tensor([0.1, 0.9, 0.3, 0.6, 0.05, 0.45])  # the draw: images 0, 2, 4, 5 below 0.5
    settings = {"lid_fraction": 0.5, "lid_delta": -2.0}
    with torch.no_grad():
        whole = glow.extra_statistic("lid", x, noise, settings)
        halves = [glow.extra_statistic("lid", x[part], noise[part], settings) for part in (slice(0, 3), slice(3, 6))]
        off = glow.extra_statistic("lid", x, noise, {"lid_fraction": None, "lid_delta": -2.0})
    assert torch.isfinite(whole["lid"]).tolist() == [True, False, True, False, True, True]
    for key in ("lid", "lid_lidl"):
        assert torch.equal(torch.cat([half[key] for half in halves]).nan_to_num(-1), whole[key].nan_to_num(-1))
        assert torch.isnan(off[key]).all()
    assert whole["lid"].dtype == torch.float32 and whole["lid"][0] <= 64
    assert lid_subsample(None, 4, 0.1).all() and not lid_subsample(noise, 6, None).any()
