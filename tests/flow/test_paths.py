"""The linear path, its velocity target, time sampling and the loss, checked against finite differences,
least squares on the analytic Gaussian case and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffvae.errors import DiffvaeError
from diffvae.flow import paths


def test_interpolant_ends_at_data_and_noise_and_moves_at_the_target_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    assert torch.equal(paths.interpolate(x0, noise, torch.zeros(4, dtype=torch.float64)), x0)
    assert torch.equal(paths.interpolate(x0, noise, torch.ones(4, dtype=torch.float64)), noise)
    t, h = torch.rand(4, generator=g, dtype=torch.float64) * 0.8 + 0.1, 1e-6
    finite_difference = (paths.interpolate(x0, noise, t + h) - paths.interpolate(x0, noise, t - h)) / (2 * h)
    torch.testing.assert_close(finite_difference, paths.velocity_target(x0, noise), rtol=1e-7, atol=1e-7)
    x_t, v = paths.interpolate(x0, noise, t), paths.velocity_target(x0, noise)
    torch.testing.assert_close(paths.predict_x0(x_t, t, v), x0)
    torch.testing.assert_close(paths.predict_noise(x_t, t, v), noise)


@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_least_squares_on_the_target_recovers_the_analytic_marginal_velocity(gaussian, t):
    """The loss's minimiser is E[ε − x₀ | x_t]; for Gaussian data it is affine in x_t, so per-dimension least
    squares of the target on x_t must find the analytic slope and intercept of the conftest's velocity."""
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0, noise = gaussian.sample(n, g), torch.randn(n, 3, generator=g, dtype=torch.float64)
    times = torch.full((n,), t, dtype=torch.float64)
    x_t, target = paths.interpolate(x0, noise, times), paths.velocity_target(x0, noise)
    for d in range(3):
        design = np.stack([x_t[:, d].numpy(), np.ones(n)], axis=1)
        slope, intercept = np.linalg.lstsq(design, target[:, d].numpy(), rcond=None)[0]
        at_zero = gaussian.velocity(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([t]))[0, d]
        at_one = gaussian.velocity(torch.ones(1, 3, dtype=torch.float64), torch.tensor([t]))[0, d]
        assert slope == pytest.approx(float(at_one - at_zero), abs=0.02)
        assert intercept == pytest.approx(float(at_zero), abs=0.02)


def test_the_loss_is_the_mean_squared_error_of_the_target_and_smallest_at_the_marginal_velocity(gaussian):
    g = torch.Generator().manual_seed(2)
    n = 50_000
    x0, noise = gaussian.sample(n, g), torch.randn(n, 3, generator=g, dtype=torch.float64)
    t = paths.sample_times(n, "uniform", generator=g).double()
    x_t = paths.interpolate(x0, noise, t)
    v = gaussian.velocity(x_t, t)
    loss = paths.flow_matching_loss(v, x0, noise)
    torch.testing.assert_close(loss, ((v - noise + x0) ** 2).mean(1))
    for shift in (0.1, -0.1):
        assert paths.flow_matching_loss(v + shift, x0, noise).mean() > loss.mean()


def test_uniform_and_logit_normal_times_follow_their_laws():
    g = torch.Generator().manual_seed(3)
    uniform = paths.sample_times(20_000, "uniform", generator=g).double().numpy()
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    mean, std = 0.3, 0.8
    logit_normal = paths.sample_times(20_000, "logit_normal", mean, std, generator=g).double().numpy()
    assert ((logit_normal > 0) & (logit_normal < 1)).all()
    assert stats.kstest(np.log(logit_normal / (1 - logit_normal)), stats.norm(mean, std).cdf).pvalue > 1e-3
    mass, _ = integrate.quad(lambda s: float(paths.logit_normal_density(torch.tensor(s, dtype=torch.float64), mean, std)), 0, 1)
    assert mass == pytest.approx(1.0, abs=1e-6)
    histogram, edges = np.histogram(logit_normal, bins=10, range=(0, 1), density=True)
    expected = [integrate.quad(lambda s: float(paths.logit_normal_density(torch.tensor(s, dtype=torch.float64), mean, std)), a, b)[0] / (b - a)
                for a, b in zip(edges[:-1], edges[1:])]
    np.testing.assert_allclose(histogram, expected, rtol=0.1, atol=0.02)


def test_time_sampling_is_reproducible_with_a_generator_and_refuses_bad_settings():
    a = paths.sample_times(8, generator=torch.Generator().manual_seed(4))
    b = paths.sample_times(8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    for name, mean, std in [("beta", 0.0, 1.0), ("logit_normal", 0.0, 0.0), ("logit_normal", float("nan"), 1.0)]:
        with pytest.raises(DiffvaeError):
            paths.sample_times(4, name, mean, std)
