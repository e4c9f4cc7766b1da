"""The fixed-step solvers of diffvae.ode (tests/flow holds them: flow sampling is their first user): each
converges at its textbook order on an ODE with a known solution, and runs backwards on a reversed grid."""

from __future__ import annotations

import math

import pytest
import torch

from diffvae.errors import DiffvaeError
from diffvae.ode import SOLVERS, check_solver, function_evaluations, integrate

ORDER = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4}


def _rotation_with_decay(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dz/dt = A(t) z with A(t) = [[−t, −1], [1, −t]]; solution: exp(−t²/2) R(t) z(0)."""
    t = t.reshape(-1, 1)
    return torch.stack([-t[:, 0] * z[:, 0] - z[:, 1], z[:, 0] - t[:, 0] * z[:, 1]], dim=1)


def _exact(z0: torch.Tensor, t: float) -> torch.Tensor:
    c, s = math.cos(t), math.sin(t)
    return math.exp(-t * t / 2) * torch.stack([c * z0[:, 0] - s * z0[:, 1], s * z0[:, 0] + c * z0[:, 1]], dim=1)


@pytest.mark.parametrize("solver", SOLVERS)
def test_each_solver_converges_at_its_order(solver):
    z0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)
    errors = []
    for steps in (16, 32, 64):
        z1 = integrate(_rotation_with_decay, z0, torch.linspace(0, 2, steps + 1, dtype=torch.float64), solver)
        errors.append(float((z1 - _exact(z0, 2.0)).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
    assert orders[-1] == pytest.approx(ORDER[solver], abs=0.25), (solver, orders)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_reversed_grid_integrates_backwards(solver):
    z0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    z1 = integrate(_rotation_with_decay, z0, grid, solver)
    back = integrate(_rotation_with_decay, z1, grid.flip(0), solver)
    tolerance = {1: 1e-2, 2: 1e-4, 4: 1e-9}[ORDER[solver]]
    assert float((back - z0).abs().max()) < tolerance


def test_function_evaluations_count_the_calls_made():
    for solver in SOLVERS:
        calls = []
        integrate(lambda z, t: calls.append(1) or -z, torch.ones(1, 2), torch.linspace(1, 0, 6), solver)
        assert len(calls) == function_evaluations(solver, 5)


@pytest.mark.parametrize("solver, steps", [("rk45", 5), ("euler", 0), ("heun", -2), ("heun", 2.5), ("heun", True)])
def test_bad_solver_or_steps_raise_one_error(solver, steps):
    with pytest.raises(DiffvaeError):
        check_solver(solver, steps)
