"""Sampling and inversion of a flow-matching model: its ODE dx/dt = v(x, t) integrated on a time grid.

Data sit at t = 0 and noise at t = 1 (:mod:`diffvae.flow.paths`). Generation draws x₁ ~ N(0, I) and
integrates from t = 1 down to t = 0; inversion integrates the *same* ODE with the *same* solver from
t = 0 up to t = 1 on the reversed grid, so generation after inversion returns its input up to the
solver's error (which vanishes as the steps grow). The update rules (Euler, Heun, midpoint, RK4) live in
:mod:`diffvae.ode`, shared with the ODE likelihood. The grid is uniform in t:
t_i = 1 − i / steps (generation), as in Liu et al. 2023 and Lipman et al. 2023.
"""

from __future__ import annotations

import torch

from diffvae.errors import DiffvaeError
from diffvae.ode import SOLVERS, VectorField, check_solver, function_evaluations, integrate

SAMPLERS = SOLVERS  # euler | heun | midpoint | rk4


def time_grid(steps: int, ascending: bool = False) -> torch.Tensor:
    """steps + 1 float64 times from 1 to 0 (generation), or 0 to 1 with ``ascending`` (inversion)."""
    check_solver("euler", steps)
    grid = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)
    return grid if ascending else grid.flip(0)


def nfe(sampler: str, steps: int) -> int:
    """Velocity evaluations per sample: steps × (1 Euler, 2 Heun or midpoint, 4 RK4)."""
    return function_evaluations(sampler, steps)


def generate(velocity: VectorField, noise: torch.Tensor, sampler: str = "heun", steps: int = 25,
             progress: bool = False) -> torch.Tensor:
    """x₀ from x₁ = ``noise``: the ODE integrated from t = 1 to t = 0."""
    check_solver(sampler, steps)
    return integrate(velocity, noise, time_grid(steps), sampler, progress, desc=f"flow {sampler}")


def invert(velocity: VectorField, x0: torch.Tensor, sampler: str = "heun", steps: int = 25,
           progress: bool = False) -> torch.Tensor:
    """x₁ from x₀: the same ODE and solver from t = 0 to t = 1 (the reversed grid of :func:`generate`)."""
    check_solver(sampler, steps)
    return integrate(velocity, x0, time_grid(steps, ascending=True), sampler, progress, desc=f"flow {sampler} inversion")


def sample(velocity: VectorField, shape: tuple[int, ...], sampler: str = "heun", steps: int = 25,
           noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
           dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
           progress: bool = False) -> torch.Tensor:
    """Samples of ``shape`` (N, ...): x₁ ~ N(0, I) from ``generator`` (or ``noise``), then :func:`generate`."""
    check_solver(sampler, steps)
    if noise is None:
        draw_device = generator.device if generator is not None else device
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=draw_device)
    elif tuple(noise.shape) != tuple(shape):
        raise DiffvaeError(f"the noise has shape {tuple(noise.shape)} but samples of shape {tuple(shape)} were asked for")
    noise = noise.to(dtype=dtype, device=device if device is not None else noise.device)
    return generate(velocity, noise, sampler, steps, progress)
