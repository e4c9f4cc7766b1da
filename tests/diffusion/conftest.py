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
