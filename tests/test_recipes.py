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


def test_the_speed_is_the_best_this_machine_has_shown(tmp_path, monkeypatch):
    """A busy moment reads slower, never faster (233 against 495 GFLOP/s on one machine within an hour): the speed
    a recipe is chosen by is the best stored for this machine, kept in the cache; a damaged or unwritable cache
    gives the measured speed."""
    from diffvae.recipes import SPEED_FILE, remembered_best

    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path))
    assert remembered_best("cpu-a", 495.0) == 495.0
    assert remembered_best("cpu-a", 233.0) == 495.0  # the busy reading does not lower it
    assert remembered_best("cpu-b", 100.0) == 100.0  # another machine (or dtype, or thread count) has its own
    assert remembered_best("cpu-a", 510.0) == 510.0 and remembered_best("cpu-a", 300.0) == 510.0
    (tmp_path / SPEED_FILE).write_text('{"cpu-a": "fast", "cpu-b": -3, ')  # damaged: read as empty, rewritten
    assert remembered_best("cpu-a", 250.0) == 250.0 and remembered_best("cpu-a", 200.0) == 250.0
    (tmp_path / SPEED_FILE).write_text('[1, 2]')
    assert remembered_best("cpu-a", 240.0) == 240.0
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("DIFFVAE_CACHE", str(blocked / "cache"))  # cannot be created
    assert remembered_best("cpu-a", 42.0) == 42.0


def test_machine_gflops_reads_the_remembered_speed(tmp_path, monkeypatch):
    import json

    import diffvae.recipes as recipes

    monkeypatch.setenv("DIFFVAE_CACHE", str(tmp_path))
    key = recipes.speed_key("cpu", None, 1)
    (tmp_path / recipes.SPEED_FILE).write_text(json.dumps({key: 1e9}))
    recipes.machine_gflops.cache_clear()
    try:
        assert recipes.machine_gflops("cpu", None, 1) == 1e9
    finally:
        recipes.machine_gflops.cache_clear()
