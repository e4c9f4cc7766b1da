"""diffvae.distributions against brute force and scipy / torch.distributions oracles."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffvae.distributions import (
    BIN_HALF_WIDTH,
    bernoulli_log_likelihood,
    discretized_gaussian_log_likelihood,
    discretized_logistic_log_likelihood,
    gaussian_log_density,
    nats_to_bpd,
    normal_kl,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # the 256 grid points on [-1, 1]
DISCRETIZED = {
    "logistic": (discretized_logistic_log_likelihood, stats.logistic, lambda log_scale: math.exp(log_scale)),
    "gaussian": (discretized_gaussian_log_likelihood, stats.norm, lambda log_scale: math.exp(log_scale)),
}
# means inside, on a level, on a bin edge, and far outside; scales from far below a bin to huge
MEANS = [0.0, 0.3, -0.97, LEVELS[100].item(), LEVELS[100].item() + BIN_HALF_WIDTH, 1.0, -1.0, 3.0, -7.0]
LOG_SCALES = [-12.0, -6.0, -3.0, 0.0, 4.0]


@pytest.mark.parametrize("kind", sorted(DISCRETIZED))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_discretized_masses_sum_to_one_over_the_256_bins(kind, dtype):
    log_likelihood = DISCRETIZED[kind][0]
    # float32 cannot place a bin edge to better than ~1e-8, which a scale of e^-12 magnifies to
    # ~1e-3 of a bin; models floor the log-scale at -7, so float32 is checked down to -6.
    log_scales = LOG_SCALES if dtype == torch.float64 else [s for s in LOG_SCALES if s >= -6.0]
    for mean in MEANS:
        for log_scale in log_scales:
            x = LEVELS.to(dtype)
            log_mass = log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
            assert torch.isfinite(log_mass).all(), (kind, mean, log_scale)
            assert (log_mass <= 1e-6).all()
            total = torch.logsumexp(log_mass.double(), 0).exp().item()
            assert total == pytest.approx(1.0, abs=1e-9 if dtype == torch.float64 else 2e-5), (kind, mean, log_scale, total)


@pytest.mark.parametrize("kind", sorted(DISCRETIZED))
def test_discretized_mass_matches_scipy_cdf_difference(kind):
    log_likelihood, scipy_dist, scale_of = DISCRETIZED[kind]
    rng = np.random.default_rng(0)
    for mean, log_scale in [(0.1, -3.0), (-0.4, -1.0), (0.55, -5.0), (0.0, 0.5)]:
        scale = scale_of(log_scale)
        levels = LEVELS.numpy()
        x = levels[rng.choice(np.arange(1, 255), size=40)]  # interior bins
        # F(x + 1/255) − F(x − 1/255), written with the survival function right of the mean so
        # that float64 does not cancel to 0 in the upper tail
        below = scipy_dist.cdf(x + 1 / 255, loc=mean, scale=scale) - scipy_dist.cdf(x - 1 / 255, loc=mean, scale=scale)
        above = scipy_dist.sf(x - 1 / 255, loc=mean, scale=scale) - scipy_dist.sf(x + 1 / 255, loc=mean, scale=scale)
        expected = np.where(x < mean, below, above)
        got = log_likelihood(torch.tensor(x), torch.full((40,), mean, dtype=torch.float64),
                             torch.full((40,), log_scale, dtype=torch.float64)).exp().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-300)
        # the two edge bins integrate the tails
        edges = torch.tensor([-1.0, 1.0], dtype=torch.float64)
        got_edges = log_likelihood(edges, torch.full((2,), mean, dtype=torch.float64), torch.full((2,), log_scale, dtype=torch.float64)).exp()
        expected_edges = [scipy_dist.cdf(-1 + 1 / 255, loc=mean, scale=scale), scipy_dist.sf(1 - 1 / 255, loc=mean, scale=scale)]
        np.testing.assert_allclose(got_edges.numpy(), expected_edges, rtol=1e-7)


def test_discretized_log_mass_is_accurate_far_in_the_tail():
    # float32, a tiny scale, a bin 30 scale units from the mean: scipy's logcdf difference in float64
    x = torch.tensor([LEVELS[140].item()], dtype=torch.float32)
    mean = x - 30 * math.exp(-5.0)
    log_mass = discretized_gaussian_log_likelihood(x, mean, torch.tensor([-5.0]))
    z_hi, z_lo = (1 / 255 + 30 * math.exp(-5.0)) / math.exp(-5.0), (-1 / 255 + 30 * math.exp(-5.0)) / math.exp(-5.0)
    expected = stats.norm.logsf(z_lo) + math.log(-math.expm1(stats.norm.logsf(z_hi) - stats.norm.logsf(z_lo)))
    assert log_mass.item() == pytest.approx(expected, rel=1e-4)


def test_gaussian_log_density_matches_scipy():
    rng = np.random.default_rng(1)
    x, mean, logvar = rng.normal(size=(3, 50))
    got = gaussian_log_density(torch.tensor(x), torch.tensor(mean), torch.tensor(logvar)).numpy()
    np.testing.assert_allclose(got, stats.norm.logpdf(x, loc=mean, scale=np.exp(0.5 * logvar)), rtol=1e-12)


def test_normal_kl_matches_monte_carlo_and_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean1, logvar1 = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.5, -1.0, 0.0])
    mean2, logvar2 = torch.tensor([0.0, 0.4, 1.0]), torch.tensor([0.0, 1.0, -0.5])
    closed = normal_kl(mean1.double(), logvar1.double(), mean2.double(), logvar2.double())
    samples = mean1.double() + torch.exp(0.5 * logvar1.double()) * torch.randn(400_000, 3, generator=generator, dtype=torch.float64)
    monte_carlo = (gaussian_log_density(samples, mean1.double(), logvar1.double())
                   - gaussian_log_density(samples, mean2.double(), logvar2.double())).mean(0)
    standard_error = (gaussian_log_density(samples, mean1.double(), logvar1.double())
                      - gaussian_log_density(samples, mean2.double(), logvar2.double())).std(0) / math.sqrt(400_000)
    assert ((closed - monte_carlo).abs() < 5 * standard_error).all(), (closed, monte_carlo)
    oracle = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean1.double(), torch.exp(0.5 * logvar1.double())),
        torch.distributions.Normal(mean2.double(), torch.exp(0.5 * logvar2.double())),
    )
    torch.testing.assert_close(closed, oracle)
    assert normal_kl(mean1, logvar1, mean1, logvar1).abs().max() < 1e-6  # KL(p‖p) = 0


def test_bernoulli_log_likelihood_matches_direct_formula():
    logits = torch.tensor([-30.0, -2.0, 0.0, 0.7, 25.0], dtype=torch.float64)
    for value in (0.0, 1.0):
        x = torch.full_like(logits, value)
        p = torch.sigmoid(logits)
        expected = torch.log(p) if value == 1.0 else torch.log1p(-p)
        got = bernoulli_log_likelihood(x, logits)
        torch.testing.assert_close(got[1:4], expected[1:4])
        assert torch.isfinite(got).all()
    # the two outcomes' probabilities sum to one
    total = bernoulli_log_likelihood(torch.ones_like(logits), logits).exp() + bernoulli_log_likelihood(torch.zeros_like(logits), logits).exp()
    torch.testing.assert_close(total, torch.ones_like(total))


def test_nats_to_bpd():
    # a uniform distribution over 256 levels in 10 dimensions costs exactly 8 bits/dim
    assert nats_to_bpd(10 * math.log(256), 10) == pytest.approx(8.0)
    torch.testing.assert_close(nats_to_bpd(torch.tensor([math.log(2.0) * 6]), 3), torch.tensor([2.0]))
