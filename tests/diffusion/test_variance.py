"""Reverse variances (Analytic-DPM, NPR, fitted decoder scale) against closed forms, diffusers and
the bound's own guarantees, on quantized Gaussian data with its exact optimal ε*."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr

from diffvae.diffusion.likelihood import diffusion_bound_estimates, diffusion_bounds, diffusion_bpd
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.diffusion.variance import (analytic_variance, fit_decoder_variance, fit_level_prior, fit_points,
                                        fit_reverse_variances, fixed_variance, level_posterior_nats, variance_table)
from diffvae.errors import DiffvaeError
from diffvae.images import to_signed

SIGMA = 0.5
LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0


def _probabilities() -> torch.Tensor:
    edges = np.arange(256) / 127.5 - 1.0
    lower = np.where(np.arange(256) == 0, -np.inf, edges - 1 / 255)
    upper = np.where(np.arange(256) == 255, np.inf, edges + 1 / 255)
    return torch.from_numpy(ndtr(upper / SIGMA) - ndtr(lower / SIGMA))


def _data(n: int, d: int, seed: int) -> torch.Tensor:
    z = torch.randn(n, 1, d, d, generator=torch.Generator().manual_seed(seed))
    return to_signed((((SIGMA * z).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))


def _expected_posterior_variance(alpha_cumprod: float, p: torch.Tensor) -> float:
    """E_{x_t} Var(x₀ | x_t) for one dimension, by quadrature over each level's Gaussian x_t."""
    a, s = math.sqrt(alpha_cumprod), math.sqrt(1 - alpha_cumprod)
    z = torch.linspace(-7, 7, 561, dtype=torch.float64)
    weights = torch.exp(-z**2 / 2)
    weights = weights / weights.sum()
    x_t = a * LEVELS[:, None] + s * z[None, :]  # (levels, nodes)
    logits = torch.log(p.clamp(min=1e-300))[None, None, :] - (x_t[..., None] - a * LEVELS) ** 2 / (2 * s**2)
    mean = (torch.softmax(logits, dim=-1) * LEVELS).sum(-1)
    second_of_mean = float((p[:, None] * weights[None, :] * mean**2).sum())
    return float((p * LEVELS**2).sum()) - second_of_mean


def test_fixed_variances_match_diffusers():
    from diffusers import DDPMScheduler

    for kind, name in (("small", "fixed_small"), ("large", "fixed_large")):
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=name)
        theirs = torch.stack([scheduler._get_variance(t) for t in range(1, 1000)]).double()
        ours = fixed_variance(NoiseSchedule.linear(1000), kind)[1:]
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=0)  # diffusers works in float32


def test_analytic_variance_matches_the_closed_form_optimum(exact_quantized_eps):
    """σ*²_t = β̃_t + c_t² E Var(x₀ | x_t) (law of total variance) for the exact ε*, at every measured t
    within four Monte-Carlo standard errors of Γ_t; NPR gives the same optimum for the exact ε*.
    The excess over β̃_t is checked to 10% wherever it is more than 1% of β̃_t (at large t it is not)."""
    schedule = NoiseSchedule.linear(1000)
    p = _probabilities()
    eps_fn = exact_quantized_eps(schedule, LEVELS, p)
    x = _data(8192, 2, seed=0)
    fit = fit_reverse_variances(eps_fn, x, schedule, points=48, generator=torch.Generator().manual_seed(1))
    dims = x[0].numel() * x.shape[0]
    sharp = 0
    checked = fit_points(1000, 48)[1::4]
    for t in checked.tolist():
        coefficient = float(schedule.posterior_mean_coef1[t] ** 2)
        excess_closed = coefficient * _expected_posterior_variance(float(schedule.alphas_cumprod[t]), p)
        excess_fit = float(fit.tables["analytic"][t] - schedule.posterior_variance[t])
        # Γ_t is a mean of `dims` values of ε*² with variance ≤ 2 (a χ²₁ has variance 2)
        tolerance = 4 * coefficient * float((1 - schedule.alphas_cumprod[t]) / schedule.alphas_cumprod[t]) * math.sqrt(2 / dims)
        assert abs(excess_fit - excess_closed) < tolerance + 1e-3 * excess_closed, (t, excess_fit, excess_closed, tolerance)
        npr_excess = float(fit.tables["npr"][t] - schedule.posterior_variance[t])
        assert abs(npr_excess - excess_closed) < tolerance + 1e-3 * excess_closed, (t, npr_excess, excess_closed)
        if excess_closed > 0.01 * float(schedule.posterior_variance[t]):  # where the choice matters
            assert tolerance < 0.1 * excess_closed, f"not sharp enough at t={t}"
            sharp += 1
    assert sharp >= 4
    assert (fit.tables["analytic"][1:] >= schedule.posterior_variance[1:] - 1e-15).all()


def _fitted_on_quantized_gaussian(exact_quantized_eps, n: int, seed: int):
    """(schedule, level probabilities, exact ε*, the variances fitted on n images) for T = 1000."""
    schedule = NoiseSchedule.linear(1000)
    p = _probabilities()
    eps_fn = exact_quantized_eps(schedule, LEVELS, p)
    fit = fit_reverse_variances(eps_fn, _data(n, 2, seed=seed), schedule, points=64,
                                generator=torch.Generator().manual_seed(seed + 1))
    return schedule, p, eps_fn, fit


def test_fitted_variances_tighten_the_bound_and_stay_above_the_entropy(exact_quantized_eps):
    schedule, p, eps_fn, fit = _fitted_on_quantized_gaussian(exact_quantized_eps, 2048, seed=2)
    x = _data(384, 2, seed=4)
    bounds = diffusion_bounds(eps_fn, x, schedule, fit.tables, batch_timesteps=25, generator=torch.Generator().manual_seed(5))
    bits = {name: float(b["total"].mean()) / (x[0].numel() * math.log(2)) for name, b in bounds.items()}
    entropy_bits = float(-(p * torch.log(p.clamp(min=1e-300))).sum()) / math.log(2)
    for fitted in ("analytic", "npr"):
        assert bits[fitted] < bits["small"] - 0.3 and bits[fitted] < bits["large"] - 0.03, bits  # same draws: paired
        assert bits[fitted] > entropy_bits, (bits, entropy_bits)
    assert fit.best in ("analytic", "npr", "analytic_levels", "npr_levels")
    # the decoder term is where fixed-small loses most: σ₀ = √β̃₁ ≈ 0.0074 is twice the bin half-width
    assert float(bounds["analytic"]["decoder"].mean()) < float(bounds["small"]["decoder"].mean())


def test_importance_sampled_estimate_is_unbiased_and_beats_uniform(exact_quantized_eps):
    schedule, _, eps_fn, fit = _fitted_on_quantized_gaussian(exact_quantized_eps, 1024, seed=6)
    image = _data(1, 2, seed=8)
    table = fit.tables[fit.best.removesuffix("_levels")]  # the proposal is for the best choice's L_t, whatever its L₀
    full = diffusion_bounds(eps_fn, image.expand(64, -1, -1, -1).contiguous(), schedule, {"best": table},
                            batch_timesteps=50, generator=torch.Generator().manual_seed(9))["best"]["total"]
    repeats = image.expand(256, -1, -1, -1).contiguous()
    variances = {"best": table}
    weighted = diffusion_bound_estimates(eps_fn, repeats, schedule, 16, variances, proposal=fit.proposal,
                                         generator=torch.Generator().manual_seed(10), batch_timesteps=32)["best"]
    uniform = diffusion_bound_estimates(eps_fn, repeats, schedule, 16, variances,
                                        generator=torch.Generator().manual_seed(11), batch_timesteps=32)["best"]
    se = weighted["total"].std().item() / math.sqrt(256)
    expected, expected_se = full.mean().item(), full.std().item() / math.sqrt(64)
    assert abs(weighted["total"].mean().item() - expected) < 4 * math.hypot(se, expected_se)
    assert weighted["total"].std() < 0.5 * uniform["total"].std()
    assert 0.75 < weighted["total"].std().item() / weighted["stderr"].pow(2).mean().sqrt().item() < 1.33
    torch.testing.assert_close(weighted["total"], weighted["prior"] + weighted["decoder"] + weighted["diffusion"])


def test_decoder_variance_is_the_maximum_likelihood_scale():
    g = torch.Generator().manual_seed(12)
    x0 = to_signed(torch.randint(0, 256, (512, 1, 4, 4), generator=g, dtype=torch.uint8))
    x0_hat = x0.double() + 0.05 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    assert fit_decoder_variance(x0, x0_hat, "continuous") == pytest.approx(float((x0 - x0_hat).square().mean()))
    variance = fit_decoder_variance(x0, x0_hat, "discretized")
    assert 0.045 < math.sqrt(variance) < 0.055  # the noise scale, far above the bin width
    from diffvae.distributions import discretized_gaussian_log_likelihood as loglik

    def nll(v):
        return float(-loglik(x0.double(), x0_hat, torch.tensor(0.5 * math.log(v))).mean())

    assert nll(variance) <= min(nll(variance * 1.2), nll(variance / 1.2))


def test_analytic_variance_api_and_bad_tables(optimal_eps):
    schedule = NoiseSchedule.linear(50)
    x = _data(64, 2, seed=13)
    import diffvae  # the README's names

    table = diffvae.analytic_variance(optimal_eps(schedule, SIGMA), x, schedule, generator=torch.Generator().manual_seed(0))
    assert table.shape == (50,) and bool((table > schedule.posterior_variance.clamp(min=0) - 1e-15).all())
    again = analytic_variance(optimal_eps(schedule, SIGMA), x, schedule, generator=torch.Generator().manual_seed(0))
    assert torch.equal(table, again)
    bpd = diffvae.diffusion_bpd(optimal_eps(schedule, SIGMA), x, schedule, variance=table)
    assert bpd["total"].shape == (64,)
    with pytest.raises(DiffvaeError, match="shape"):
        variance_table(schedule, torch.ones(49))
    with pytest.raises(DiffvaeError, match="positive"):
        variance_table(schedule, torch.zeros(50))
    with pytest.raises(DiffvaeError, match="unknown reverse variance"):
        diffusion_bpd(optimal_eps(schedule, SIGMA), x, schedule, variance="medium")


def test_grid_posterior_decoder_against_brute_force_and_the_conditional_entropy():
    """−log p(x₀ | x_t) under the level histogram: brute force with scipy for a few pixels; and on
    quantized Gaussian data with the true level probabilities its mean is H(x₀ | x_t) ≤ H(x₀)."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    schedule = NoiseSchedule.linear(1000)
    x0 = _data(2, 2, seed=20)
    log_prior = fit_level_prior(_data(64, 2, seed=21))
    nats = level_posterior_nats(x0, schedule, log_prior, torch.Generator().manual_seed(22))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    a, s = math.sqrt(float(schedule.alphas_cumprod[0])), math.sqrt(1 - float(schedule.alphas_cumprod[0]))
    grid, prior = LEVELS.numpy(), log_prior.numpy()
    expected = []
    for image, eps in zip(x0.double().numpy(), noise.numpy()):
        total = 0.0
        for v, e in zip(image.flatten(), eps.flatten()):
            logits = prior + norm.logpdf(a * v + s * e, loc=a * grid, scale=s)
            total -= logits[int(round((v + 1) * 127.5))] - logsumexp(logits)
        expected.append(total)
    torch.testing.assert_close(nats, torch.tensor(expected, dtype=torch.float64))

    p = _probabilities()
    x = _data(4096, 2, seed=23)
    per_pixel = level_posterior_nats(x, schedule, torch.log(p), torch.Generator().manual_seed(24)) / x[0].numel()
    entropy = float(-(p * torch.log(p.clamp(min=1e-300))).sum())
    assert 0 < per_pixel.mean() < entropy
    assert per_pixel.mean() < 0.5 * entropy  # at t = 0 the noise (σ ≈ 0.01) hides only a few neighbouring levels
