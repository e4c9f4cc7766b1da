"""Variational bounds and posterior diagnostics for a VAE — pure functions of tensors.

Everything is per example and in nats unless stated; the prior is p(z) = N(0, I) and the
posterior q(z|x) = N(μ(x), diag σ²(x)) is passed as ``(mean, logvar)`` of shape (N, L).
Densities and divergences come from :mod:`diffvae.distributions`; bits/dim is
:func:`diffvae.distributions.nats_to_bpd`.
"""

from __future__ import annotations

import math

import torch

from diffvae.distributions import gaussian_log_density, normal_kl


def kl_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z_j|x) ‖ N(0, 1)) for every example and latent dimension j, shape (N, L), nats.

    KL_j = ½ (μ_j² + σ_j² − log σ_j² − 1)  (``normal_kl`` against the standard normal).
    """
    return normal_kl(mean, logvar, 0.0, 0.0)


def negative_elbo(log_px_given_z: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """−ELBO = −log p(x|z) + KL(q(z|x) ‖ p(z)), per example (N,), nats.

    ``log_px_given_z`` (N,) is the reconstruction log-likelihood at z ~ q(z|x) (one sample, an
    unbiased estimate of E_q[log p(x|z)]); ``kl`` (N,) is the total KL over latent dimensions.
    In expectation −ELBO ≥ −log p(x).
    """
    if log_px_given_z.shape != kl.shape:
        raise ValueError(f"log p(x|z) has shape {tuple(log_px_given_z.shape)} but KL has {tuple(kl.shape)}")
    return kl - log_px_given_z


def iwae_bound(log_px_given_z: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor) -> torch.Tensor:
    """Negative importance-weighted bound −L_K of Burda et al. (2016), per example (N,), nats.

        −L_K = −( logsumexp_k [log p(x|z_k) + log p(z_k) − log q(z_k|x)] − log K ),  z_k ~ q(z|x)

    Inputs are shaped (K, N). In expectation −log p(x) ≤ −L_K ≤ −L_1 = −ELBO, and −L_K → −log p(x)
    as K → ∞.
    """
    log_weights = log_px_given_z + log_pz - log_qz
    if log_weights.dim() != 2:
        raise ValueError(f"expected (K, N) log-weights, got shape {tuple(log_weights.shape)}")
    num_samples = log_weights.shape[0]
    return -(torch.logsumexp(log_weights, dim=0) - math.log(num_samples))


def free_bits_kl(kl_per_dim_batch: torch.Tensor, free_bits: float) -> torch.Tensor:
    """KL term with free bits (Kingma et al. 2016, IAF §C.8), a scalar in nats per example.

        Σ_j max(λ, (1/N) Σ_n KL_nj)

    A latent dimension whose batch-average KL is below λ nats costs a constant λ, so it gets
    no gradient pushing it further toward the prior. λ = 0 gives the plain batch-mean KL.
    """
    mean_kl_per_dim = kl_per_dim_batch.mean(dim=0)
    return torch.clamp(mean_kl_per_dim, min=free_bits).sum()


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """Weight of the KL term at a training step: β · min(1, step / warmup_steps).

    Linear warm-up from 0 at step 0 to β at ``step == warmup_steps`` (β throughout when
    ``warmup_steps`` is 0).
    """
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(step, 0) / warmup_steps)


def active_units(posterior_means: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """Number of active latent units (Burda et al. 2016, §5.2) and the per-unit activity.

    Unit u is active when A_u = Var_x(E_{q(z|x)}[z_u]) > threshold, the variance of the posterior
    mean over the data (unbiased, over the N rows of ``posterior_means`` (N, L)).
    Returns (count, A) with A of shape (L,).
    """
    variances = posterior_means.double().var(dim=0, unbiased=True)
    return int((variances > threshold).sum().item()), variances


def mutual_information_ceiling(num_examples: int) -> float:
    """The largest value :func:`mutual_information` can return on N examples: log N nats.

    Each example's term is log q(z_n|x_n) − log[(1/N) Σ_m q(z_n|x_m)] ≤ log q(z_n|x_n) − log[q(z_n|x_n)/N]
    = log N, since the sum contains the example's own term. An estimate at the ceiling is a lower
    bound on I(x; z) (the encoder may carry far more than log N nats)."""
    if num_examples < 1:
        raise ValueError(f"the mutual-information estimate needs at least one example, got {num_examples}")
    return math.log(num_examples)


def mutual_information(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk_elements: int = 1 << 22,
) -> float:
    """I(x; z) under the aggregate posterior q(z) = (1/N) Σ_n q(z|x_n), nats (He et al. 2019, calc_mi).

        I = E_x E_{q(z|x)}[log q(z|x)] − E_{q(z)}[log q(z)],
        log q(z) ≈ logsumexp_m log q(z|x_m) − log N,

    with one z_n ~ q(z|x_n) per example. Both terms use the same draws (the first by Monte Carlo
    rather than the analytic entropy), so the estimate is at most log N
    (:func:`mutual_information_ceiling`): it needs N well above exp(I). Computed in float64, in chunks of rows of the (N, N) matrix log q(z_n|x_m).
    """
    mean = mean.detach().double()
    logvar = logvar.detach().double()
    num_examples, latent_dim = mean.shape
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64,
                        device=generator.device if generator is not None else mean.device).to(mean.device)
    z = mean + torch.exp(0.5 * logvar) * noise
    rows_per_chunk = max(1, chunk_elements // max(1, num_examples * latent_dim))
    log_ratio_total = mean.new_zeros(())
    for start in range(0, num_examples, rows_per_chunk):
        z_chunk = z[start:start + rows_per_chunk]
        # log q(z_n | x_m) for n in the chunk, all m: (chunk, N)
        log_q_all = gaussian_log_density(z_chunk[:, None, :], mean[None], logvar[None]).sum(-1)
        index = torch.arange(start, start + z_chunk.shape[0], device=mean.device)
        log_q_own = log_q_all[torch.arange(z_chunk.shape[0], device=mean.device), index]
        log_q_aggregate = torch.logsumexp(log_q_all, dim=1) - math.log(num_examples)
        log_ratio_total = log_ratio_total + (log_q_own - log_q_aggregate).sum()
    return float(log_ratio_total / num_examples)
