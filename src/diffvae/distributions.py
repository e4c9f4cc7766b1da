"""Densities, masses and divergences shared by every family — one home for each formula.

All functions are elementwise and return nats; callers sum over the dimensions they need.
Images live on the 8-bit grid scaled to [-1, 1] (:mod:`diffvae.images`): 256 levels ``2/255``
apart, so a discretized likelihood integrates a density over ``[x − 1/255, x + 1/255]`` and the
outer bins extend to ±∞ (Ho et al. 2020, eq. 13; Salimans et al. 2017 for the logistic).
Bits per dimension is the one conversion :func:`nats_to_bpd`.
"""

from __future__ import annotations

import math

import torch

BIN_HALF_WIDTH = 1.0 / 255.0  # half the spacing of the 256 levels on [-1, 1]
LOG_2PI = math.log(2.0 * math.pi)


def nats_to_bpd(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Bits per dimension of a per-example negative log-likelihood in nats: nats / (D · ln 2)."""
    return nats / (dims * math.log(2.0))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor | float, logvar2: torch.Tensor | float) -> torch.Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) elementwise, in nats.

    KL = ½ [ log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²) / σ₂² − 1 ]
    """
    mean2 = torch.as_tensor(mean2, dtype=mean1.dtype, device=mean1.device)
    logvar2 = torch.as_tensor(logvar2, dtype=mean1.dtype, device=mean1.device)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor | float, logvar: torch.Tensor | float) -> torch.Tensor:
    """log N(x; μ, σ²) elementwise: −½ [ log 2π + log σ² + (x − μ)² / σ² ]."""
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _log_interval_mass(log_cdf, upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(F(upper) − F(lower)) for a symmetric CDF F, evaluated in its lower tail for stability.

    With F(−u) = 1 − F(u), the mass of [l, u] equals F(−l) − F(−u); we use whichever form keeps
    both arguments in the tail where log F is far from 0, then
    log(F(b) − F(a)) = log F(b) + log(−expm1(log F(a) − log F(b))).
    """
    flip = (upper + lower) > 0
    b = torch.where(flip, -lower, upper)
    a = torch.where(flip, -upper, lower)
    log_b, log_a = log_cdf(b), log_cdf(a)
    return log_b + torch.log(-torch.expm1(torch.clamp(log_a - log_b, max=-1e-30)))


def _discretized_log_likelihood(log_cdf, x: torch.Tensor, mean: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    centered = x - mean
    upper = inv_scale * (centered + BIN_HALF_WIDTH)
    lower = inv_scale * (centered - BIN_HALF_WIDTH)
    middle = _log_interval_mass(log_cdf, upper, lower)
    left_edge = log_cdf(upper)  # x = −1: mass of (−∞, −1 + 1/255]
    right_edge = log_cdf(-lower)  # x = +1: mass of [1 − 1/255, ∞)
    return torch.where(x < -0.999, left_edge, torch.where(x > 0.999, right_edge, middle))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for x on the 256-level grid in [-1, 1] under a Gaussian N(mean, exp(log_scale)²)
    integrated over each bin (Ho et al. 2020, L0):

        P(x) = Φ((x + 1/255 − μ)/σ) − Φ((x − 1/255 − μ)/σ),  the outer bins extended to ±∞.
    """
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    return _discretized_log_likelihood(torch.special.log_ndtr, x, mean, torch.exp(-log_scale))


def discretized_logistic_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for x on the 256-level grid in [-1, 1] under a logistic(mean, s = exp(log_scale))
    integrated over each bin (Salimans et al. 2017, PixelCNN++):

        P(x) = σ((x + 1/255 − μ)/s) − σ((x − 1/255 − μ)/s),  the outer bins extended to ±∞.
    """
    log_scale = torch.as_tensor(log_scale, dtype=x.dtype, device=x.device)
    return _discretized_log_likelihood(torch.nn.functional.logsigmoid, x, mean, torch.exp(-log_scale))


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; σ(logits)) for x ∈ {0, 1}: x·log σ(l) + (1 − x)·log σ(−l)."""
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
