"""Analytic flows for the flow-matching tests: the exact marginal velocity of Gaussian and Gaussian-mixture
data under the linear path x_t = (1 − t) x₀ + t ε (data at t = 0, noise at t = 1), derived independently of
the package from the joint Gaussian of (x₀, ε, x_t)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch


@dataclass
class DiagonalGaussian:
    """x₀ ~ N(μ, diag s²). x_t ~ N((1 − t) μ, S_t), S_t = (1 − t)² s² + t², and
    v(x, t) = E[ε − x₀ | x_t = x] = −μ + (t − (1 − t) s²) / S_t · (x − (1 − t) μ) (elementwise)."""

    mean: torch.Tensor  # (D,)
    var: torch.Tensor  # (D,)

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64).reshape(-1, *[1] * (x.ndim - 1))
        mean, var = self.mean.reshape(1, *x.shape[1:]), self.var.reshape(1, *x.shape[1:])
        s_t = (1 - t) ** 2 * var + t**2
        return (-mean + (t - (1 - t) * var) / s_t * (x - (1 - t) * mean)).to(x.dtype)

    def flow(self, x0: torch.Tensor, t: float) -> torch.Tensor:
        """The exact ODE solution from t = 0: x_t = (1 − t) μ + √(S_t / s²) (x₀ − μ)."""
        mean, var = self.mean.reshape(1, *x0.shape[1:]), self.var.reshape(1, *x0.shape[1:])
        return (1 - t) * mean + torch.sqrt(((1 - t) ** 2 * var + t**2) / var) * (x0 - mean)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean.reshape(1, *x.shape[1:]), self.var.reshape(1, *x.shape[1:])
        return (-0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)).flatten(1).sum(1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(n, *self.mean.shape, generator=generator, dtype=torch.float64)
        return self.mean + self.var.sqrt() * noise


@dataclass
class GaussianMixture2D:
    """x₀ ~ Σ_k π_k N(μ_k, r² I) in 2-D; v(x, t) = Σ_k w_k(x, t) v_k(x, t), w_k ∝ π_k N(x; (1 − t) μ_k, S_t I)."""

    means: torch.Tensor  # (K, 2)
    weights: torch.Tensor  # (K,)
    var: float

    def velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64).reshape(-1, 1, 1)
        centres = (1 - t) * self.means.unsqueeze(0)  # (N, K, 2)
        s_t = (1 - t) ** 2 * self.var + t**2
        log_w = torch.log(self.weights).unsqueeze(1) - ((x.unsqueeze(1) - centres) ** 2).sum(-1, keepdim=True) / (2 * s_t) - torch.log(s_t)
        w = torch.softmax(log_w, dim=1)
        v_k = -self.means.unsqueeze(0) + (t - (1 - t) * self.var) / s_t * (x.unsqueeze(1) - centres)
        return (w * v_k).sum(1).to(x.dtype)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (self.weights.unsqueeze(1) * self.means).sum(0)
        centred = self.means - mean
        cov = self.var * torch.eye(2, dtype=torch.float64) + (self.weights[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
        return mean, cov


@pytest.fixture
def gaussian():
    return DiagonalGaussian(torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64),
                            torch.tensor([0.3, 1.5, 0.05], dtype=torch.float64))


@pytest.fixture
def mixture():
    return GaussianMixture2D(torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=torch.float64),
                             torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), 0.1)
