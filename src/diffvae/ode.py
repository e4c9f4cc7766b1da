"""Fixed-step solvers for an ODE dz/dt = f(z, t) on a given time grid — one home for the update rules.

Flow matching samples (noise → data) and inverts (data → noise) with them, and every ODE likelihood
(:mod:`diffvae.ode_likelihood`) integrates its augmented state with them, so that a sampler and the
likelihood of the same model use the same rule. The grid is any monotone sequence of times (ascending or
descending: the same function integrates forwards or backwards). ``f(z, t)`` takes a batch z (N, ...) and a
float tensor t of shape (N,), and returns dz/dt shaped like z. With h = t_{i+1} − t_i (k-diffusion's
``sample_euler`` / ``sample_heun`` in the t-parametrisation; Butcher tableaus in Hairer et al. 1993, II.1):

* ``"euler"``    — z' = z + h f(z, t)                                                     1 call, order 1
* ``"heun"``     — z̃ = z + h f(z, t);  z' = z + h/2 (f(z, t) + f(z̃, t + h))              2 calls, order 2
* ``"midpoint"`` — z' = z + h f(z + h/2 f(z, t), t + h/2)                                 2 calls, order 2
* ``"rk4"``      — z' = z + h/6 (k₁ + 2k₂ + 2k₃ + k₄)                                    4 calls, order 4
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from tqdm.auto import tqdm

from diffvae.errors import DiffvaeError

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _times(t: float, z: torch.Tensor) -> torch.Tensor:
    return torch.full((z.shape[0],), float(t), dtype=z.dtype, device=z.device)


def euler_step(f: VectorField, z: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """z + h f(z, t)."""
    return z + (t_next - t) * f(z, _times(t, z))


def heun_step(f: VectorField, z: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Heun's method (explicit trapezoid): an Euler predictor, then the average of both slopes."""
    h = t_next - t
    slope = f(z, _times(t, z))
    predicted = z + h * slope
    return z + 0.5 * h * (slope + f(predicted, _times(t_next, z)))


def midpoint_step(f: VectorField, z: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """The explicit midpoint rule: the slope at the midpoint of an Euler half step."""
    h = t_next - t
    half = z + 0.5 * h * f(z, _times(t, z))
    return z + h * f(half, _times(t + 0.5 * h, z))


def rk4_step(f: VectorField, z: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """The classical fourth-order Runge–Kutta step."""
    h = t_next - t
    k1 = f(z, _times(t, z))
    k2 = f(z + 0.5 * h * k1, _times(t + 0.5 * h, z))
    k3 = f(z + 0.5 * h * k2, _times(t + 0.5 * h, z))
    k4 = f(z + h * k3, _times(t_next, z))
    return z + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


STEPS = {"euler": euler_step, "heun": heun_step, "midpoint": midpoint_step, "rk4": rk4_step}
CALLS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}
SOLVERS = tuple(STEPS)


def check_solver(solver: str, steps: int) -> None:
    """One error line for an unknown solver or a step count that is not a positive integer."""
    if solver not in STEPS:
        raise DiffvaeError(f"unknown ODE solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise DiffvaeError(f"--steps must be a positive integer, got {steps!r}")


def function_evaluations(solver: str, steps: int) -> int:
    """Calls of f that :func:`integrate` makes over ``steps`` steps."""
    check_solver(solver, steps)
    return CALLS_PER_STEP[solver] * int(steps)


def integrate(f: VectorField, z: torch.Tensor, grid: torch.Tensor | list[float], solver: str = "heun",
              progress: bool = False, desc: str = "ode") -> torch.Tensor:
    """z at grid[−1], starting from z at grid[0], with one ``solver`` step per grid interval."""
    grid = [float(t) for t in torch.as_tensor(grid, dtype=torch.float64).tolist()]
    check_solver(solver, max(len(grid) - 1, 0))
    step = STEPS[solver]
    for t, t_next in tqdm(list(zip(grid[:-1], grid[1:])), desc=desc, disable=not progress, leave=False):
        z = step(f, z, t, t_next)
    return z
