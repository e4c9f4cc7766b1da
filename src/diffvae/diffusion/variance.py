"""The reverse-process variances of a trained diffusion model, for its bound — every choice in one place.

The reverse model is p(x_{t−1} | x_t) = N(μ̂_t, σ_t² I), μ̂_t = μ̃_t(x̂₀, x_t). Any σ_t² that does not
depend on the images being evaluated gives a valid bound (Ho et al. 2020, §3.2), so the variances
may be fitted on training data without retraining. With β̄_t = 1 − ᾱ_t, c_t the posterior mean's
x₀ coefficient and β̃_t the posterior variance (:class:`NoiseSchedule`), and x₀ − x̂₀ = √(β̄_t/ᾱ_t) (ε̂ − ε):

* ``"small"``    σ_t² = β̃_t (Ho et al.'s fixed-small);  ``"large"``  σ_t² = β_t (fixed-large).
* ``"analytic"`` Analytic-DPM (Bao et al. 2022, Theorem 1), from the second moment of ε̂ alone:

      σ_t² = β̃_t + c_t² (β̄_t / ᾱ_t) (1 − Γ_t),    Γ_t = E_q ‖ε̂(x_t, t)‖² / d,  clipped to [0, 1],

  which is the theorem's λ² + (√(β̄_t/α_t) − √(β̄_{t−1} − λ²))² (1 − Γ_t) at λ² = β̃_t (the
  bracket squared equals c_t² β̄_t / ᾱ_t); it is the optimal variance when ε̂ is the optimal ε*.
* ``"npr"``      the variance that minimises E KL for the network's own (imperfect) mean
  (Bao et al. 2022b, "NPR-DPM"):

      σ_t² = β̃_t + c_t² (β̄_t / ᾱ_t) R_t,           R_t = E_q ‖ε − ε̂(x_t, t)‖² / d.

Index 0 of every table is the decoder's variance σ₀² of L₀ (:mod:`diffvae.diffusion.likelihood`):
β̃ at t = 1 for the fixed choices (improved-diffusion's clipped log-variance), and for the fitted ones
the σ₀ that maximises the L₀ likelihood of the fit data — the mean squared error of x̂₀ for a
continuous decoder, a one-dimensional search for the discretized one.

For 8-bit data there is also a decoder that knows the data live on the grid: the exact posterior of a
pixel's level given x at t = 0 under the level histogram π of the fit images (pseudo-count ½ per level),

    p(x₀ = v | x_t) = π(v) N(x_t; √ᾱ₀ v, 1 − ᾱ₀) / Σ_u π(u) N(x_t; √ᾱ₀ u, 1 − ᾱ₀),   per pixel,

which needs no network; the fitted choices with it are named ``<choice>_levels``.

The moments are Monte-Carlo averages over fit images at up to ``points`` timesteps and linearly
interpolated in t between them (they vary smoothly); every value is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.diffusion.targets import predict_x0_from_eps
from diffvae.distributions import discretized_gaussian_log_likelihood, gaussian_log_density
from diffvae.errors import DiffvaeError

FIXED_VARIANCES = ("small", "large")
FITTED_VARIANCES = ("analytic", "npr")
UNIFORM_FLOOR = 0.1  # share of the importance proposal spread uniformly over t (keeps every weight bounded)


def fixed_variance(schedule: NoiseSchedule, name: str) -> torch.Tensor:
    """The (T,) table of a fixed choice: ``"small"`` (β̃_t) or ``"large"`` (β_t); index 0 is β̃ at t = 1."""
    if name == "small":
        return schedule.posterior_log_variance_clipped.exp()
    if name == "large":
        return torch.cat([schedule.posterior_log_variance_clipped[:1].exp(), schedule.betas[1:]])
    raise DiffvaeError(f"unknown reverse variance {name!r}; choose one of {list(FIXED_VARIANCES)} or pass a (T,) tensor")


def variance_table(schedule: NoiseSchedule, variance: str | torch.Tensor) -> torch.Tensor:
    """A checked (T,) float64 table of σ_t² (index 0: the decoder's σ₀²) from a name or a tensor."""
    if isinstance(variance, str):
        return fixed_variance(schedule, variance)
    table = torch.as_tensor(variance, dtype=torch.float64).detach().cpu()
    if table.shape != (schedule.T,):
        raise DiffvaeError(f"a reverse-variance table needs shape ({schedule.T},), got {tuple(table.shape)}")
    if not bool(torch.isfinite(table).all() & (table > 0).all()):
        raise DiffvaeError("every reverse variance must be a positive finite number")
    return table


def x0_error_coefficient(schedule: NoiseSchedule) -> torch.Tensor:
    """c_t² β̄_t / ᾱ_t (T,): turns E‖ε − ε̂‖²/d into E‖μ̃_t − μ̂_t‖²/d."""
    return schedule.posterior_mean_coef1**2 * (1.0 - schedule.alphas_cumprod) / schedule.alphas_cumprod


def analytic_from_moments(schedule: NoiseSchedule, gamma: torch.Tensor, decoder_variance: float) -> torch.Tensor:
    """Analytic-DPM's σ_t² = β̃_t + c_t² (β̄_t/ᾱ_t)(1 − Γ_t) from Γ_t = E‖ε̂‖²/d (T,); σ₀² given."""
    table = schedule.posterior_variance + x0_error_coefficient(schedule) * (1.0 - gamma.double().clamp(0.0, 1.0))
    table[0] = decoder_variance
    return table


def npr_from_residuals(schedule: NoiseSchedule, residual: torch.Tensor, decoder_variance: float) -> torch.Tensor:
    """NPR-DPM's σ_t² = β̃_t + c_t² (β̄_t/ᾱ_t) R_t from R_t = E‖ε − ε̂‖²/d (T,); σ₀² given."""
    table = schedule.posterior_variance + x0_error_coefficient(schedule) * residual.double().clamp(min=0.0)
    table[0] = decoder_variance
    return table


def fit_decoder_variance(x0: torch.Tensor, x0_hat: torch.Tensor, decoder: str) -> float:
    """The σ₀² that maximises the L₀ likelihood of x₀ given x̂₀: the MSE for a continuous Gaussian,
    a grid-then-golden-section search over log σ₀ for the discretized one (8-bit bins)."""
    x0, x0_hat = x0.double(), x0_hat.double()
    mse = float((x0 - x0_hat).square().mean())
    if decoder == "continuous":
        return max(mse, 1e-12)

    def nll(log_scale: float) -> float:
        return float(-discretized_gaussian_log_likelihood(x0, x0_hat, torch.tensor(log_scale, dtype=torch.float64)).mean())

    grid = np.linspace(math.log(1e-4), math.log(2.0), 48)
    best = int(np.argmin([nll(v) for v in grid]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        low, high = (low, b) if nll(a) < nll(b) else (a, high)
    return math.exp(low + high)  # σ₀² = exp(2 log σ₀)


def fit_points(T: int, points: int) -> torch.Tensor:
    """Ascending timesteps where the moments are measured: all of them for T ≤ points, else an even
    grid merged with a geometric one (the terms change fastest at small t), always with 0 and T − 1."""
    if T <= points:
        return torch.arange(T)
    even = np.linspace(0, T - 1, points * 2 // 3)
    geometric = np.geomspace(1, T - 1, points - len(even))
    return torch.from_numpy(np.unique(np.round(np.concatenate([[0], even, geometric])).astype(np.int64)))


def interpolate(points: torch.Tensor, values: torch.Tensor, T: int) -> torch.Tensor:
    """Values measured at ascending ``points`` linearly interpolated to every t ∈ 0…T−1 (float64)."""
    return torch.from_numpy(np.interp(np.arange(T), points.numpy(), values.double().cpu().numpy()))


@dataclass
class VarianceFit:
    """What :func:`fit_reverse_variances` measured on the fit images, and what it chose."""

    tables: dict[str, torch.Tensor]  # every choice's (T,) σ² table, index 0 = σ₀²
    expected_nats: dict[str, float]  # each choice's expected L₀ + Σ L_t per fit image (L_T is shared), ``_levels`` too
    best: str  # the choice with the smallest expected bound on the fit images
    proposal: torch.Tensor  # (T,) importance distribution over t ≥ 1 for ``best`` (proposal[0] = 0)
    gamma: torch.Tensor  # (T,) Γ_t = E‖ε̂‖²/d
    residual: torch.Tensor  # (T,) R_t = E‖ε − ε̂‖²/d
    level_log_prior: torch.Tensor | None = None  # (256,) log π of the grid levels (8-bit data only)


def _moments_at(eps_fn, x0, t_chunk, schedule, generator):
    """One draw per (image, t) for timesteps t_chunk: per-image ‖ε̂‖²/d and ‖ε − ε̂‖²/d, each (B, N),
    and x̂₀ of the first column's draw."""
    n, b = x0.shape[0], t_chunk.numel()
    stacked = x0.unsqueeze(0).expand(b, *x0.shape).reshape(b * n, *x0.shape[1:])
    t = t_chunk.repeat_interleave(n).to(x0.device)
    device = generator.device if generator is not None else x0.device
    noise = torch.randn(stacked.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    x_t = schedule.q_sample(stacked, t, noise)
    eps = eps_fn(x_t, t).double()
    eps_sq = eps.square().flatten(1).mean(1).reshape(b, n)
    residual = (noise.double() - eps).square().flatten(1).mean(1).reshape(b, n)
    x0_hat = predict_x0_from_eps(x_t.double()[:n], t_chunk[:1].to(x0.device), eps[:n], schedule)
    return eps_sq, residual, x0_hat


def _expected_terms(schedule: NoiseSchedule, table: torch.Tensor, residual: torch.Tensor,
                    residual_sq: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E L_t and E L_t² (T,) for t ≥ 1 with σ_t² = ``table``: per image L_t = A_t + B_t e with
    e = ‖ε − ε̂‖²/d, A_t = ½ d (log(σ²/β̃) + β̃/σ² − 1), B_t = ½ d c_t² (β̄_t/ᾱ_t) / σ_t²."""
    small = schedule.posterior_variance.clamp(min=1e-300)
    a = 0.5 * dims * (torch.log(table / small) + small / table - 1.0)
    b = 0.5 * dims * x0_error_coefficient(schedule) / table
    mean, second = a + b * residual, a**2 + 2 * a * b * residual + b**2 * residual_sq
    mean[0], second[0] = 0.0, 0.0
    return mean, second


def fit_reverse_variances(eps_fn, x: torch.Tensor, schedule: NoiseSchedule, *, decoder: str = "discretized",
                          points: int = 128, batch_timesteps: int = 10, generator: torch.Generator | None = None,
                          progress: bool = False) -> VarianceFit:
    """Measure Γ_t and R_t on the fit images ``x`` (N, ...) and build every choice of the module
    docstring; ``best`` is the one with the smallest expected bound on ``x``, and ``proposal`` the
    importance distribution q(t) ∝ √E L_t² (Nichol & Dhariwal 2021, eq. 18), mixed with a uniform floor."""
    if x.ndim < 2 or x.shape[0] < 1:
        raise DiffvaeError(f"fitting reverse variances needs a batch of images, got shape {tuple(x.shape)}")
    x0, T, dims = x.to(torch.float64), schedule.T, x[0].numel()
    where = fit_points(T, points)
    eps_sq, residual, residual_sq, x0_hat = [], [], [], None
    for start in tqdm(range(0, len(where), batch_timesteps), desc="fit variances", disable=not progress, leave=False):
        chunk = where[start:start + batch_timesteps]
        e2, r, hat = _moments_at(eps_fn, x0.to(x.dtype), chunk, schedule, generator)
        eps_sq.append(e2.mean(1))
        residual.append(r.mean(1))
        residual_sq.append(r.square().mean(1))
        x0_hat = hat if start == 0 else x0_hat
    gamma = interpolate(where, torch.cat(eps_sq), T)
    r_mean, r_sq = interpolate(where, torch.cat(residual), T), interpolate(where, torch.cat(residual_sq), T)
    decoder_variance = fit_decoder_variance(x0, x0_hat, decoder)
    tables = {name: fixed_variance(schedule, name) for name in FIXED_VARIANCES}
    tables["analytic"] = analytic_from_moments(schedule, gamma, decoder_variance)
    tables["npr"] = npr_from_residuals(schedule, r_mean, decoder_variance)
    expected, seconds = {}, {}
    for name, table in tables.items():
        mean, second = _expected_terms(schedule, table, r_mean, r_sq, dims)
        decoder_nats = _decoder_nats(x0, x0_hat, table[0], decoder)
        expected[name], seconds[name] = float(mean[1:].sum() + decoder_nats), second
    level_log_prior = None
    if decoder == "discretized":  # the grid-posterior decoder: the fitted choices with it
        level_log_prior = fit_level_prior(x0)
        levels_nats = float(level_posterior_nats(x0, schedule, level_log_prior, generator).mean())
        for name in FITTED_VARIANCES:
            expected[f"{name}_levels"] = expected[name] - _decoder_nats(x0, x0_hat, tables[name][0], decoder) + levels_nats
            seconds[f"{name}_levels"] = seconds[name]
    best = min(expected, key=expected.get)
    return VarianceFit(tables, expected, best, importance_proposal(seconds[best]), gamma, r_mean, level_log_prior)


def fit_level_prior(x0: torch.Tensor, pseudo_count: float = 0.5) -> torch.Tensor:
    """log π (256,): the histogram of the 8-bit levels of every pixel of ``x0`` (on [-1, 1]), with
    ``pseudo_count`` added to every level so that no level has probability 0."""
    levels = torch.round((x0.double().flatten() + 1.0) * 127.5).long().clamp(0, 255)
    counts = torch.bincount(levels.cpu(), minlength=256).double() + pseudo_count
    return torch.log(counts / counts.sum())


def level_posterior_nats(x0: torch.Tensor, schedule: NoiseSchedule, level_log_prior: torch.Tensor,
                         generator: torch.Generator | None = None, chunk: int = 1 << 16) -> torch.Tensor:
    """One draw of L₀ = −log p(x₀ | x_t) per example (N,), nats, for the grid-posterior decoder of the
    module docstring at t = 0 (x_t ~ q(x_t | x₀) drawn here; no network)."""
    device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float64).to(x0.device)
    a2 = float(schedule.alphas_cumprod[0])
    a, variance = math.sqrt(a2), 1.0 - a2
    grid = (torch.arange(256, dtype=torch.float64, device=x0.device) / 127.5 - 1.0)
    log_prior = level_log_prior.to(x0.device)
    x0_flat = x0.double().flatten()
    x_t = a * x0_flat + math.sqrt(variance) * noise.flatten()
    index = torch.round((x0_flat + 1.0) * 127.5).long().clamp(0, 255)
    nats = torch.empty_like(x0_flat)
    for i in range(0, x0_flat.numel(), chunk):
        logits = log_prior[None, :] - (x_t[i:i + chunk, None] - a * grid[None, :]) ** 2 / (2.0 * variance)
        chosen = logits.gather(1, index[i:i + chunk, None]).squeeze(1)
        nats[i:i + chunk] = torch.logsumexp(logits, dim=1) - chosen
    return nats.reshape(x0.shape[0], -1).sum(1)


def _decoder_nats(x0: torch.Tensor, x0_hat: torch.Tensor, variance: torch.Tensor, decoder: str) -> float:
    log_variance = torch.log(variance).double()
    if decoder == "discretized":
        log_likelihood = discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * log_variance)
    else:
        log_likelihood = gaussian_log_density(x0, x0_hat, log_variance)
    return float(-log_likelihood.flatten(1).sum(1).mean())


def importance_proposal(second_moment: torch.Tensor) -> torch.Tensor:
    """q(t) ∝ √E L_t² over t ≥ 1, mixed with ``UNIFORM_FLOOR`` of the uniform distribution; q(0) = 0."""
    root = second_moment.double().clamp(min=0.0).sqrt()
    root[0] = 0.0
    T = root.numel()
    uniform = torch.full_like(root, 1.0 / max(T - 1, 1))
    uniform[0] = 0.0
    if not float(root.sum()) > 0:
        return uniform
    return (1.0 - UNIFORM_FLOOR) * root / root.sum() + UNIFORM_FLOOR * uniform


def analytic_variance(eps_fn, x: torch.Tensor, schedule: NoiseSchedule, *, decoder: str = "discretized",
                      points: int = 128, generator: torch.Generator | None = None) -> torch.Tensor:
    """Analytic-DPM's per-step reverse variances (T,) estimated on ``x`` (index 0: the fitted decoder σ₀²);
    pass the result as ``variance=`` to :func:`diffvae.diffusion_bpd`."""
    return fit_reverse_variances(eps_fn, x, schedule, decoder=decoder, points=points, generator=generator).tables["analytic"]
