"""Shared pieces of the diffusion-math tests: the analytic ε-predictor of Gaussian data."""

from __future__ import annotations

import pytest
import torch

from diffvae.diffusion.schedule import NoiseSchedule


def _optimal_eps(schedule: NoiseSchedule, sigma: float):
    """ε*(x_t, t) = E[ε | x_t] for data x₀ ~ N(0, σ² I): √(1 − ᾱ_t) x_t / (ᾱ_t σ² + 1 − ᾱ_t).

    It is linear in x_t, so x̂₀ = k_t x_t with k_t = √ᾱ_t σ² / (ᾱ_t σ² + 1 − ᾱ_t). The coefficient
    is computed in float64 from the schedule's ᾱ and applied in x_t's dtype.
    """

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_cumprod = schedule.alphas_cumprod[t.cpu()].reshape(-1, *([1] * (x_t.ndim - 1)))
        coefficient = torch.sqrt(1 - alpha_cumprod) / (alpha_cumprod * sigma**2 + 1 - alpha_cumprod)
        return coefficient.to(x_t.dtype) * x_t

    return eps_fn


@pytest.fixture
def optimal_eps():
    """The factory ``optimal_eps(schedule, sigma) -> eps_fn``."""
    return _optimal_eps


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _quantized_posterior_mean(x_t: torch.Tensor, alpha_cumprod: torch.Tensor, levels: torch.Tensor,
                              log_probabilities: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """E[x₀ | x_t] elementwise for x₀ drawn independently per dimension from the discrete
    distribution (levels, probabilities): a softmax over the levels of log p(v) + log N(x_t; √ᾱ v, 1 − ᾱ)."""
    flat_x, flat_a = x_t.double().reshape(-1), alpha_cumprod.double().expand_as(x_t).reshape(-1)
    out = torch.empty_like(flat_x)
    for i in range(0, flat_x.numel(), chunk):
        x, a = flat_x[i:i + chunk, None], flat_a[i:i + chunk, None]
        logits = log_probabilities[None, :] - (x - a.sqrt() * levels[None, :]) ** 2 / (2 * (1 - a))
        out[i:i + chunk] = (torch.softmax(logits, dim=1) * levels[None, :]).sum(1)
    return out.reshape(x_t.shape)


def _exact_quantized_eps(schedule: NoiseSchedule, levels: torch.Tensor, probabilities: torch.Tensor):
    """ε*(x_t, t) = (x_t − √ᾱ_t E[x₀ | x_t]) / √(1 − ᾱ_t) for data on a discrete grid (the exact optimum)."""
    log_probabilities = torch.log(probabilities.double().clamp(min=1e-300))

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_cumprod = schedule.alphas_cumprod[t.cpu()].reshape(-1, *([1] * (x_t.ndim - 1)))
        mean = _quantized_posterior_mean(x_t, alpha_cumprod, levels.double(), log_probabilities)
        return ((x_t.double() - alpha_cumprod.sqrt() * mean) / (1 - alpha_cumprod).sqrt()).to(x_t.dtype)

    return eps_fn


@pytest.fixture
def exact_quantized_eps():
    """The factory ``exact_quantized_eps(schedule, levels, probabilities) -> eps_fn``."""
    return _exact_quantized_eps
