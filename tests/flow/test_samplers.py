"""Flow sampling and inversion with the analytic velocity of Gaussian and Gaussian-mixture data: the samples
follow the target distribution, errors shrink with steps at each solver's order, inversion round-trips."""

from __future__ import annotations

import math

import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.flow import samplers


def test_heun_samples_reproduce_a_gaussian_and_more_steps_shrink_the_error(gaussian):
    g = torch.Generator().manual_seed(0)
    n = 20_000
    noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x0 = samplers.generate(gaussian.velocity, noise, "heun", 30)
    standard_error = (gaussian.var / n).sqrt()
    assert bool(((x0.mean(0) - gaussian.mean).abs() < 4 * standard_error).all())
    assert bool(((x0.var(0) / gaussian.var - 1).abs() < 4 * math.sqrt(2 / n)).all())
    exact = gaussian.mean + gaussian.var.sqrt() * noise  # the exact flow maps ε to x₀ = μ + s ε
    errors = [float((samplers.generate(gaussian.velocity, noise[:100], "heun", steps) - exact[:100]).abs().max())
              for steps in (4, 8, 16)]
    assert errors[0] > errors[1] > errors[2]


def test_heun_samples_reproduce_a_two_dimensional_gaussian_mixture(mixture):
    g = torch.Generator().manual_seed(1)
    n = 20_000
    x0 = samplers.sample(mixture.velocity, (n, 2), "heun", 60, generator=g, dtype=torch.float64)
    mean, cov = mixture.moments()
    assert bool(((x0.mean(0) - mean).abs() < 4 * (cov.diagonal() / n).sqrt()).all())
    torch.testing.assert_close(torch.cov(x0.T), cov, atol=0.08, rtol=0.05)
    nearest = ((x0.unsqueeze(1) - mixture.means.unsqueeze(0)) ** 2).sum(-1).argmin(1)
    shares = torch.bincount(nearest, minlength=3).double() / n
    assert bool(((shares - mixture.weights).abs() < 4 * (mixture.weights * (1 - mixture.weights) / n).sqrt() + 0.01).all())


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_generation_converges_at_the_solver_order(gaussian, sampler, order):
    """Euler's error halves and Heun's quarters when the steps double (midpoint: tests/flow/test_ode.py;
    on this path its second-order error term happens to vanish)."""
    noise = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = gaussian.mean + gaussian.var.sqrt() * noise
    errors = [float((samplers.generate(gaussian.velocity, noise, sampler, steps) - exact).abs().max()) for steps in (40, 80)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.3)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_inversion_then_generation_returns_the_input(mixture, sampler):
    g = torch.Generator().manual_seed(3)
    x0 = samplers.sample(mixture.velocity, (200, 2), "rk4", 50, generator=g, dtype=torch.float64)
    errors = []
    for steps in (25, 100):
        x1 = samplers.invert(mixture.velocity, x0, sampler, steps)
        errors.append(float((samplers.generate(mixture.velocity, x1, sampler, steps) - x0).abs().max()))
    assert errors[1] < errors[0]
    assert errors[1] < {"euler": 0.2, "heun": 1e-3}[sampler]  # max over 200 points (Euler: first order)
    x1 = samplers.invert(mixture.velocity, x0, "rk4", 100)
    assert abs(float(x1.mean())) < 0.2 and abs(float(x1.std()) - 1) < 0.15  # the latent is the N(0, I) prior


def test_sample_is_reproducible_counts_evaluations_and_refuses_bad_requests(gaussian):
    a = samplers.sample(gaussian.velocity, (4, 3), "euler", 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    b = samplers.sample(gaussian.velocity, (4, 3), "euler", 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(a, b)
    assert samplers.nfe("euler", 10) == 10 and samplers.nfe("heun", 10) == 20 and samplers.nfe("rk4", 10) == 40
    with pytest.raises(DiffvaeError):
        samplers.sample(gaussian.velocity, (4, 3), "dopri", 5)
    with pytest.raises(DiffvaeError):
        samplers.sample(gaussian.velocity, (4, 3), "heun", 0)
    with pytest.raises(DiffvaeError):
        samplers.sample(gaussian.velocity, (4, 3), "heun", 5, noise=torch.zeros(2, 3))
