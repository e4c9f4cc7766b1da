"""The whole-model bound of latent diffusion: its pure parts against analytic Gaussians, and the
continuous-L₀ diffusion bound (the one the latent model calls) against its exact expectation
under Gaussian latents with the analytic optimal ε-predictor."""

import math

import pytest
import torch
from scipy import stats

from diffvae.diffusion.model import DiffusionConfig, Denoiser
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.latent.bound import gaussian_entropy, latent_diffusion_bound, scale_jacobian_nats


def test_gaussian_entropy_matches_scipy():
    sigma = torch.tensor([1e-3, 0.3, 1.0, 7.0], dtype=torch.float64)
    expected = torch.tensor([stats.norm(scale=float(s)).entropy() for s in sigma], dtype=torch.float64)
    torch.testing.assert_close(gaussian_entropy(2 * torch.log(sigma)), expected)


def test_scale_jacobian_is_the_change_of_variables_of_a_gaussian():
    # z ~ N(0, σ²) in d dims; its scaled copy s·z ~ N(0, (sσ)²): log p(z) = log p'(s z) + d log s
    d, sigma, s = 6, 0.3, 2.5
    z = torch.randn(5, d, dtype=torch.float64) * sigma
    nll_z = -torch.tensor(stats.norm(scale=sigma).logpdf(z.numpy()).sum(1))
    nll_scaled = -torch.tensor(stats.norm(scale=s * sigma).logpdf((s * z).numpy()).sum(1))
    torch.testing.assert_close(nll_scaled + scale_jacobian_nats(s, d), nll_z)


def test_parts_combine_with_the_right_signs_in_bits_per_pixel():
    r, h, p = torch.tensor([100.0, 50.0]), torch.tensor([20.0, -5.0]), torch.tensor([30.0, 40.0])
    jac, dims = -12.0, 64
    out = latent_diffusion_bound(r, h, p, jac, dims, {"decoder": torch.tensor([1.0, 2.0]), "stderr": torch.tensor([0.5, 0.5])})
    torch.testing.assert_close(out["bpd"] * dims * math.log(2), r - h + p + jac)
    torch.testing.assert_close(out["bpd"], out["reconstruction_bpd"] - out["entropy_bpd"] + out["latent_prior_bpd"] + out["jacobian_bpd"])
    torch.testing.assert_close(out["latent_prior_decoder_bpd"], torch.tensor([1.0, 2.0]) / (dims * math.log(2)))
    assert "bpd_stderr" in out and "latent_prior_bpd" in out  # the same name as pixel diffusion; a part never shadows the total


# ----------------------------------------------------------------------------- Gaussian latents, optimal ε

def gaussian_denoiser(T: int, sigma: float, schedule: str = "cosine") -> Denoiser:
    """A Denoiser whose ε̂ is the exact posterior-mean predictor for data N(0, σ² I):
    ε*(x_t, t) = √(1−ᾱ_t) x_t / (ᾱ_t σ² + 1 − ᾱ_t)."""
    config = DiffusionConfig(schedule=schedule, timesteps=T, channels=32, channel_mult=(1,), attention_levels=(), sample_steps=2, invert_steps=2)
    denoiser = Denoiser(config, (1, 4, 4))
    alphas_cumprod = denoiser.schedule.alphas_cumprod

    def eps_star(x_t, t):
        a = alphas_cumprod[t.cpu()].to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))
        return torch.sqrt(1 - a) * x_t / (a * sigma**2 + 1 - a)

    denoiser.eps_fn = eps_star
    return denoiser


def expected_bound_per_dim(alphas_cumprod: torch.Tensor, sigma: float) -> float:
    """E over x₀ ~ N(0, σ²) and the forward noise of the diffusion bound per dimension, in closed form.

    With x̂₀ = E[x₀|x_t], the residual x₀ − x̂₀ has variance v_t = σ²(1 − ᾱ_t)/(ᾱ_t σ² + 1 − ᾱ_t);
    the model and true posterior means differ by c_t (x₀ − x̂₀), c_t = β_t √ᾱ_{t−1}/(1 − ᾱ_t), so
    E L_t = c_t² v_t / (2 β̃_t) (t ≥ 1); the continuous decoder N(x̂₀, β̃_1) gives
    E L_0 = ½ log(2π β̃_1) + v_0 / (2 β̃_1); the prior E L_T = ½ (ᾱ σ² + 1 − ᾱ − 1 − log(1 − ᾱ)) at t = T−1.
    """
    a = alphas_cumprod.double()
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
    beta = 1 - a / a_prev
    var_tilde = beta * (1 - a_prev) / (1 - a)
    coef = beta * torch.sqrt(a_prev) / (1 - a)
    v = sigma**2 * (1 - a) / (a * sigma**2 + 1 - a)
    kl_terms = (coef[1:] ** 2 * v[1:] / (2 * var_tilde[1:])).sum()
    decoder = 0.5 * math.log(2 * math.pi * var_tilde[1]) + v[0] / (2 * var_tilde[1])
    prior = 0.5 * (a[-1] * sigma**2 + 1 - a[-1] - 1 - math.log(1 - a[-1]))
    return float(kl_terms + decoder + prior)


@pytest.mark.parametrize("sigma", [1.0, 0.25])
def test_continuous_bound_matches_its_analytic_expectation_and_upper_bounds_the_true_nll(sigma):
    T, n, d = 1000, 256, 16
    denoiser = gaussian_denoiser(T, sigma)
    g = torch.Generator().manual_seed(0)
    z = sigma * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    bound = denoiser.bound_nats(z, decoder="continuous", generator=g)["total"]
    true_nll = -torch.tensor(stats.norm(scale=sigma).logpdf(z.numpy())).flatten(1).sum(1)
    standard_error = float((bound - true_nll).std() / math.sqrt(n))
    expected = d * expected_bound_per_dim(denoiser.schedule.alphas_cumprod, sigma)
    assert float(bound.mean()) == pytest.approx(expected, abs=4 * standard_error)
    entropy = d * 0.5 * math.log(2 * math.pi * math.e * sigma**2)
    assert expected > entropy  # a bound: above the true (differential-entropy) NLL in expectation ...
    assert float((bound - true_nll).mean()) > 4 * standard_error  # ... and on these samples
    # it tightens with T, towards a gap of ½ − ½ log 2 + γ/2 ≈ 0.44 nats/dim set by the first steps
    # (1 − ᾱ_t ∝ t + 1 there, so SNR halves in the first step for any T) and the clipped L₀ variance
    gaps = [expected_bound_per_dim(NoiseSchedule.cosine(steps).alphas_cumprod, sigma) - entropy / d for steps in (100, 1000, 20000)]
    assert gaps[0] > gaps[1] > gaps[2] > 0
    assert gaps[2] == pytest.approx(0.5 - 0.5 * math.log(2) + 0.5 * 0.5772156649, abs=0.02)


def test_jacobian_turns_a_bound_on_scaled_latents_into_a_bound_on_the_latents():
    # z ~ N(0, σ²) with σ = 0.25; the prior is fitted to z' = s z with s = 1/σ, so z' ~ N(0, 1)
    T, n, d, sigma = 1000, 128, 16, 0.25
    s = 1 / sigma
    g = torch.Generator().manual_seed(1)
    z = sigma * torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    bound_scaled = gaussian_denoiser(T, 1.0).bound_nats(s * z, decoder="continuous", generator=g)["total"]
    bound_z = bound_scaled + scale_jacobian_nats(s, d)
    nll_z = -torch.tensor(stats.norm(scale=sigma).logpdf(z.numpy())).flatten(1).sum(1)
    nll_scaled = -torch.tensor(stats.norm(scale=1.0).logpdf((s * z).numpy())).flatten(1).sum(1)
    # the gap is the same whichever variable we measure in: the Jacobian is exactly −d log s
    torch.testing.assert_close(bound_z - nll_z, bound_scaled - nll_scaled)
    assert float((bound_z - nll_z).mean()) > 0
