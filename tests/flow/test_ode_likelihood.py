"""The ODE likelihood (diffvae.ode_likelihood) against closed forms: Gaussian and Gaussian-mixture data
under their analytic flow velocity, Gaussian data under a diffusion schedule's probability-flow ODE, the
dequantization bound against the exact bin masses, and Hutchinson against the exact divergence."""

from __future__ import annotations

import math

import pytest
import torch

from diffvae.diffusion import samplers as diffusion_samplers
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.distributions import discretized_gaussian_log_likelihood
from diffvae.errors import DiffvaeError
from diffvae.ode import integrate
from diffvae import ode_likelihood as ol

GRID = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


def test_exact_divergence_is_the_trace_of_the_jacobian():
    weight = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = lambda z: torch.tanh(z @ weight) * z  # noqa: E731  (examples independent, non-diagonal Jacobian)
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    trace = ol.divergence_exact(f(z), z)[:, 0]
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(f, z[i:i + 1].detach())[0, :, 0, :]
        assert float(trace[i]) == pytest.approx(float(jacobian.trace()), rel=1e-10)


def test_gaussian_flow_likelihood_with_the_exact_divergence_matches_the_closed_form(gaussian):
    x = gaussian.sample(16, torch.Generator().manual_seed(2))
    out = ol.ode_log_likelihood(gaussian.velocity, x, GRID, solver="rk4", divergence="exact")
    torch.testing.assert_close(out["log_likelihood"], gaussian.log_density(x), atol=1e-6, rtol=1e-7)
    torch.testing.assert_close(out["z1"], gaussian.flow(x, 1.0), atol=1e-7, rtol=1e-7)  # the latent is the flow's endpoint


def test_gaussian_flow_likelihood_by_hutchinson_is_within_its_standard_error(gaussian):
    x = gaussian.sample(8, torch.Generator().manual_seed(3))
    out = ol.ode_log_likelihood(gaussian.velocity, x, GRID, solver="rk4", probes=64, probe="gaussian",
                                generator=torch.Generator().manual_seed(4))
    z = (out["log_likelihood"] - gaussian.log_density(x)) / out["stderr"]
    assert bool((out["stderr"] > 0).all()) and float(z.abs().max()) < 4.5
    rademacher = ol.ode_log_likelihood(gaussian.velocity, x, GRID, solver="rk4", probes=2,
                                       generator=torch.Generator().manual_seed(4))  # a diagonal Jacobian: exact
    torch.testing.assert_close(rademacher["log_likelihood"], gaussian.log_density(x), atol=1e-6, rtol=1e-7)


def _mixture_log_density(mixture, x):
    squared = ((x.unsqueeze(1) - mixture.means.unsqueeze(0)) ** 2).sum(-1)
    return torch.logsumexp(torch.log(mixture.weights) - squared / (2 * mixture.var) - math.log(2 * math.pi * mixture.var), dim=1)


def test_mixture_likelihood_matches_the_closed_form_and_hutchinson_agrees_within_error(mixture):
    x = torch.tensor([[-2.1, 0.2], [1.4, 0.8], [0.6, -1.7], [0.0, 0.0]], dtype=torch.float64)
    grid = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
    exact = ol.ode_log_likelihood(mixture.velocity, x, grid, solver="rk4", divergence="exact")
    torch.testing.assert_close(exact["log_likelihood"], _mixture_log_density(mixture, x), atol=2e-3, rtol=1e-4)
    estimate = ol.ode_log_likelihood(mixture.velocity, x, grid, solver="heun", probes=16,
                                     generator=torch.Generator().manual_seed(5))
    heun_exact = ol.ode_log_likelihood(mixture.velocity, x, grid, solver="heun", divergence="exact")
    z = (estimate["log_likelihood"] - heun_exact["log_likelihood"]) / estimate["stderr"]
    assert float(z.abs().max()) < 4.5


def test_dequantized_bits_per_dim_match_the_expected_bound_and_exceed_the_exact_bin_mass(gaussian):
    """For x on the grid and w ~ U(±1/255): E[−log N(x + w)] = −log N(x) + Σ (1/255)²/3 / (2 s²), so the expected
    bound is known in closed form; it must sit just above −log P(u) from the exact Gaussian bin masses."""
    levels = ((gaussian.mean.clamp(-0.9, 0.9) + 1.0) * 127.5).round()  # grid points near the mean
    x = (levels / 127.5 - 1.0).reshape(1, 3).repeat(4000, 1)
    out = ol.flow_bpd(gaussian.velocity, x, 40, solver="rk4", divergence="hutchinson", probes=1,
                      generator=torch.Generator().manual_seed(6))
    dims, ln2 = 3, math.log(2)
    expected_nats = -gaussian.log_density(x[:1]) + ((1 / 255) ** 2 / 3 / (2 * gaussian.var)).sum() + dims * math.log(127.5)
    mean, stderr = out["bpd"].mean(), out["bpd"].std() / math.sqrt(len(x))
    assert abs(float(mean) - float(expected_nats) / (dims * ln2)) < 4 * float(stderr) + 1e-6
    parts = out["prior_bpd"] - out["log_det_bpd"] + out["dequantization_bpd"]
    torch.testing.assert_close(parts, out["bpd"])
    assert float(out["dequantization_bpd"][0]) == pytest.approx(math.log2(127.5))
    exact_nll = -discretized_gaussian_log_likelihood(x[:1], gaussian.mean.reshape(1, 3), 0.5 * torch.log(gaussian.var).reshape(1, 3)).sum()
    assert float(exact_nll) / (dims * ln2) <= float(expected_nats) / (dims * ln2) < float(exact_nll) / (dims * ln2) + 1e-3


def test_bits_per_dim_refuse_images_off_the_8_bit_grid(gaussian):
    with pytest.raises(DiffvaeError):
        ol.flow_bpd(gaussian.velocity, torch.full((2, 3), 0.001, dtype=torch.float64), 4)
    with pytest.raises(DiffvaeError):
        ol.ode_log_likelihood(gaussian.velocity, torch.zeros(2, 3), GRID, divergence="brute")
    with pytest.raises(DiffvaeError):
        ol.ode_log_likelihood(gaussian.velocity, torch.zeros(2, 3), GRID, probes=0)


# ----- diffusion's probability-flow ODE ----------------------------------------------------------

def _analytic_eps(schedule, mean, var):
    """ε*(x, t) = E[ε | x_t = x] for x₀ ~ N(μ, s²) at continuous t, ᾱ(t) = 1 / (1 + σ̄(t)²)."""

    def eps_fn(x, t):
        sigma_bar = ol.continuous_sigma_bar(schedule, t.double().cpu()).reshape(-1, *[1] * (x.ndim - 1))
        alpha_cumprod = 1.0 / (1.0 + sigma_bar**2)
        return (torch.sqrt(1 - alpha_cumprod) * (x - torch.sqrt(alpha_cumprod) * mean) / (alpha_cumprod * var + 1 - alpha_cumprod)).to(x.dtype)

    return eps_fn


def test_continuous_time_interpolates_the_schedule_and_inverts():
    schedule = NoiseSchedule.linear(100)
    integers = torch.arange(100, dtype=torch.float64)
    sigma_bar = ol.continuous_sigma_bar(schedule, integers)
    torch.testing.assert_close(1.0 / (1.0 + sigma_bar**2), schedule.alphas_cumprod)
    t = torch.linspace(-1.0, 99.0, 777, dtype=torch.float64)
    assert float(ol.continuous_sigma_bar(schedule, torch.tensor(-1.0))) == 0.0
    torch.testing.assert_close(ol.timestep_of_sigma_bar(schedule, ol.continuous_sigma_bar(schedule, t)), t)
    assert bool((ol.continuous_sigma_bar(schedule, t).diff() > 0).all())
    grid = ol.probability_flow_grid(schedule, 50)
    assert float(grid[0]) == 0.0 and bool((grid.diff() > 0).all())


def test_euler_on_the_probability_flow_ode_is_the_ddim_sampler():
    """DDIM's step is Euler's on dx̄/dσ̄ = ε̂ (Song et al. 2021a, eq. 14): an independent implementation check."""
    schedule = NoiseSchedule.linear(100)
    eps_fn = _analytic_eps(schedule, 0.3, 0.2)
    x_T = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grid_t = diffusion_samplers.timesteps(schedule, 10, "leading")
    ddim = diffusion_samplers.sample_ddim(eps_fn, x_T, schedule, grid_t)
    sigma_grid = torch.cat([ol.continuous_sigma_bar(schedule, grid_t.double()), torch.zeros(1, dtype=torch.float64)])
    x_bar_T = x_T * math.sqrt(1 + float(sigma_grid[0]) ** 2)
    euler = integrate(ol.ddim_field(eps_fn, schedule), x_bar_T, sigma_grid, "euler")
    torch.testing.assert_close(euler, ddim, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(200), NoiseSchedule.cosine(200)], ids=["linear", "cosine"])
def test_probability_flow_likelihood_of_gaussian_data_matches_the_closed_form(schedule):
    """With the analytic ε the ODE is exact: x̄(σ̄) = μ + √((s² + σ̄²)/s²) (x − μ), so
    log p(x) = log N(x; μ, s²) + log N(x̄_max; 0, 1 + σ̄_max²) − log N(x̄_max; μ, s² + σ̄_max²) (the prior's mismatch)."""
    mean, var = 0.3, 0.2
    x = mean + math.sqrt(var) * torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out = ol.probability_flow_log_likelihood(_analytic_eps(schedule, mean, var), x, schedule, 400, solver="rk4",
                                             divergence="exact", clip_timestep=False)
    sigma_max = float(ol.continuous_sigma_bar(schedule, torch.tensor(schedule.T - 1.0)))
    x_bar = mean + math.sqrt((var + sigma_max**2) / var) * (x - mean)
    normal = lambda z, m, v: (-0.5 * (math.log(2 * math.pi * v) + (z - m) ** 2 / v)).flatten(1).sum(1)  # noqa: E731
    closed_form = normal(x, mean, var) + normal(x_bar, 0.0, 1 + sigma_max**2) - normal(x_bar, mean, var + sigma_max**2)
    torch.testing.assert_close(out["z1"], x_bar / math.sqrt(1 + sigma_max**2), rtol=1e-4, atol=1e-4)  # x_T = x̄ √ᾱ
    torch.testing.assert_close(out["log_likelihood"], closed_form, rtol=1e-5, atol=1e-4)
    clipped = ol.probability_flow_log_likelihood(_analytic_eps(schedule, mean, var), x, schedule, 400, solver="rk4",
                                                 divergence="exact")
    assert float((clipped["log_likelihood"] - closed_form).abs().max()) < 0.05  # ε̂(·, 0) below the first level


def test_probability_flow_bits_per_dim_add_up_and_hutchinson_is_unbiased():
    schedule = NoiseSchedule.linear(100)
    x = torch.tensor([[[[120.0, 140.0], [128.0, 200.0]]]], dtype=torch.float64).div(127.5).sub(1).repeat(3, 1, 1, 1)
    eps_fn = _analytic_eps(schedule, 0.0, 0.1)
    exact = ol.probability_flow_bpd(eps_fn, x, schedule, 100, divergence="exact", generator=torch.Generator().manual_seed(9))
    estimate = ol.probability_flow_bpd(eps_fn, x, schedule, 100, probes=48, probe="gaussian",
                                       generator=torch.Generator().manual_seed(9))  # the same dequantization draw
    torch.testing.assert_close(exact["prior_bpd"] - exact["log_det_bpd"] + exact["dequantization_bpd"], exact["bpd"])
    assert float(((estimate["bpd"] - exact["bpd"]) / estimate["bpd_stderr"]).abs().max()) < 4.5
