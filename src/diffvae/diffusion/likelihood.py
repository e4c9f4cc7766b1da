"""The variational bound of a diffusion model (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, §2):

    −log p(x₀) ≤ L_T + Σ_{t=1}^{T−1} L_t + L_0            (code's timesteps, t = paper's t + 1)

    L_T = KL(q(x_{T−1} | x₀) ‖ N(0, I))                                  "prior"
    L_t = E_q KL(q(x_{t−1} | x_t, x₀) ‖ p(x_{t−1} | x_t)),  t = 1…T−1     "diffusion"
    L_0 = E_q −log p(x₀ | x_{t=0})         (the paper's −log p(x₀ | x₁))   "decoder"

The reverse model is p(x_{t−1} | x_t) = N(μ̂_t, σ_t² I) with μ̂_t the posterior mean of
:meth:`NoiseSchedule.q_posterior` at x̂₀ = predict_x0_from_eps(x_t, ε̂(x_t, t)), so

    L_t = ½ Σ_dims [ log(σ_t² / β̃_t) + β̃_t / σ_t² − 1 + (μ̃_t(x₀) − μ̂_t)² / σ_t² ].

The variances σ_t² are a table (T,) — ``variance="small"`` (β̃_t, the default), ``"large"`` (β_t) or
a fitted one from :mod:`diffvae.diffusion.variance` (Analytic-DPM, NPR) — whose index 0 is the
decoder's σ₀²: L_0 is N(x̂₀, σ₀²) either integrated over the 8-bit bins (``"discretized"``, Ho et al.
eq. 13) or as a density (``"continuous"``, for latent diffusion).

Each term is one Monte-Carlo draw of x_t ~ q(x_t | x₀); all values are per example in nats (and
bits/dim via :func:`diffvae.distributions.nats_to_bpd`). Terms are computed in float64; the
network sees x_t in x₀'s dtype. Several variance tables are evaluated from the same network calls
(:func:`diffusion_bounds`). Nothing here disables gradients: evaluate under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from diffvae.diffusion.samplers import EpsFn
from diffvae.diffusion.schedule import NoiseSchedule, gather
from diffvae.diffusion.targets import predict_x0_from_eps
from diffvae.diffusion.variance import variance_table
from diffvae.distributions import discretized_gaussian_log_likelihood, gaussian_log_density, nats_to_bpd, normal_kl
from diffvae.errors import DiffvaeError

DECODERS = ("discretized", "continuous")
GRID_LEVELS = 255.0  # x on the 8-bit grid: (x + 1) · 127.5 is an integer in 0…255
Variance = str | torch.Tensor


def _check_inputs(x0: torch.Tensor, decoder: str) -> None:
    if decoder not in DECODERS:
        raise DiffvaeError(f"unknown decoder {decoder!r}; choose one of {list(DECODERS)}")
    if x0.ndim < 2:
        raise DiffvaeError(f"the bound needs a batch (N, ...), got shape {tuple(x0.shape)}")
    if decoder == "discretized":
        levels = (x0.double() + 1.0) * (GRID_LEVELS / 2.0)
        if bool((levels < -1e-3).any() | (levels > GRID_LEVELS + 1e-3).any()) or bool(((levels - levels.round()).abs() > 1e-3).any()):
            raise DiffvaeError("the discretized bound needs x on the 8-bit grid scaled to [-1, 1] (u / 127.5 - 1)")


def _tables(schedule: NoiseSchedule, variances: dict[str, Variance]) -> dict[str, torch.Tensor]:
    if not variances:
        raise DiffvaeError("give at least one reverse variance")
    return {name: variance_table(schedule, v) for name, v in variances.items()}


def prior_term(x0: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """L_T = KL(q(x_{T−1} | x₀) ‖ N(0, I)) summed over dimensions, nats per example (float64)."""
    mean, _, log_variance = schedule.q_mean_variance(x0.double(), schedule.T - 1)
    return normal_kl(mean, log_variance, 0.0, 0.0).flatten(1).sum(1)


def _terms_for_tables(eps_fn, x0, t, schedule, decoder, generator, tables) -> dict[str, torch.Tensor]:
    """One draw of L_t for each example at its own timestep t (N,), under every table; one network call."""
    device = generator.device if generator is not None else x0.device
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    x_t = schedule.q_sample(x0, t, noise)
    eps = eps_fn(x_t, t.to(x0.device))
    x0_64, x_t64 = x0.double(), x_t.double()
    x0_hat = predict_x0_from_eps(x_t64, t, eps.double(), schedule)
    true_mean, _, true_log_variance = schedule.q_posterior(x0_64, x_t64, t)
    model_mean, _, _ = schedule.q_posterior(x0_hat, x_t64, t)
    at_decoder = (t.to(x0.device) == 0).nonzero().squeeze(1)
    out = {}
    for name, table in tables.items():
        log_variance = torch.log(gather(table, t, x_t64))
        terms = normal_kl(true_mean, true_log_variance, model_mean, log_variance).flatten(1).sum(1)
        if at_decoder.numel() > 0:
            x0_d, mean_d, log_variance_d = x0_64[at_decoder], model_mean[at_decoder], log_variance[at_decoder]
            if decoder == "discretized":
                log_likelihood = discretized_gaussian_log_likelihood(x0_d, mean_d, 0.5 * log_variance_d)
            else:
                log_likelihood = gaussian_log_density(x0_d, mean_d, log_variance_d)
            terms[at_decoder] = -log_likelihood.flatten(1).sum(1)
        out[name] = terms
    return out


def bound_terms(eps_fn: EpsFn, x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, decoder: str = "discretized",
                generator: torch.Generator | None = None, variance: Variance = "small") -> torch.Tensor:
    """One draw of the term L_t for each example at its own timestep t (N,): the decoder NLL L_0
    where t = 0, the KL L_t elsewhere; nats per example (float64). One network call."""
    return _terms_for_tables(eps_fn, x0, t, schedule, decoder, generator, {"v": variance_table(schedule, variance)})["v"]


def with_labels(eps_fn, labels: torch.Tensor) -> EpsFn:
    """``eps_fn(x_t, t, labels)`` of a conditional model as the ``eps_fn(x_t, t)`` the bounds here take, for a
    batch whose example i has label ``labels[i]`` (N,): the bounds evaluate ε̂ on B stacked copies of the
    batch (:func:`_stacked_terms`: row j·N + i is example i), so the labels are stacked the same way."""
    n = labels.shape[0]

    def conditional_eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] % max(n, 1):
            raise DiffvaeError(f"{x_t.shape[0]} rows are not copies of a batch of {n} labelled examples")
        return eps_fn(x_t, t, labels.repeat(x_t.shape[0] // max(n, 1)).to(x_t.device))

    return conditional_eps_fn


def _stacked_terms(eps_fn, x0, t_columns, schedule, decoder, generator, tables) -> dict[str, torch.Tensor]:
    """Terms for timesteps t_columns (N, B) — B copies of the batch in one network call → {name: (N, B)}."""
    n, b = t_columns.shape
    stacked = x0.unsqueeze(0).expand(b, *x0.shape).reshape(b * n, *x0.shape[1:])
    terms = _terms_for_tables(eps_fn, stacked, t_columns.T.reshape(-1), schedule, decoder, generator, tables)
    return {name: value.reshape(b, n).T for name, value in terms.items()}


def diffusion_bounds(eps_fn: EpsFn, x0: torch.Tensor, schedule: NoiseSchedule, variances: dict[str, Variance], *,
                     decoder: str = "discretized", batch_timesteps: int = 10, generator: torch.Generator | None = None,
                     progress: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """The full bound under every named variance choice, from one set of draws: {name: parts} where
    parts are ``prior`` (L_T), ``decoder`` (L_0), ``diffusion`` (Σ_{t≥1} L_t), ``terms`` (N, T) with
    column 0 the decoder term and column t the KL L_t, and ``total`` = prior + Σ terms (nats)."""
    _check_inputs(x0, decoder)
    if batch_timesteps < 1:
        raise DiffvaeError(f"batch_timesteps must be at least 1, got {batch_timesteps}")
    tables = _tables(schedule, variances)
    n, T = x0.shape[0], schedule.T
    terms = {name: torch.empty(n, T, dtype=torch.float64, device=x0.device) for name in tables}
    for start in tqdm(range(0, T, batch_timesteps), desc="diffusion bound", disable=not progress, leave=False):
        chunk = torch.arange(start, min(start + batch_timesteps, T), device=x0.device)
        for name, value in _stacked_terms(eps_fn, x0, chunk.expand(n, -1), schedule, decoder, generator, tables).items():
            terms[name][:, chunk] = value
    prior = prior_term(x0, schedule)
    return {name: {"prior": prior, "decoder": t[:, 0], "diffusion": t[:, 1:].sum(1), "terms": t, "total": prior + t.sum(1)}
            for name, t in terms.items()}


def diffusion_bound(eps_fn: EpsFn, x0: torch.Tensor, schedule: NoiseSchedule, *, variance: Variance = "small",
                    decoder: str = "discretized", batch_timesteps: int = 10, generator: torch.Generator | None = None,
                    progress: bool = False) -> dict[str, torch.Tensor]:
    """The full bound in nats per example, every one of the T terms evaluated once, with reverse
    variances ``variance`` (parts as :func:`diffusion_bounds`). ``batch_timesteps`` timesteps share
    one network call on the batch stacked that many times."""
    return diffusion_bounds(eps_fn, x0, schedule, {"v": variance}, decoder=decoder, batch_timesteps=batch_timesteps,
                            generator=generator, progress=progress)["v"]


def diffusion_bpd(eps_fn: EpsFn, x: torch.Tensor, schedule: NoiseSchedule, *, variance: Variance = "small",
                  decoder: str = "discretized", batch_timesteps: int = 10, generator: torch.Generator | None = None,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """:func:`diffusion_bound` in bits per dimension (every entry, ``terms`` included); x on the
    8-bit grid scaled to [-1, 1] for the default discretized decoder. ``variance``: ``"small"``,
    ``"large"`` or a (T,) table such as :func:`diffvae.analytic_variance` returns."""
    bound = diffusion_bound(eps_fn, x, schedule, variance=variance, decoder=decoder, batch_timesteps=batch_timesteps,
                            generator=generator, progress=progress)
    dims = x[0].numel()
    return {key: nats_to_bpd(value, dims) for key, value in bound.items()}


def _draw_timesteps(n: int, K: int, T: int, proposal: torch.Tensor | None, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """K timesteps per example from ``proposal`` over 1…T−1 (uniform if None), and their probabilities."""
    if proposal is None:
        proposal = torch.full((T,), 1.0 / (T - 1), dtype=torch.float64)
        proposal[0] = 0.0
    proposal = torch.as_tensor(proposal, dtype=torch.float64).cpu()
    if proposal.shape != (T,) or float(proposal[0]) != 0.0 or not bool((proposal >= 0).all()) or abs(float(proposal.sum()) - 1) > 1e-6:
        raise DiffvaeError(f"a timestep proposal must be a ({T},) distribution over t = 1..T-1")
    sampler_device = generator.device if generator is not None else torch.device("cpu")
    t = torch.multinomial(proposal.to(sampler_device), n * K, replacement=True, generator=generator).reshape(n, K).cpu()
    return t.to(device), proposal[t].to(device)


def diffusion_bound_estimates(eps_fn: EpsFn, x: torch.Tensor, schedule: NoiseSchedule, K: int,
                              variances: dict[str, Variance], *, proposal: torch.Tensor | None = None,
                              generator: torch.Generator | None = None, decoder: str = "discretized",
                              batch_timesteps: int = 10) -> dict[str, dict[str, torch.Tensor]]:
    """Unbiased K-draw estimates of the bound under every named variance, from the same draws, in
    nats per example: {name: {total, stderr, prior, decoder, diffusion}} (each (N,); parts add to total).

    Draw k is Y_k = L_T + L_0⁽ᵏ⁾ + L_{t_k} / q(t_k) with t_k ~ q over 1…T−1 (``proposal``; uniform,
    i.e. (T − 1)·L_{t_k}, if None) and fresh noise for its L_0 and L_{t_k} (2 network evaluations).
    ``total`` is mean_k Y_k and ``stderr`` std_k(Y) / √K, so it covers all the randomness.
    """
    _check_inputs(x, decoder)
    if not isinstance(K, int) or isinstance(K, bool) or K < 2:
        raise DiffvaeError(f"the bound estimate needs K >= 2 timestep draws, got {K!r}")
    n, T = x.shape[0], schedule.T
    if T < 2:
        raise DiffvaeError("the bound estimate samples timesteps 1..T-1 and needs T >= 2")
    tables = _tables(schedule, variances)
    sampled_t, probability = _draw_timesteps(n, K, T, proposal, generator, x.device)
    columns = torch.cat([torch.zeros_like(sampled_t), sampled_t], dim=1)  # (N, 2K): L_0 draws, then L_t draws
    chunks = [_stacked_terms(eps_fn, x, columns[:, i:i + batch_timesteps], schedule, decoder, generator, tables)
              for i in range(0, 2 * K, batch_timesteps)]
    prior = prior_term(x, schedule)
    out = {}
    for name in tables:
        draws = torch.cat([chunk[name] for chunk in chunks], dim=1)
        decoder_draws, diffusion_draws = draws[:, :K], draws[:, K:] / probability
        estimates = prior.unsqueeze(1) + decoder_draws + diffusion_draws
        out[name] = {"total": estimates.mean(1), "stderr": estimates.std(1, unbiased=True) / K**0.5, "prior": prior,
                     "decoder": decoder_draws.mean(1), "diffusion": diffusion_draws.mean(1)}
    return out


def diffusion_bpd_estimate(eps_fn: EpsFn, x: torch.Tensor, schedule: NoiseSchedule, K: int,
                           generator: torch.Generator | None = None, *, variance: Variance = "small",
                           proposal: torch.Tensor | None = None, decoder: str = "discretized",
                           batch_timesteps: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """An unbiased estimate of the bound from K sampled timesteps (:func:`diffusion_bound_estimates`),
    bits/dim per example, with its standard error: (mean (N,), standard_error (N,))."""
    estimate = diffusion_bound_estimates(eps_fn, x, schedule, K, {"v": variance}, proposal=proposal, generator=generator,
                                         decoder=decoder, batch_timesteps=batch_timesteps)["v"]
    dims = x[0].numel()
    return nats_to_bpd(estimate["total"], dims), nats_to_bpd(estimate["stderr"], dims)
