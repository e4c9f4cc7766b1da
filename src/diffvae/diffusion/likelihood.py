"""The variational bound of a diffusion model (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, §2):

    −log p(x₀) ≤ L_T + Σ_{t=1}^{T−1} L_t + L_0            (code's timesteps, t = paper's t + 1)

    L_T = KL(q(x_{T−1} | x₀) ‖ N(0, I))                                  "prior"
    L_t = E_q KL(q(x_{t−1} | x_t, x₀) ‖ p(x_{t−1} | x_t)),  t = 1…T−1     "diffusion"
    L_0 = E_q −log p(x₀ | x_{t=0})         (the paper's −log p(x₀ | x₁))   "decoder"

The reverse model is p(x_{t−1} | x_t) = N(μ̃_t(x̂₀, x_t), β̃_t I): the posterior mean of
:meth:`NoiseSchedule.q_posterior` at x̂₀ = predict_x0_from_eps(x_t, ε̂(x_t, t)), with the fixed-small
variance β̃_t. Both Gaussians share β̃_t, so L_t = ‖μ̃(x₀) − μ̃(x̂₀)‖² / (2 β̃_t). The decoder is
that Gaussian at t = 0 — mean x̂₀, variance β̃ at t = 1 (``posterior_log_variance_clipped``, as
improved-diffusion) — either integrated over the 8-bit bins (``"discretized"``, Ho et al. eq. 13)
or as a density (``"continuous"``, for latent diffusion).

Each term is one Monte-Carlo draw of x_t ~ q(x_t | x₀); all values are per example in nats (and
bits/dim via :func:`diffvae.distributions.nats_to_bpd`). Terms are computed in float64; the
network sees x_t in x₀'s dtype. Nothing here disables gradients: evaluate under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from diffvae.diffusion.samplers import EpsFn
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.diffusion.targets import predict_x0_from_eps
from diffvae.distributions import discretized_gaussian_log_likelihood, gaussian_log_density, nats_to_bpd, normal_kl
from diffvae.errors import DiffvaeError

DECODERS = ("discretized", "continuous")
GRID_LEVELS = 255.0  # x on the 8-bit grid: (x + 1) · 127.5 is an integer in 0…255


def _check_inputs(x0: torch.Tensor, decoder: str) -> None:
    if decoder not in DECODERS:
        raise DiffvaeError(f"unknown decoder {decoder!r}; choose one of {list(DECODERS)}")
    if x0.ndim < 2:
        raise DiffvaeError(f"the bound needs a batch (N, ...), got shape {tuple(x0.shape)}")
    if decoder == "discretized":
        levels = (x0.double() + 1.0) * (GRID_LEVELS / 2.0)
        if bool((levels < -1e-3).any() | (levels > GRID_LEVELS + 1e-3).any()) or bool(((levels - levels.round()).abs() > 1e-3).any()):
            raise DiffvaeError("the discretized bound needs x on the 8-bit grid scaled to [-1, 1] (u / 127.5 - 1)")


def prior_term(x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_T = KL(q(x_{T−1} | x₀) ‖ N(0, I)) summed over dimensions, nats per example (float64)."""
    mean, _, log_variance = schedule.q_mean_variance(x0.double(), schedule.T - 1)
    return normal_kl(mean, log_variance, 0.0, 0.0).flatten(1).sum(1)


def bound_terms(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    t: torch.Tensor,
    schedule: NoiseSchedule,
    decoder: str = "discretized",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One draw of the term L_t for each example at its own timestep t (N,): the decoder NLL L_0
    where t = 0, the KL L_t elsewhere; nats per example (float64). One network call."""
    device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)
    eps = eps_fn(x_t, t.to(x0.device))
    x0_64, x_t64 = x0.double(), x_t.double()
    x0_hat = predict_x0_from_eps(x_t64, t, eps.double(), schedule)
    true_mean, _, log_variance = schedule.q_posterior(x0_64, x_t64, t)
    model_mean, _, _ = schedule.q_posterior(x0_hat, x_t64, t)
    terms = normal_kl(true_mean, log_variance, model_mean, log_variance).flatten(1).sum(1)
    at_decoder = (t.to(terms.device) == 0).nonzero().squeeze(1)
    if at_decoder.numel() > 0:
        x0_d, mean_d, log_variance_d = x0_64[at_decoder], model_mean[at_decoder], log_variance[at_decoder]
        if decoder == "discretized":
            log_likelihood = discretized_gaussian_log_likelihood(x0_d, mean_d, 0.5 * log_variance_d)
        else:
            log_likelihood = gaussian_log_density(x0_d, mean_d, log_variance_d)
        terms[at_decoder] = -log_likelihood.flatten(1).sum(1)
    return terms


def _stacked_terms(eps_fn, x0, t_columns, schedule, decoder, generator) -> torch.Tensor:
    """Terms for timesteps t_columns (N, B) — B copies of the batch in one network call → (N, B)."""
    n, b = t_columns.shape
    stacked = x0.unsqueeze(0).expand(b, *x0.shape).reshape(b * n, *x0.shape[1:])
    terms = bound_terms(eps_fn, stacked, t_columns.T.reshape(-1), schedule, decoder, generator)
    return terms.reshape(b, n).T


def diffusion_bound(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    decoder: str = "discretized",
    batch_timesteps: int = 10,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The full bound in nats per example, every one of the T terms evaluated once.

    Returns ``prior`` (L_T), ``decoder`` (L_0), ``diffusion`` (Σ_{t≥1} L_t), ``terms`` (N, T) with
    column 0 the decoder term and column t the KL L_t, and ``total`` = prior + Σ terms.
    ``batch_timesteps`` timesteps share one network call on the batch stacked that many times.
    """
    _check_inputs(x0, decoder)
    if batch_timesteps < 1:
        raise DiffvaeError(f"batch_timesteps must be at least 1, got {batch_timesteps}")
    n, T = x0.shape[0], schedule.T
    terms = torch.empty(n, T, dtype=torch.float64, device=x0.device)
    starts = range(0, T, batch_timesteps)
    for start in tqdm(starts, desc="diffusion bound", disable=not progress, leave=False):
        chunk = torch.arange(start, min(start + batch_timesteps, T), device=x0.device)
        terms[:, chunk] = _stacked_terms(eps_fn, x0, chunk.expand(n, -1), schedule, decoder, generator)
    prior = prior_term(x0, schedule)
    return {
        "prior": prior,
        "decoder": terms[:, 0],
        "diffusion": terms[:, 1:].sum(1),
        "terms": terms,
        "total": prior + terms.sum(1),
    }


def diffusion_bpd(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    decoder: str = "discretized",
    batch_timesteps: int = 10,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`diffusion_bound` in bits per dimension (every entry, ``terms`` included); x on the
    8-bit grid scaled to [-1, 1] for the default discretized decoder."""
    bound = diffusion_bound(eps_fn, x, schedule, decoder=decoder, batch_timesteps=batch_timesteps,
                            generator=generator, progress=progress)
    dims = x[0].numel()
    return {key: nats_to_bpd(value, dims) for key, value in bound.items()}


def diffusion_bpd_estimate(
    eps_fn: EpsFn,
    x: torch.Tensor,
    schedule: NoiseSchedule,
    K: int,
    generator: torch.Generator | None = None,
    *,
    decoder: str = "discretized",
    batch_timesteps: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An unbiased estimate of the bound from K random timesteps, bits/dim per example, with its
    standard error: (mean (N,), standard_error (N,)).

    Each of the K draws is one unbiased estimate  Y_k = L_T + L_0 + (T − 1) · L_{t_k},
    t_k ~ Uniform{1, …, T−1}, with fresh noise for its L_0 and L_{t_k} (2 network evaluations);
    the result is mean_k Y_k and std_k(Y) / √K, so the standard error covers all the randomness.
    """
    _check_inputs(x, decoder)
    if not isinstance(K, int) or K < 2:
        raise DiffvaeError(f"the bound estimate needs K >= 2 timestep draws, got {K!r}")
    n, T = x.shape[0], schedule.T
    if T < 2:
        raise DiffvaeError("the bound estimate samples timesteps 1..T-1 and needs T >= 2")
    device = generator.device if generator is not None else x.device
    sampled_t = torch.randint(1, T, (n, K), generator=generator, device=device).to(x.device)
    columns = torch.cat([torch.zeros_like(sampled_t), sampled_t], dim=1)  # (N, 2K): L_0 draws, then L_t draws
    draws = torch.cat(
        [_stacked_terms(eps_fn, x, columns[:, i:i + batch_timesteps], schedule, decoder, generator)
         for i in range(0, 2 * K, batch_timesteps)],
        dim=1,
    )
    estimates = prior_term(x, schedule).unsqueeze(1) + draws[:, :K] + (T - 1) * draws[:, K:]
    dims = x[0].numel()
    mean = estimates.mean(1)
    standard_error = estimates.std(1, unbiased=True) / K**0.5
    return nats_to_bpd(mean, dims), nats_to_bpd(standard_error, dims)
