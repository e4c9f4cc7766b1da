"""Compute-aware defaults: the largest recipe the budget's compute reaches, explicit settings first."""

import pytest
import torch

from diffvae.recipes import Recipe, apply, choose, compute_gflop, machine_gflops

SMALL = Recipe("small", 0.0, {"channels": 16}, {"batch_size": 32})
LARGE = Recipe("large", 1000.0, {"channels": 32}, {"batch_size": 64})


def test_choose_takes_the_largest_recipe_the_compute_reaches():
    assert choose((SMALL, LARGE), 999.0) is SMALL
    assert choose((SMALL, LARGE), 1000.0) is LARGE
    assert choose((SMALL, LARGE), 1e9) is LARGE
    assert choose((Recipe("a", 10.0), Recipe("b", 20.0)), 5.0).name == "a"  # nothing reached: the smallest
    assert choose((), 5.0) is None


def test_explicit_settings_win_over_the_recipe():
    model, train = apply(SMALL, {"channels": 48}, {"batch_size": 128, "lr": 1e-3}, explicit={"channels"})
    assert model == {"channels": 48} and train == {"batch_size": 32, "lr": 1e-3}
    model, train = apply(SMALL, {}, {"batch_size": 128, "lr": 1e-3}, explicit={"batch_size"})
    assert model == {"channels": 16} and train == {"batch_size": 128, "lr": 1e-3}
    assert apply(None, {"a": 1}, {"b": 2}, set()) == ({"a": 1}, {"b": 2})


def test_compute_is_the_budget_times_the_measured_speed():
    speed = machine_gflops("cpu", None, torch.get_num_threads())
    assert speed > 0.1  # any CPU that runs the tests does a 3×3 convolution faster than this
    assert compute_gflop(2.0) == pytest.approx(2 * compute_gflop(1.0))
    assert compute_gflop(1.0) == pytest.approx(60 * speed)
