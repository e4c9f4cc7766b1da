"""Prediction types, their conversions, min-SNR weights and the training loss."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.diffusion.targets import (
    loss_weight,
    predict_eps_from_x0,
    predict_x0_from_eps,
    prediction_target,
    snr,
    split_prediction,
    training_loss,
    v_target,
)
from diffvae.errors import DiffvaeError

T_VALUES = torch.tensor([0, 3, 100, 500, 900, 999])


def _batch(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(T_VALUES), 2, 3, 3, generator=generator, dtype=dtype)
    eps = torch.randn(len(T_VALUES), 2, 3, 3, generator=generator, dtype=dtype)
    return x0, eps


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_split_prediction_recovers_eps_and_x0_from_the_exact_target(prediction, dtype, tol):
    schedule = NoiseSchedule.cosine(1000)
    x0, eps = _batch(dtype)
    x_t = schedule.q_sample(x0, T_VALUES, eps)
    target = prediction_target(x0, eps, T_VALUES, schedule, prediction)
    eps_hat, x0_hat = split_prediction(target, x_t, T_VALUES, schedule, prediction)
    assert eps_hat.dtype == dtype and x0_hat.dtype == dtype
    # rounding of x_t is amplified by 1/√ᾱ_t in x̂₀ (2·10⁴ at the cosine schedule's t = 999) and by
    # 1/√(1 − ᾱ_t) in ε̂ (160 at t = 0): compare errors relative to those factors
    alpha_cumprod = schedule.alphas_cumprod_at(T_VALUES, x0)
    x0_gain, eps_gain = alpha_cumprod.rsqrt().to(dtype), (1 - alpha_cumprod).rsqrt().to(dtype)
    assert ((eps_hat - eps).abs() / eps_gain).max().item() < tol
    assert ((x0_hat - x0).abs() / x0_gain).max().item() < tol


def test_eps_x0_conversions_round_trip_and_clean_level():
    schedule = NoiseSchedule.linear(1000)
    x0, eps = _batch(torch.float64, seed=1)
    x_t = torch.randn_like(x0)
    x0_hat = predict_x0_from_eps(x_t, T_VALUES, eps, schedule)
    torch.testing.assert_close(predict_eps_from_x0(x_t, T_VALUES, x0_hat, schedule), eps)
    torch.testing.assert_close(predict_x0_from_eps(x_t, -1, eps, schedule), x_t)  # ᾱ = 1: x is clean


def test_v_target_matches_diffusers_velocity():
    schedule = NoiseSchedule.linear(1000)
    reference = DDPMScheduler(num_train_timesteps=1000)
    x0, eps = _batch(torch.float32, seed=2)
    torch.testing.assert_close(v_target(x0, eps, T_VALUES, schedule), reference.get_velocity(x0, eps, T_VALUES), atol=1e-5, rtol=1e-5)


def test_snr_and_min_snr_weights_match_the_direct_formula():
    schedule = NoiseSchedule.linear(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1 - betas)
    gamma = 5.0
    for t in [0, 10, 80, 400, 999]:
        ratio = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        assert snr(t, schedule).item() == pytest.approx(ratio, rel=1e-10)
        clipped = min(ratio, gamma)
        expected = {"eps": clipped / ratio, "x0": clipped, "v": clipped / (ratio + 1)}
        for prediction, value in expected.items():
            assert loss_weight(torch.tensor([t]), schedule, "min_snr", gamma, prediction).item() == pytest.approx(value, rel=1e-10)
            assert loss_weight(t, schedule, "uniform", gamma, prediction).item() == 1.0
    # both regimes occur: weight < 1 for ε at high SNR, = 1 once SNR < γ
    assert loss_weight(0, schedule, "min_snr", gamma, "eps").item() < 0.01
    assert loss_weight(999, schedule, "min_snr", gamma, "eps").item() == 1.0


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weighted_loss_is_min_snr_times_the_x0_error(prediction):
    """Hang et al.: whatever the parametrisation, the weighted loss is min(SNR, γ) ‖x₀ − x̂₀‖²."""
    schedule = NoiseSchedule.cosine(1000)
    x0, eps = _batch(torch.float64, seed=3)
    x_t = schedule.q_sample(x0, T_VALUES, eps)
    output = prediction_target(x0, eps, T_VALUES, schedule, prediction) + 0.3 * torch.randn_like(x0)  # a wrong prediction
    _, x0_hat = split_prediction(output, x_t, T_VALUES, schedule, prediction)
    loss = training_loss(output, x0, eps, T_VALUES, schedule, prediction, weighting="min_snr", gamma=5.0)
    expected = torch.clamp(snr(T_VALUES, schedule), max=5.0) * (x0 - x0_hat).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)


def test_training_loss_is_per_example_mean_squared_error():
    schedule = NoiseSchedule.linear(1000)
    x0, eps = _batch(torch.float32, seed=4)
    output = torch.randn_like(x0)
    loss = training_loss(output, x0, eps, T_VALUES, schedule, "x0")
    assert loss.shape == (len(T_VALUES),) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, ((output - x0) ** 2).mean(dim=(1, 2, 3)))
    assert training_loss(eps, x0, eps, T_VALUES, schedule, "eps").abs().max().item() == 0.0


def test_bad_names_raise_diffvae_error():
    schedule = NoiseSchedule.linear(10)
    x = torch.zeros(2, 3)
    with pytest.raises(DiffvaeError, match="prediction"):
        split_prediction(x, x, 1, schedule, "epsilon")
    with pytest.raises(DiffvaeError, match="weighting"):
        loss_weight(1, schedule, "p2")
    with pytest.raises(DiffvaeError):
        loss_weight(1, schedule, "min_snr", gamma=0.0)
