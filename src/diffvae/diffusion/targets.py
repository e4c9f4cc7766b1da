"""What a denoising network predicts, conversions between predictions, and the training loss.

With x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (:mod:`diffvae.diffusion.schedule`), a network may predict

* ``"eps"`` — the noise ε (Ho et al. 2020),
* ``"x0"``  — the clean data x₀,
* ``"v"``   — the velocity v = √ᾱ_t ε − √(1 − ᾱ_t) x₀ (Salimans & Ho 2022).

Any one determines the others given x_t; :func:`split_prediction` is the one place that turns a
network output into (ε̂, x̂₀). Coefficients are computed in float64 from ᾱ_t and cast to the
dtype of the tensors; t may be −1 (the clean level, ᾱ = 1) wherever that makes sense.
"""

from __future__ import annotations

import torch

from diffvae.diffusion.schedule import NoiseSchedule, Timesteps, broadcast_to_batch
from diffvae.errors import DiffvaeError

PREDICTIONS = ("eps", "x0", "v")
WEIGHTINGS = ("uniform", "min_snr")


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise DiffvaeError(f"unknown prediction type {prediction!r}; choose one of {list(PREDICTIONS)}")


def predict_x0_from_eps(x_t: torch.Tensor, t: Timesteps, eps: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """x̂₀ = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
    alpha_cumprod = schedule.alphas_cumprod_at(t, x_t)
    return torch.sqrt(1.0 / alpha_cumprod).to(x_t.dtype) * x_t - torch.sqrt(1.0 / alpha_cumprod - 1.0).to(x_t.dtype) * eps


def predict_eps_from_x0(x_t: torch.Tensor, t: Timesteps, x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """ε̂ = (x_t − √ᾱ_t x₀) / √(1 − ᾱ_t), for t ≥ 0."""
    alpha_cumprod = schedule.alphas_cumprod_at(t, x_t)
    noise_std = torch.sqrt(1.0 - alpha_cumprod)
    return (1.0 / noise_std).to(x_t.dtype) * x_t - (torch.sqrt(alpha_cumprod) / noise_std).to(x_t.dtype) * x0


def v_target(x0: torch.Tensor, eps: torch.Tensor, t: Timesteps, schedule: NoiseSchedule) -> torch.Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x₀."""
    alpha_cumprod = schedule.alphas_cumprod_at(t, x0)
    return torch.sqrt(alpha_cumprod).to(x0.dtype) * eps - torch.sqrt(1.0 - alpha_cumprod).to(x0.dtype) * x0


def split_prediction(
    output: torch.Tensor, x_t: torch.Tensor, t: Timesteps, schedule: NoiseSchedule, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A network output of the given prediction type → (ε̂, x̂₀).

    * eps: ε̂ = output,  x̂₀ from :func:`predict_x0_from_eps`
    * x0:  x̂₀ = output, ε̂ from :func:`predict_eps_from_x0`
    * v:   x̂₀ = √ᾱ_t x_t − √(1 − ᾱ_t) v̂,   ε̂ = √ᾱ_t v̂ + √(1 − ᾱ_t) x_t
    """
    _check_prediction(prediction)
    if prediction == "eps":
        return output, predict_x0_from_eps(x_t, t, output, schedule)
    if prediction == "x0":
        return predict_eps_from_x0(x_t, t, output, schedule), output
    alpha_cumprod = schedule.alphas_cumprod_at(t, x_t)
    signal, noise = torch.sqrt(alpha_cumprod).to(x_t.dtype), torch.sqrt(1.0 - alpha_cumprod).to(x_t.dtype)
    return signal * output + noise * x_t, signal * x_t - noise * output


def prediction_target(x0: torch.Tensor, eps: torch.Tensor, t: Timesteps, schedule: NoiseSchedule, prediction: str) -> torch.Tensor:
    """What a network of the given prediction type should output for x_t built from (x₀, ε)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_target(x0, eps, t, schedule)


def snr(t: Timesteps, schedule: NoiseSchedule) -> torch.Tensor:
    """Signal-to-noise ratio of q(x_t | x₀): SNR(t) = ᾱ_t / (1 − ᾱ_t), float64 of t's shape."""
    alpha_cumprod = schedule.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]
    return alpha_cumprod / (1.0 - alpha_cumprod)


def loss_weight(
    t: Timesteps, schedule: NoiseSchedule, kind: str = "uniform", gamma: float = 5.0, prediction: str = "eps"
) -> torch.Tensor:
    """Per-example weight of the squared error of a ``prediction``-type network, float64 of t's shape.

    * uniform: 1 (the "simple" loss of Ho et al. 2020 in the network's own parametrisation).
    * min_snr: Hang et al. (2023) weight the x₀-space error by min(SNR, γ). Since
      ‖x₀ − x̂₀‖² = ‖ε − ε̂‖² / SNR = ‖v − v̂‖² / (SNR + 1), the weight on each parametrisation's
      own error is

          eps: min(SNR, γ) / SNR,    x0: min(SNR, γ),    v: min(SNR, γ) / (SNR + 1).
    """
    _check_prediction(prediction)
    if kind not in WEIGHTINGS:
        raise DiffvaeError(f"unknown loss weighting {kind!r}; choose one of {list(WEIGHTINGS)}")
    ratio = snr(t, schedule)
    if kind == "uniform":
        return torch.ones_like(ratio)
    if gamma <= 0:
        raise DiffvaeError(f"min-SNR gamma must be positive, got {gamma}")
    clipped = torch.clamp(ratio, max=gamma)
    return {"eps": clipped / ratio, "x0": clipped, "v": clipped / (ratio + 1.0)}[prediction]


def training_loss(
    model_output: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: Timesteps,
    schedule: NoiseSchedule,
    prediction: str = "eps",
    weighting: str = "uniform",
    gamma: float = 5.0,
) -> torch.Tensor:
    """Per-example loss (N,): w(t) · mean over non-batch dims of (output − target)², where the
    target is :func:`prediction_target` and w is :func:`loss_weight`."""
    target = prediction_target(x0, eps, t, schedule, prediction)
    squared_error = (model_output - target).pow(2).flatten(1).mean(dim=1)
    weight = loss_weight(t, schedule, weighting, gamma, prediction)
    return broadcast_to_batch(weight, squared_error).to(squared_error.dtype) * squared_error
