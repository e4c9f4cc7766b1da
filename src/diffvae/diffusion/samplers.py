"""Reverse-process samplers, DDIM inversion and spherical interpolation of noise.

Every sampler takes ``eps_fn(x_t, t) -> ε̂`` — a batch and an int64 tensor (N,) of timesteps in
{0, …, T−1}, returning the predicted noise in x_t's dtype — and a descending grid of timesteps
from :func:`timesteps`. Each ends at the clean level ``t = −1`` (ᾱ = 1; diffusers'
``set_alpha_to_one=True`` / ``final_sigmas_type="zero"``). One short function per sampler holds
its update rule (k-diffusion style), and one line of :data:`SAMPLERS` its defaults; :func:`sample` draws x_T
and dispatches through that table.

Timestep grids (``spacing``; diffusers' names, ``steps_offset = 0``):

* ``"leading"``  — t_i = i · (T // steps), i = 0…steps−1. DDPM and DDIM default, as diffusers'
  DDPMScheduler / DDIMScheduler.
* ``"trailing"`` — round(T − i · T/steps) − 1 (starts at T−1).
* ``"linspace"`` — round(linspace(0, T−1, steps)).
* ``"linspace_exclusive"`` — round(linspace(0, T−1, steps + 1)) without its first point 0: the
  clean level takes its place. DPM-Solver++ default, as diffusers'
  DPMSolverMultistepScheduler's ``"linspace"``.

The step after grid[i] goes to grid[i+1] (to the clean level after the last one); for the
default spacings this is the same as diffusers. Predicted x₀ is not clipped unless
``clip_x0=True`` (diffusers' DDPM/DDIM clip by default; pass ``clip_sample=False`` to compare).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.diffusion.targets import predict_eps_from_x0, predict_x0_from_eps
from diffvae.errors import DiffvaeError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SPACINGS = ("leading", "trailing", "linspace", "linspace_exclusive")


def timesteps(schedule: NoiseSchedule, steps: int, spacing: str = "leading") -> torch.Tensor:
    """The descending int64 grid of ``steps`` timesteps a sampler visits (module docstring)."""
    T = schedule.T
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise DiffvaeError(f"the number of sampling steps must be an integer in 1..{T}, got {steps!r}")
    steps = int(steps)
    if spacing == "leading":
        grid = np.arange(steps) * (T // steps)
    elif spacing == "trailing":
        grid = np.round(np.arange(T, 0, -T / steps))[::-1] - 1
    elif spacing == "linspace":
        grid = np.linspace(0, T - 1, steps).round()
    elif spacing == "linspace_exclusive":
        grid = np.linspace(0, T - 1, steps + 1).round()[1:]
    else:
        raise DiffvaeError(f"unknown timestep spacing {spacing!r}; choose one of {list(SPACINGS)}")
    grid = grid.astype(np.int64)
    if len(np.unique(grid)) != len(grid):
        raise DiffvaeError(f"{steps} steps repeat timesteps with spacing {spacing!r}; use fewer steps")
    return torch.from_numpy(grid[::-1].copy())  # int64, descending


def _batch_timesteps(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (as diffusers)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _steps(grid: torch.Tensor, progress: bool, desc: str) -> Iterable:
    return tqdm(list(enumerate(grid.tolist())), desc=desc, disable=not progress, leave=False)


def _x0(x: torch.Tensor, t: int, eps: torch.Tensor, schedule: NoiseSchedule, clip_x0: bool) -> torch.Tensor:
    x0 = predict_x0_from_eps(x, t, eps, schedule)
    return x0.clamp(-1.0, 1.0) if clip_x0 else x0


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    t_to: int,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
    rederive_eps: bool = True,
) -> torch.Tensor:
    """One DDIM update of x at level t to level t_to (Song et al. 2021, eq. 12), t, t_to ∈ {−1…T−1}:

        x̂₀   = (x − √(1 − ᾱ_t) ε̂) / √ᾱ_t                       (:func:`predict_x0_from_eps`)
        σ    = η √((1 − ᾱ_to) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_to)
        x_to = √ᾱ_to x̂₀ + √(1 − ᾱ_to − σ²) ε̂ + σ z,            z = ``noise``

    With η = 0 it is deterministic and also runs upwards (t_to > t): given the same ε̂ it inverts
    the downward step exactly. η = 1 is ancestral sampling with the posterior variance β̃.
    With ``clip_x0`` and ``rederive_eps``, ε̂ is re-derived from the clipped x̂₀,
    ε̂ = (x − √ᾱ_t x̂₀) / √(1 − ᾱ_t) (GLIDE; diffusers' ``use_clipped_model_output``), so the step
    stays on the line through x̂₀ and x.
    """
    alpha_cumprod_to = schedule.alphas_cumprod_at(t_to, x)
    x0 = _x0(x, t, eps, schedule, clip_x0)
    if clip_x0 and rederive_eps:
        eps = predict_eps_from_x0(x, t, x0, schedule)
    if eta == 0:
        return torch.sqrt(alpha_cumprod_to).to(x.dtype) * x0 + torch.sqrt(1.0 - alpha_cumprod_to).to(x.dtype) * eps
    if t_to >= t or noise is None:
        raise DiffvaeError("a stochastic DDIM step (eta > 0) must go down in t and needs noise")
    alpha_cumprod = schedule.alphas_cumprod_at(t, x)
    variance = eta**2 * (1.0 - alpha_cumprod_to) / (1.0 - alpha_cumprod) * (1.0 - alpha_cumprod / alpha_cumprod_to)
    direction = torch.sqrt(torch.clamp(1.0 - alpha_cumprod_to - variance, min=0.0))
    return (
        torch.sqrt(alpha_cumprod_to).to(x.dtype) * x0
        + direction.to(x.dtype) * eps
        + torch.sqrt(variance).to(x.dtype) * noise
    )


def sample_ddpm(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timestep_grid: torch.Tensor,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    progress: bool = False,
    **_,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) with the fixed-small variance β̃, on the schedule
    respaced to the grid (improved-diffusion; with all T steps it is the original chain):

        x̂₀ = predict_x0_from_eps(x_t, ε̂(x_t, t)),   x_prev = μ̃(x̂₀, x_t) + √β̃ z,   no z on the last step.
    """
    ascending = timestep_grid.flip(0)
    respaced = schedule.respaced(ascending)
    last = len(ascending) - 1
    for step, t in _steps(timestep_grid, progress, "ddpm"):
        index = last - step  # position of t in the respaced schedule
        x0 = _x0(x, index, eps_fn(x, _batch_timesteps(t, x)), respaced, clip_x0)
        mean, _, log_variance = respaced.q_posterior(x0, x, index)
        x = mean + torch.exp(0.5 * log_variance) * _randn(x, generator) if index > 0 else mean
    return x


def sample_ddim(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timestep_grid: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    progress: bool = False,
    rederive_eps: bool = True,
    **_,
) -> torch.Tensor:
    """DDIM (Song et al. 2021): :func:`ddim_step` from each grid level to the next, then to clean.
    For η > 0 noise is drawn on every step (as diffusers), including the last, where σ = 0."""
    if eta < 0:
        raise DiffvaeError(f"DDIM eta must be non-negative, got {eta}")
    levels = timestep_grid.tolist() + [-1]
    for step, t in _steps(timestep_grid, progress, "ddim"):
        eps = eps_fn(x, _batch_timesteps(t, x))
        noise = _randn(x, generator) if eta > 0 else None
        x = ddim_step(x, eps, t, levels[step + 1], schedule, eta, noise, clip_x0, rederive_eps)
    return x


def sample_dpmpp_2m(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    timestep_grid: torch.Tensor,
    clip_x0: bool = False,
    progress: bool = False,
    **_,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; k-diffusion ``sample_dpmpp_2m``), multistep in
    data prediction. With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t / σ_t), h = λ_next − λ_t:

        D      = x̂₀                                            on the first step
        D      = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀_previous,  r = h_previous / h   afterwards
        x_next = (σ_next / σ_t) x − α_next (e^{−h} − 1) D

    The last step goes to the clean level σ = 0 with the first-order update, which is x = x̂₀
    (diffusers' ``final_sigmas_type="zero"``, ``lower_order_final``).
    """
    alphas_cumprod = schedule.alphas_cumprod[timestep_grid]
    alpha, sigma = torch.sqrt(alphas_cumprod), torch.sqrt(1.0 - alphas_cumprod)
    log_snr_half = (torch.log(alpha) - torch.log(sigma)).tolist()  # λ
    last = len(timestep_grid) - 1
    previous_x0, previous_h = None, None
    for step, t in _steps(timestep_grid, progress, "dpm++2m"):
        x0 = _x0(x, t, eps_fn(x, _batch_timesteps(t, x)), schedule, clip_x0)
        if step == last:
            return x0
        h = log_snr_half[step + 1] - log_snr_half[step]
        if previous_x0 is None:
            denoised = x0
        else:
            r = previous_h / h
            denoised = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * previous_x0
        x = float(sigma[step + 1] / sigma[step]) * x - float(alpha[step + 1]) * math.expm1(-h) * denoised
        previous_x0, previous_h = x0, h
    return x


@dataclass(frozen=True)
class Sampler:
    """A sampler of the table: ``run(eps_fn, x_T, schedule, grid, *, generator, clip_x0, progress, eta, rederive_eps)``
    returns x₀ (each takes the options it uses and ignores the rest); ``spacing`` is its default timestep grid
    (diffusers' default for it), ``steps`` its default number of steps (None: all T), ``eta`` whether DDIM's η
    applies, ``stochastic`` whether it draws noise on the way, ``evaluations_per_step`` its network calls per step."""

    run: Callable[..., torch.Tensor]
    spacing: str
    steps: int | None = None
    eta: bool = False
    stochastic: bool = False
    evaluations_per_step: int = 1


# The diffusion samplers: a new one is its function above plus one line here.
SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(sample_ddpm, "leading", stochastic=True),
    "ddim": Sampler(sample_ddim, "leading", 50, eta=True),
    "dpm++2m": Sampler(sample_dpmpp_2m, "linspace_exclusive", 20),
}


def sample(
    eps_fn: EpsFn,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    x_T: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    progress: bool = False,
    clip_x0: bool = False,
    spacing: str | None = None,
    rederive_eps: bool = True,
) -> torch.Tensor:
    """Draw samples of ``shape`` (N, ...) with ``sampler``, a name in :data:`SAMPLERS` ("ddpm", "ddim", "dpm++2m").

    ``steps`` and ``spacing`` default to the sampler's (T for ddpm, 50 for ddim and 20 for dpm++2m; the
    diffusers default spacing, module docstring). x_T ~ N(0, I) is drawn from ``generator`` unless given;
    ``eta`` is used by ddim only, and so is ``rederive_eps`` (ε̂ from the clipped x̂₀; :func:`ddim_step`).
    """
    if sampler not in SAMPLERS:
        raise DiffvaeError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    chosen = SAMPLERS[sampler]
    if eta != 0 and not chosen.eta:
        raise DiffvaeError(f"eta applies to the ddim sampler only, not {sampler!r}")
    if x_T is None:
        x_T = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device if generator else device)
    elif tuple(x_T.shape) != tuple(shape):
        raise DiffvaeError(f"x_T has shape {tuple(x_T.shape)} but samples of shape {tuple(shape)} were asked for")
    x = x_T.to(dtype=dtype, device=device if device is not None else x_T.device)
    grid = timesteps(schedule, steps if steps is not None else chosen.steps or schedule.T, spacing or chosen.spacing)
    return chosen.run(eps_fn, x, schedule, grid, generator=generator, clip_x0=clip_x0, progress=progress, eta=eta,
                      rederive_eps=rederive_eps)


def ddim_invert(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int = 50,
    spacing: str = "leading",
    refine: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """x_T for x₀: the deterministic :func:`ddim_step` run upwards along the DDIM sampler's own
    grid (clean → grid[−1] → … → grid[0]), so ``sample(..., "ddim", steps, x_T=x_T)`` returns
    approximately x₀.

    The sampler's step from t down to s uses ε̂(x_t, t); inverting it needs x_t, not yet known, so
    the step from s up to t uses ε̂(x_s, t) (diffusers' DDIMInverseScheduler). With ``refine = k``
    that x_t is improved by k fixed-point iterations x_t ← step(x_s, ε̂(x_t, t)), which solve the
    sampler's step exactly when they converge, at k extra network calls per step.
    """
    if refine < 0:
        raise DiffvaeError(f"refine must be a non-negative number of iterations, got {refine}")
    levels = [-1] + timesteps(schedule, steps, spacing).flip(0).tolist()
    x = x0
    for s, t in tqdm(list(zip(levels[:-1], levels[1:])), desc="ddim inversion", disable=not progress, leave=False):
        t_batch = _batch_timesteps(t, x)
        x_up = ddim_step(x, eps_fn(x, t_batch), s, t, schedule)
        for _ in range(refine):
            x_up = ddim_step(x, eps_fn(x_up, t_batch), s, t, schedule)
        x = x_up
    return x


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation per example, flattening non-batch dims (Shoemake 1985):

        θ = arccos(⟨a, b⟩ / (‖a‖ ‖b‖)),   slerp(a, b; w) = sin((1 − w) θ)/sin θ · a + sin(w θ)/sin θ · b,

    linear interpolation where a and b are (nearly) parallel. ``weight`` is a float or a tensor (N,).
    """
    if a.shape != b.shape:
        raise DiffvaeError(f"slerp needs tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    w = torch.as_tensor(weight, dtype=torch.float64, device=a.device).reshape(-1, 1)
    cos_theta = (flat_a * flat_b).sum(1, keepdim=True) / (flat_a.norm(dim=1, keepdim=True) * flat_b.norm(dim=1, keepdim=True))
    theta = torch.arccos(cos_theta.clamp(-1.0, 1.0))
    sin_theta = torch.sin(theta)
    parallel = sin_theta < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin_theta), sin_theta)
    coef_a = torch.where(parallel, 1.0 - w, torch.sin((1.0 - w) * theta) / safe_sin)
    coef_b = torch.where(parallel, w, torch.sin(w * theta) / safe_sin)
    return (coef_a * flat_a + coef_b * flat_b).reshape(a.shape).to(a.dtype)
