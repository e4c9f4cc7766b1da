"""The variational bound against its closed form for Gaussian data and the analytic ε-model.

For data x₀ with the exact ε-predictor of N(0, σ²), x̂₀ = k_t x_t with k_t = √ᾱ_t σ² / (ᾱ_t σ² + 1 − ᾱ_t),
so every term of the bound is a Gaussian expectation. With a_t = √ᾱ_t, s_t = √(1 − ᾱ_t), c_t the
posterior coefficient of x₀ and β̃_t the posterior variance, per dimension and with m₂ = E[x₀²]:

    E L_T = ½ [ −log(1 − ᾱ_{T−1}) + (1 − ᾱ_{T−1}) + ᾱ_{T−1} m₂ − 1 ]
    E L_t = c_t² [ (1 − k_t a_t)² m₂ + k_t² s_t² ] / (2 β̃_t)        (μ̃ − μ̂ = c_t (x₀ − x̂₀))
    E L_0 = Σ_bins p(v) E_ε[ −log P(v | mean k_0 (a_0 v + s_0 ε), std √β̃_1) ]   (Gauss–Hermite in ε)

The schedule here is rebuilt with numpy from Ho et al.'s formulas, independently of the package.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_ndtr, ndtr

from diffvae.diffusion.likelihood import diffusion_bound, diffusion_bpd, diffusion_bpd_estimate
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.errors import DiffvaeError
from diffvae.images import to_signed

SIGMA = 0.5
T = 1000
LEVELS = np.arange(256) / 127.5 - 1.0
LOWER_EDGES = np.where(np.arange(256) == 0, -np.inf, LEVELS - 1 / 255)
UPPER_EDGES = np.where(np.arange(256) == 255, np.inf, LEVELS + 1 / 255)


def _linear_gaussian_terms(sigma):
    betas = np.linspace(1e-4, 0.02, T)
    alphas_cumprod = np.cumprod(1 - betas)
    previous = np.concatenate([[1.0], alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - previous) / (1 - alphas_cumprod)
    coef_x0 = betas * np.sqrt(previous) / (1 - alphas_cumprod)
    a, s = np.sqrt(alphas_cumprod), np.sqrt(1 - alphas_cumprod)
    k = a * sigma**2 / (alphas_cumprod * sigma**2 + 1 - alphas_cumprod)
    return dict(alphas_cumprod=alphas_cumprod, posterior_variance=posterior_variance, coef_x0=coef_x0, a=a, s=s, k=k)


def _closed_form_nats(m2, sigma):
    """Expected prior and Σ_{t≥1} KL terms per dimension, and the pieces the decoder needs."""
    g = _linear_gaussian_terms(sigma)
    last = g["alphas_cumprod"][-1]
    prior = 0.5 * (-np.log(1 - last) + (1 - last) + last * m2 - 1)
    c, k, a, s, v = (g[key][1:] for key in ("coef_x0", "k", "a", "s", "posterior_variance"))
    diffusion = np.sum(c**2 * ((1 - k * a) ** 2 * m2 + k**2 * s**2) / (2 * v))
    return prior, diffusion, g


def _quantized_gaussian_probabilities(sigma):
    return ndtr(UPPER_EDGES / sigma) - ndtr(LOWER_EDGES / sigma)


def _log_bin_mass(lower, upper):
    """log(Φ(upper) − Φ(lower)), evaluated in the lower tail."""
    flip = (upper + lower) > 0
    b, a = np.where(flip, -lower, upper), np.where(flip, -upper, lower)
    log_b, log_a = log_ndtr(b), log_ndtr(a)
    return log_b + np.log(-np.expm1(np.minimum(log_a - log_b, -1e-300)))


def _expected_decoder_nats_per_level(g):
    nodes, weights = np.polynomial.hermite_e.hermegauss(121)
    weights = weights / math.sqrt(2 * math.pi)
    std = math.sqrt(g["posterior_variance"][1])
    mean = g["k"][0] * (g["a"][0] * LEVELS[:, None] + g["s"][0] * nodes[None, :])
    log_mass = _log_bin_mass((LOWER_EDGES[:, None] - mean) / std, (UPPER_EDGES[:, None] - mean) / std)
    return -(weights[None, :] * log_mass).sum(1)


def _quantized_gaussian_data(n, d, seed):
    z = torch.randn(n, 1, d, d, generator=torch.Generator().manual_seed(seed))
    return to_signed((((SIGMA * z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))


def _within(samples: torch.Tensor, expected: float, se_max: float) -> None:
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    assert se < se_max, f"test not sharp enough: standard error {se}"
    assert abs(mean - expected) < 4 * se, f"{mean} vs closed form {expected} (standard error {se})"


def test_discretized_bound_equals_its_closed_form_and_exceeds_the_entropy(optimal_eps):
    schedule = NoiseSchedule.linear(T)
    x = _quantized_gaussian_data(4096, 4, seed=0)
    bound = diffusion_bpd(optimal_eps(schedule, SIGMA), x, schedule, generator=torch.Generator().manual_seed(1))

    p = _quantized_gaussian_probabilities(SIGMA)
    prior, diffusion, g = _closed_form_nats((p * LEVELS**2).sum(), SIGMA)
    decoder = (p * _expected_decoder_nats_per_level(g)).sum()
    entropy = -(p * np.log(p)).sum()
    bits = 1 / math.log(2)

    # the three parts and the total, per example in bits/dim, each within 4 standard errors (≈ 0.03 bit)
    _within(bound["decoder"], decoder * bits, 0.01)
    _within(bound["diffusion"], diffusion * bits, 0.01)
    _within(bound["total"], (prior + decoder + diffusion) * bits, 0.01)
    assert bound["prior"].mean().item() == pytest.approx(prior * bits, rel=0.05)
    assert bound["total"].mean().item() > entropy * bits  # a bound on −log p never beats the entropy
    assert (prior + decoder + diffusion) > entropy
    # structure: column 0 is the decoder, the rest the KL terms, and the total adds them to the prior
    assert bound["terms"].shape == (4096, T)
    torch.testing.assert_close(bound["terms"][:, 0], bound["decoder"])
    torch.testing.assert_close(bound["total"], bound["prior"] + bound["terms"].sum(1))
    assert (bound["terms"][:, 1:] >= 0).all()


def test_continuous_bound_equals_its_closed_form_and_exceeds_the_differential_entropy(optimal_eps):
    """Continuous Gaussian data (latent diffusion): the decoder is a density, also in closed form."""
    schedule = NoiseSchedule.linear(T)
    x = SIGMA * torch.randn(1024, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    bound = diffusion_bound(optimal_eps(schedule, SIGMA), x, schedule, decoder="continuous",
                            generator=torch.Generator().manual_seed(3))
    prior, diffusion, g = _closed_form_nats(SIGMA**2, SIGMA)
    variance = g["posterior_variance"][1]
    error = (1 - g["k"][0] * g["a"][0]) ** 2 * SIGMA**2 + g["k"][0] ** 2 * g["s"][0] ** 2  # E (x₀ − x̂₀)²
    decoder = 0.5 * (math.log(2 * math.pi * variance) + error / variance)
    dims = x[0].numel()
    _within(bound["decoder"] / dims, decoder, 0.02)
    _within(bound["diffusion"] / dims, diffusion, 0.02)
    _within(bound["total"] / dims, prior + decoder + diffusion, 0.02)
    assert bound["total"].mean().item() / dims > 0.5 * math.log(2 * math.pi * math.e * SIGMA**2)


def test_timesteps_are_batched_into_few_network_calls(optimal_eps):
    schedule = NoiseSchedule.linear(100)
    eps_fn = optimal_eps(schedule, SIGMA)
    batch_sizes = []

    def counting_eps(x_t, t):
        batch_sizes.append(x_t.shape[0])
        return eps_fn(x_t, t)

    x = _quantized_gaussian_data(3, 2, seed=4)
    bound = diffusion_bpd(counting_eps, x, schedule, batch_timesteps=32)
    assert batch_sizes == [96, 96, 96, 12]  # ⌈100 / 32⌉ calls on the batch stacked per timestep
    dims = x[0].numel()
    nats = diffusion_bound(eps_fn, x, schedule, generator=torch.Generator().manual_seed(0))
    bpd = diffusion_bpd(eps_fn, x, schedule, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bpd["total"], nats["total"] / (dims * math.log(2)))
    assert bound["terms"].shape == (3, 100)


def test_bpd_estimate_is_unbiased_with_honest_standard_errors(optimal_eps):
    """One image, estimated many times: the estimates scatter as their reported standard errors
    say, around the closed-form expectation of the full bound for that image."""
    schedule = NoiseSchedule.linear(T)
    _, _, g = _closed_form_nats(0.0, SIGMA)
    image = _quantized_gaussian_data(1, 4, seed=5)
    values = image.double().flatten().numpy()
    prior, diffusion, _ = _closed_form_nats((values**2).mean(), SIGMA)  # both are linear in m₂
    level = np.round((values + 1) * 127.5).astype(int)
    expected = (prior + diffusion + _expected_decoder_nats_per_level(g)[level].mean()) / math.log(2)

    repeats = image.expand(512, -1, -1, -1).contiguous()
    estimate, standard_error = diffusion_bpd_estimate(optimal_eps(schedule, SIGMA), repeats, schedule, 256,
                                                      torch.Generator().manual_seed(6), batch_timesteps=64)
    assert estimate.shape == standard_error.shape == (512,)
    assert 0.8 < estimate.std().item() / standard_error.pow(2).mean().sqrt().item() < 1.25
    _within(estimate, expected, 0.15)


def test_bad_input_raises_diffvae_error(optimal_eps):
    schedule = NoiseSchedule.linear(10)
    eps_fn = optimal_eps(schedule, SIGMA)
    with pytest.raises(DiffvaeError, match="8-bit grid"):
        diffusion_bpd(eps_fn, torch.full((2, 3), 0.3), schedule)
    with pytest.raises(DiffvaeError, match="8-bit grid"):
        diffusion_bpd(eps_fn, torch.full((2, 3), 1.5), schedule)
    with pytest.raises(DiffvaeError, match="decoder"):
        diffusion_bound(eps_fn, torch.zeros(2, 3), schedule, decoder="logistic")
    with pytest.raises(DiffvaeError, match="K"):
        diffusion_bpd_estimate(eps_fn, torch.full((2, 3), -1.0), schedule, 1)
