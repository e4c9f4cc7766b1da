"""The forward process: schedules against diffusers, the posterior against Gaussian conditioning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffvae.diffusion.schedule import NoiseSchedule, gather
from diffvae.errors import DiffvaeError

DIFFUSERS_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alphas_cumprod_match_diffusers(name):
    ours = NoiseSchedule.from_name(name, 1000)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name])
    assert ours.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(ours.alphas_cumprod, reference.alphas_cumprod.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.betas, reference.betas.double(), atol=1e-6, rtol=0)


def test_cosine_follows_its_closed_form_where_beta_is_not_capped():
    T, s = 200, 0.008
    schedule = NoiseSchedule.cosine(T, s=s)
    f = lambda tau: math.cos((tau + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 1, 50, 120, 190]:  # ᾱ_t = f((t+1)/T) / f(0)
        assert schedule.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-10)
    assert schedule.betas.max().item() == pytest.approx(0.999)  # the last step is capped
    assert schedule.betas[-1].item() == pytest.approx(0.999)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_is_the_gaussian_conditional_of_the_joint(name):
    """Condition the joint of (x_{t−1}, x_t) given x₀ by the Gaussian formulas, independently."""
    schedule = NoiseSchedule.from_name(name, 1000)
    x0 = torch.tensor([[0.7], [-0.3], [0.1]], dtype=torch.float64)
    x_t = torch.tensor([[0.2], [1.5], [-0.9]], dtype=torch.float64)
    for t in [1, 2, 10, 500, 998, 999]:
        a_prev = schedule.alphas_cumprod[t - 1].item()
        alpha, beta = 1 - schedule.betas[t].item(), schedule.betas[t].item()
        prior_mean, prior_var = math.sqrt(a_prev) * x0, 1 - a_prev  # x_{t−1} | x₀
        gain = math.sqrt(alpha) * prior_var / (alpha * prior_var + beta)  # x_t = √α x_{t−1} + √β z
        expected_mean = prior_mean + gain * (x_t - math.sqrt(alpha) * prior_mean)
        expected_var = prior_var - gain * math.sqrt(alpha) * prior_var
        mean, variance, log_variance = schedule.q_posterior(x0, x_t, t)
        torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-12)
        assert variance.flatten()[0].item() == pytest.approx(expected_var, rel=1e-9)
        assert log_variance.flatten()[0].item() == pytest.approx(math.log(expected_var), rel=1e-9)


def test_posterior_at_t0_is_the_clean_level_with_clipped_log_variance():
    schedule = NoiseSchedule.linear(100)
    x0, x_t = torch.randn(4, 3), torch.randn(4, 3)
    mean, variance, log_variance = schedule.q_posterior(x0, x_t, 0)
    torch.testing.assert_close(mean, x0)
    assert variance.abs().max().item() == 0.0
    assert log_variance.flatten()[0].item() == pytest.approx(math.log(schedule.posterior_variance[1].item()), rel=1e-6)


def test_fixed_small_variance_matches_diffusers():
    # diffusers forms 1 − ᾱ_t/ᾱ_{t−1} in float32, so agreement is to float32 precision (absolute)
    ours = NoiseSchedule.linear(1000)
    reference = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    for t in [1, 5, 300, 999]:
        assert ours.posterior_variance[t].item() == pytest.approx(reference._get_variance(t).item(), rel=0, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_q_sample_matches_diffusers_add_noise_per_example(dtype):
    schedule = NoiseSchedule.cosine(1000)
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=generator, dtype=dtype)
    noise = torch.randn(6, 3, 4, 4, generator=generator, dtype=dtype)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    ours = schedule.q_sample(x0, t, noise)
    assert ours.dtype == dtype and ours.shape == x0.shape
    expected = reference.add_noise(x0.float(), noise.float(), t).to(dtype)
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)


def test_q_mean_variance_and_scalar_timestep():
    schedule = NoiseSchedule.linear(50)
    x0 = torch.randn(5, 2, dtype=torch.float64)
    mean, variance, log_variance = schedule.q_mean_variance(x0, 20)
    a = schedule.alphas_cumprod[20].item()
    torch.testing.assert_close(mean, math.sqrt(a) * x0)
    assert variance.shape == (1, 1) and variance.item() == pytest.approx(1 - a)
    assert log_variance.item() == pytest.approx(math.log(1 - a))


def test_clean_level_and_range_of_alphas_cumprod_at():
    schedule = NoiseSchedule.linear(10)
    like = torch.zeros(3, 2, 2)
    values = schedule.alphas_cumprod_at(torch.tensor([-1, 0, 9]), like)
    assert values.shape == (3, 1, 1) and values.dtype == torch.float64
    assert values[0].item() == 1.0 and values[2].item() == schedule.alphas_cumprod[-1].item()
    with pytest.raises(DiffvaeError):
        schedule.alphas_cumprod_at(10, like)
    with pytest.raises(DiffvaeError):
        schedule.alphas_cumprod_at(-2, like)


def test_gather_broadcasts_and_casts():
    table = torch.arange(5, dtype=torch.float64)
    like = torch.zeros(2, 3, 4, dtype=torch.float32)
    out = gather(table, torch.tensor([4, 1]), like)
    assert out.shape == (2, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [4.0, 1.0]


def test_respaced_keeps_marginals_and_matches_diffusers_respaced_ddpm_variance():
    schedule = NoiseSchedule.linear(1000)
    reference = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    reference.set_timesteps(50)
    kept = reference.timesteps.flip(0)
    respaced = schedule.respaced(kept)
    torch.testing.assert_close(respaced.alphas_cumprod, schedule.alphas_cumprod[kept])
    for i in [1, 10, 49]:
        expected = reference._get_variance(int(kept[i])).item()
        assert respaced.posterior_variance[i].item() == pytest.approx(expected, rel=0, abs=1e-7)
    np.testing.assert_allclose(respaced.betas[0].item(), 1 - schedule.alphas_cumprod[0].item())


def test_bad_input_raises_diffvae_error():
    with pytest.raises(DiffvaeError, match="unknown noise schedule"):
        NoiseSchedule.from_name("sigmoid", 10)
    with pytest.raises(DiffvaeError):
        NoiseSchedule.linear(0)
    with pytest.raises(DiffvaeError):
        NoiseSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(DiffvaeError):
        NoiseSchedule.linear(10).respaced([3, 2])
