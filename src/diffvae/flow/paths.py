"""The probability path of flow matching / rectified flow and its training objective — pure functions.

Time convention (as Stable Diffusion 3, Esser et al. 2024): **data at t = 0, noise at t = 1**. With
x₀ the data and ε ~ N(0, I) the noise, the linear (rectified-flow) interpolant (Liu et al. 2023, eq. 1;
Lipman et al. 2023's conditional OT path with σ_min = 0) is

    x_t = (1 − t) x₀ + t ε,                          t ∈ [0, 1]
    u_t = dx_t/dt = ε − x₀                           (the conditional velocity, the regression target)

and the network v_θ(x_t, t) regresses it (conditional flow matching, Lipman et al. 2023, eq. 9):

    L(θ) = E_{t, x₀, ε} ‖v_θ(x_t, t) − (ε − x₀)‖²     (mean over dimensions here)

Its minimiser is the marginal velocity v(x, t) = E[ε − x₀ | x_t = x], whose ODE dx/dt = v carries the data
distribution at t = 0 to N(0, I) at t = 1 (and back). Given x_t and a velocity, x̂₀ = x_t − t v̂ and
ε̂ = x_t + (1 − t) v̂.

Time sampling: ``"uniform"`` t ~ U(0, 1), or ``"logit_normal"`` t = sigmoid(m + s n), n ~ N(0, 1)
(Esser et al. 2024, §3.1, eq. 19; m = 0, s = 1 their default), which puts more training on the middle times.
"""

from __future__ import annotations

import math

import torch

from diffvae.diffusion.schedule import broadcast_to_batch
from diffvae.errors import DiffvaeError

TIME_SAMPLINGS = ("logit_normal", "uniform")


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t) x₀ + t ε for per-example times t (N,) in [0, 1]."""
    t = broadcast_to_batch(t, x0).to(x0.dtype)
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """u_t = ε − x₀, the same at every t (the path is straight)."""
    return noise - x0


def predict_x0(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """x̂₀ = x_t − t v̂: where a straight line through x_t with velocity v̂ is at t = 0."""
    return x_t - broadcast_to_batch(t, x_t).to(x_t.dtype) * velocity


def predict_noise(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """ε̂ = x_t + (1 − t) v̂: where the same line is at t = 1."""
    return x_t + (1.0 - broadcast_to_batch(t, x_t).to(x_t.dtype)) * velocity


def check_time_sampling(name: str, mean: float = 0.0, std: float = 1.0) -> None:
    if name not in TIME_SAMPLINGS:
        raise DiffvaeError(f"unknown time sampling {name!r}; choose one of {', '.join(TIME_SAMPLINGS)}")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise DiffvaeError(f"the logit-normal time sampling needs a finite mean and a std > 0, got {mean}, {std}")


def sample_times(n: int, name: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """n training times in (0, 1), float32: U(0, 1) or sigmoid(mean + std · N(0, 1)) (module docstring)."""
    check_time_sampling(name, mean, std)
    draw_device = generator.device if generator is not None else device
    if name == "uniform":
        t = torch.rand(n, generator=generator, device=draw_device)
    else:
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=draw_device))
    return t.to(device) if device is not None else t


def logit_normal_density(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """π(t) = 1 / (s √(2π)) · 1 / (t (1 − t)) · exp(−(logit t − m)² / (2 s²)) (Esser et al. 2024, eq. 19)."""
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-example ‖v̂ − (ε − x₀)‖² averaged over the non-batch dimensions (N,)."""
    return (velocity - velocity_target(x0, noise)).pow(2).flatten(1).mean(1)
