"""diffvae.vae.bounds against analytic cases (a linear-Gaussian model), brute force and oracles."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffvae.distributions import gaussian_log_density
from diffvae.vae.bounds import (
    active_units,
    free_bits_kl,
    iwae_bound,
    kl_per_dim,
    kl_weight,
    mutual_information,
    negative_elbo,
)

F64 = torch.float64


def test_kl_per_dim_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 3, generator=generator, dtype=F64), torch.randn(5, 3, generator=generator, dtype=F64)
    oracle = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    )
    got = kl_per_dim(mean, logvar)
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, oracle)
    assert kl_per_dim(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0  # posterior = prior


def test_negative_elbo_is_kl_minus_reconstruction_and_checks_shapes():
    torch.testing.assert_close(negative_elbo(torch.tensor([-3.0, -1.0]), torch.tensor([0.5, 2.0])), torch.tensor([3.5, 3.0]))
    with pytest.raises(ValueError):
        negative_elbo(torch.zeros(4), torch.zeros(4, 2))  # per-dimension KL must be summed first


def test_iwae_bound_log_k_normalisation_and_stability():
    # K identical importance weights w: −L_K = −log w for every K (the −log K cancels the K copies)
    log_weight = torch.tensor([-1234.5, 3.0, -0.25], dtype=F64)
    for k in (1, 7, 1000):
        got = iwae_bound(log_weight.expand(k, 3), torch.zeros(k, 3, dtype=F64), torch.zeros(k, 3, dtype=F64))
        torch.testing.assert_close(got, -log_weight)
    # two weights: −log((e^a + e^b)/2), brute force; huge magnitudes stay finite
    a, b = torch.tensor([-5000.0, 2.0], dtype=F64), torch.tensor([-5001.0, -1.0], dtype=F64)
    got = iwae_bound(torch.stack([a, b]), torch.zeros(2, 2, dtype=F64), torch.zeros(2, 2, dtype=F64))
    expected = -(a + torch.log((1 + torch.exp(b - a)) / 2))
    torch.testing.assert_close(got, expected)


class LinearGaussian:
    """p(z) = N(0, I_L), p(x|z) = N(Wz + b, σ²I_D)  ⇒  p(x) = N(b, WWᵀ + σ²I), p(z|x) Gaussian."""

    def __init__(self, latent_dim=2, data_dim=4, noise_std=0.5, num_points=8, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(data_dim, latent_dim, generator=generator, dtype=F64)
        self.bias = torch.randn(data_dim, generator=generator, dtype=F64)
        self.noise_var = noise_std ** 2
        marginal_cov = self.weight @ self.weight.T + self.noise_var * torch.eye(data_dim, dtype=F64)
        z = torch.randn(num_points, latent_dim, generator=generator, dtype=F64)
        self.x = z @ self.weight.T + self.bias + noise_std * torch.randn(num_points, data_dim, generator=generator, dtype=F64)
        self.log_px = torch.from_numpy(stats.multivariate_normal(self.bias.numpy(), marginal_cov.numpy()).logpdf(self.x.numpy()))
        precision = torch.eye(latent_dim, dtype=F64) + self.weight.T @ self.weight / self.noise_var
        self.posterior_cov = torch.linalg.inv(precision)
        self.posterior_mean = (self.x - self.bias) @ self.weight @ self.posterior_cov / self.noise_var

    def log_weights_parts(self, z):
        """log p(x|z), log p(z) for z (..., N, L)."""
        log_px_given_z = gaussian_log_density(self.x, z @ self.weight.T + self.bias, math.log(self.noise_var)).sum(-1)
        return log_px_given_z, gaussian_log_density(z, 0.0, 0.0).sum(-1)


def test_iwae_with_the_exact_posterior_is_exact_for_every_sample():
    model = LinearGaussian()
    posterior = torch.distributions.MultivariateNormal(model.posterior_mean, model.posterior_cov)
    z = posterior.sample((5,))  # (K=5, N, L)
    log_px_given_z, log_pz = model.log_weights_parts(z)
    torch.testing.assert_close(iwae_bound(log_px_given_z, log_pz, posterior.log_prob(z)), -model.log_px, rtol=0, atol=1e-9)
    torch.testing.assert_close(iwae_bound(log_px_given_z[:1], log_pz[:1], posterior.log_prob(z[:1])), -model.log_px, rtol=0, atol=1e-9)


def test_iwae_tightens_to_the_exact_log_likelihood_with_an_imperfect_encoder():
    model = LinearGaussian()
    # a deliberately wrong diagonal encoder: shrunk mean, inflated variance, no correlations
    mean = 0.8 * model.posterior_mean
    logvar = torch.log(1.5 * torch.diagonal(model.posterior_cov)).expand_as(mean)
    generator = torch.Generator().manual_seed(1)
    elbo_gap = torch.distributions.kl_divergence(  # −ELBO − (−log p(x)) = KL(q(z|x) ‖ p(z|x))
        torch.distributions.MultivariateNormal(mean, torch.diag_embed(logvar.exp())),
        torch.distributions.MultivariateNormal(model.posterior_mean, model.posterior_cov),
    )
    excess = {}
    for num_samples, replicates in ((1, 4000), (10, 400), (1000, 100)):
        z = mean + torch.exp(0.5 * logvar) * torch.randn(replicates, num_samples, *mean.shape, generator=generator, dtype=F64)
        log_px_given_z, log_pz = model.log_weights_parts(z)
        log_qz = gaussian_log_density(z, mean, logvar).sum(-1)
        bounds = torch.stack([iwae_bound(log_px_given_z[r], log_pz[r], log_qz[r]) for r in range(replicates)])
        gap = bounds - (-model.log_px)  # (replicates, N): −L_K − (−log p(x))
        excess[num_samples] = gap.mean(0)
        standard_error = gap.std(0) / math.sqrt(replicates)
        assert (excess[num_samples] > -4 * standard_error).all(), num_samples  # a bound: never below −log p(x)
        if num_samples == 1:  # −L_1 is the ELBO: its excess is exactly KL(q ‖ posterior)
            assert ((excess[1] - elbo_gap).abs() < 4 * standard_error).all()
            # and negative_elbo with the analytic KL is the same quantity
            elbo_excess = negative_elbo(log_px_given_z[:, 0], kl_per_dim(mean, logvar).sum(-1).expand(replicates, -1)) + model.log_px
            elbo_error = elbo_excess.std(0) / math.sqrt(replicates)
            assert ((elbo_excess.mean(0) - elbo_gap).abs() < 4 * elbo_error).all()
    assert (excess[1].mean() > excess[10].mean() > excess[1000].mean())
    assert excess[1].mean() > 0.5  # the encoder really is imperfect ...
    assert excess[1000].abs().max() < 0.03 * excess[1].max()  # ... yet K = 1000 almost closes the gap
    assert excess[1000].mean().abs() < 0.02


def test_free_bits_matches_brute_force_and_stops_gradients_below_the_floor():
    kl = torch.tensor([[0.1, 2.0, 0.0, 0.6], [0.3, 1.0, 0.0, 0.2], [0.2, 3.0, 0.0, 0.4]], dtype=F64, requires_grad=True)
    for floor in (0.0, 0.25, 0.5, 5.0):
        brute = sum(max(floor, sum(kl[n, j].item() for n in range(3)) / 3) for j in range(4))
        assert free_bits_kl(kl, floor).item() == pytest.approx(brute)
    assert free_bits_kl(kl, 0.0).item() == pytest.approx(kl.sum(1).mean().item())  # off = plain mean KL
    free_bits_kl(kl, 0.3).backward()
    # batch means per dim: 0.2, 2.0, 0.0, 0.4 → only dims 1 and 3 exceed 0.3 and get gradient 1/N
    expected = torch.tensor([0.0, 1 / 3, 0.0, 1 / 3], dtype=F64).expand(3, 4)
    torch.testing.assert_close(kl.grad, expected)


def test_kl_weight_warms_up_linearly_to_beta():
    assert kl_weight(0, 2.0, 100) == 0.0
    assert kl_weight(25, 2.0, 100) == pytest.approx(0.5)
    assert kl_weight(50, 2.0, 100) == pytest.approx(1.0)
    assert kl_weight(100, 2.0, 100) == pytest.approx(2.0)
    assert kl_weight(10_000, 2.0, 100) == pytest.approx(2.0)
    assert kl_weight(0, 0.7, 0) == pytest.approx(0.7)  # no warm-up
    assert kl_weight(5, 0.0, 10) == 0.0


def test_active_units_finds_planted_dead_dimensions():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(500, 6, generator=generator)
    means[:, 1] = 0.3 + 0.01 * torch.randn(500, generator=generator)  # dead: variance 1e-4
    means[:, 3] = -2.0  # dead: constant
    means[:, 4] = 0.07 * torch.randn(500, generator=generator)  # variance ≈ 0.005 < 0.01: inactive
    count, variances = active_units(means)
    assert count == 3
    np.testing.assert_allclose(variances.numpy(), np.var(means.double().numpy(), axis=0, ddof=1), rtol=1e-10)
    assert active_units(means, threshold=0.001)[0] == 4  # the threshold is honoured


def test_mutual_information_matches_the_analytic_gaussian_case():
    # x ~ N(0, I_2), q(z|x) = N(a·x, I): q(z) = N(0, (1 + a²) I) and I(x; z) = (L/2) log(1 + a²)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=generator, dtype=F64)
    for scale in (0.5, 2.0):
        analytic = math.log(1 + scale ** 2)
        estimates = [mutual_information(scale * x, torch.zeros_like(x), generator=generator) for _ in range(3)]
        assert np.mean(estimates) == pytest.approx(analytic, abs=0.06), (scale, estimates)


def test_mutual_information_is_zero_for_an_encoder_that_ignores_x_and_chunking_is_exact():
    generator = torch.Generator().manual_seed(0)
    same = torch.tensor([[0.4, -1.0, 2.0]]).expand(300, 3)
    assert mutual_information(same, torch.full_like(same, -0.5), generator=generator) == pytest.approx(0.0, abs=1e-10)
    informative = torch.randn(300, 3, generator=generator)
    logvar = torch.full_like(informative, -3.0)
    whole = mutual_information(informative, logvar, generator=torch.Generator().manual_seed(5))
    chunked = mutual_information(informative, logvar, generator=torch.Generator().manual_seed(5), chunk_elements=1000)
    assert whole == pytest.approx(chunked, rel=1e-12)
    assert whole > 4.0  # close to its ceiling log N = 5.7 for a nearly deterministic encoder
    assert whole <= math.log(300) + 1e-9


def test_mutual_information_sits_at_its_log_n_ceiling_for_a_deterministic_encoder():
    """Well-separated posteriors with tiny variance carry far more than log N nats, yet the
    estimate equals log N exactly: it is a lower bound there, which the ceiling says."""
    from diffvae.vae.bounds import mutual_information_ceiling

    generator = torch.Generator().manual_seed(1)
    means = 10.0 * torch.randn(200, 4, generator=generator, dtype=F64)
    estimate = mutual_information(means, torch.full_like(means, -12.0), generator=generator)
    assert mutual_information_ceiling(200) == pytest.approx(math.log(200), rel=1e-15)
    assert estimate == pytest.approx(mutual_information_ceiling(200), abs=1e-9)
    assert mutual_information_ceiling(200) == pytest.approx(5.298, abs=1e-3)
    with pytest.raises(ValueError):
        mutual_information_ceiling(0)
