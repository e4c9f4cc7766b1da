"""The forward (noising) process of a discrete-time diffusion model — every quantity in one place.

Timestep convention (the same as diffusers): ``t ∈ {0, …, T−1}`` indexes the noising steps, so
code's ``t`` is the paper's ``t + 1`` (Ho et al. 2020 number steps 1…T). ``t = 0`` is the first
noising step (x₁ in the paper) and ``t = T−1`` the last (x_T). The clean data, the paper's x₀, is
the level ``t = −1``, where ``ᾱ_{−1} = 1`` (diffusers' ``set_alpha_to_one=True``).

With ``β_t`` the variance of step t and ``α_t = 1 − β_t``:

    q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t I)
    q(x_t | x₀)      = N(√ᾱ_t x₀, (1 − ᾱ_t) I),         ᾱ_t = ∏_{s≤t} α_s
    q(x_{t−1} | x_t, x₀) = N(μ̃_t, β̃_t I),
        μ̃_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t) · x₀ + (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t) · x_t
        β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)

All tables are float64 (the products and ratios lose precision in float32 near t = T−1); the
gathered coefficients are cast to the dtype of the tensor they multiply. The functions work on
any tensor shape (N, ...), so latent diffusion uses them unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from diffvae.errors import DiffvaeError

Timesteps = torch.Tensor | int


def broadcast_to_batch(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-example values (N,) — or a scalar — to (N, 1, …, 1) so they broadcast against
    ``like`` of shape (N, ...); device follows ``like``, dtype is kept."""
    values = values.to(like.device)
    if values.ndim == 0:
        return values.reshape((1,) * like.ndim)
    return values.reshape(values.shape[0], *((1,) * (like.ndim - 1)))


def gather(table: torch.Tensor, t: Timesteps, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` broadcast against ``like`` (N, ...) and cast to its dtype: shape (N, 1, …, 1).

    ``t`` is an int or an int64 tensor of shape () or (N,) (improved-diffusion's
    ``_extract_into_tensor``).
    """
    index = torch.as_tensor(t, dtype=torch.long, device=table.device)
    return broadcast_to_batch(table[index], like).to(like.dtype)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A variance schedule β_0…β_{T−1} and every table derived from it (float64, length T).

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`from_name` or directly from ``betas``.
    ``posterior_log_variance_clipped`` replaces the zero variance at t = 0 by β̃ at t = 1, as in
    improved-diffusion (it is the fixed-small decoder variance of the bound's L₀ term).
    """

    betas: torch.Tensor
    name: str = "custom"
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: torch.Tensor = field(init=False, repr=False)
    posterior_variance: torch.Tensor = field(init=False, repr=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False, repr=False)
    posterior_mean_coef1: torch.Tensor = field(init=False, repr=False)
    posterior_mean_coef2: torch.Tensor = field(init=False, repr=False)
    _alphas_cumprod_from_clean: torch.Tensor = field(init=False, repr=False)  # [1, ᾱ_0, …, ᾱ_{T−1}]

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise DiffvaeError("a noise schedule needs a 1-D sequence of at least one beta")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise DiffvaeError("every beta of a noise schedule must lie in (0, 1]")
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if len(betas) > 1 else posterior_variance
        derived = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.log(clipped),
            "posterior_mean_coef1": betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
            "_alphas_cumprod_from_clean": torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod]),
        }
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    # ----- construction -------------------------------------------------------------------------

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """β_t evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020), given for T = 1000
        and rescaled by 1000/T for other lengths (improved-diffusion's ``get_named_beta_schedule``)
        so that ᾱ_{T−1} stays near 0 whatever T is (capped at β = 0.999)."""
        _check_length(T)
        scale = 1000.0 / T
        betas = torch.linspace(beta_start * scale, beta_end * scale, T, dtype=torch.float64).clamp(max=0.999)
        return cls(betas, name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal (2021), eq. 17:

            ᾱ(τ) = f(τ) / f(0),  f(τ) = cos²( (τ/T + s) / (1 + s) · π/2 ),
            β_t = min(1 − ᾱ(t+1) / ᾱ(t), max_beta)  for t = 0…T−1,

        so ᾱ_t = ∏ (1 − β) follows f((t+1)/T)/f(0) except where β is capped (the last steps).
        """
        _check_length(T)
        tau = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((tau + s) / (1.0 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta)
        return cls(betas, name="cosine")

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> "NoiseSchedule":
        """``"linear"`` or ``"cosine"`` with their default parameters."""
        builders = {"linear": cls.linear, "cosine": cls.cosine}
        if name not in builders:
            raise DiffvaeError(f"unknown noise schedule {name!r}; choose one of {sorted(builders)}")
        return builders[name](T)

    def respaced(self, kept: Sequence[int] | torch.Tensor) -> "NoiseSchedule":
        """The schedule restricted to the ascending timesteps ``kept`` (improved-diffusion's
        ``space_timesteps``): its i-th step goes from level kept[i−1] (clean for i = 0) to kept[i],

            ᾱ'_i = ᾱ_{kept[i]},   β'_i = 1 − ᾱ'_i / ᾱ'_{i−1},   ᾱ'_{−1} = 1,

        so every marginal q(x_{kept[i]} | x₀) is unchanged and its posterior is the one between
        consecutive kept levels. A network is still called with the original timestep kept[i].
        """
        kept = torch.as_tensor(kept, dtype=torch.long)
        if kept.ndim != 1 or kept.numel() < 1 or bool((kept[1:] <= kept[:-1]).any()):
            raise DiffvaeError("respaced timesteps must be a non-empty ascending sequence")
        if int(kept[0]) < 0 or int(kept[-1]) >= self.T:
            raise DiffvaeError(f"respaced timesteps must lie in 0..{self.T - 1}")
        kept_alphas_cumprod = self.alphas_cumprod[kept]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), kept_alphas_cumprod[:-1]])
        return NoiseSchedule(1.0 - kept_alphas_cumprod / previous, name=f"{self.name}-respaced{len(kept)}")

    # ----- lookups ------------------------------------------------------------------------------

    @property
    def T(self) -> int:
        """Number of noising steps."""
        return int(self.betas.shape[0])

    def alphas_cumprod_at(self, t: Timesteps, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t in float64, shaped (N, 1, …, 1) to broadcast against ``like``, for t ∈ {−1, …, T−1}
        where ᾱ_{−1} = 1 is the clean level. Callers compute their coefficients from it in float64
        and cast the result to ``like.dtype``."""
        index = torch.as_tensor(t, dtype=torch.long).cpu()
        if bool(((index < -1) | (index >= self.T)).any()):
            raise DiffvaeError(f"timesteps must lie in -1..{self.T - 1}")
        return broadcast_to_batch(self._alphas_cumprod_from_clean[index + 1], like)

    # ----- the forward process and its posterior ------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, t: Timesteps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I): (mean, variance, log_variance), the last two
        shaped (N, 1, …, 1)."""
        alpha_cumprod = self.alphas_cumprod_at(t, x0)
        mean = torch.sqrt(alpha_cumprod).to(x0.dtype) * x0
        variance = 1.0 - alpha_cumprod
        return mean, variance.to(x0.dtype), torch.log(variance).to(x0.dtype)

    def q_sample(self, x0: torch.Tensor, t: Timesteps, noise: torch.Tensor) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x₀): x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε with ε = ``noise``."""
        alpha_cumprod = self.alphas_cumprod_at(t, x0)
        return torch.sqrt(alpha_cumprod).to(x0.dtype) * x0 + torch.sqrt(1.0 - alpha_cumprod).to(x0.dtype) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: Timesteps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(x_{t−1} | x_t, x₀) = N(μ̃_t, β̃_t I) for t ∈ {0, …, T−1} (at t = 0 the posterior is the
        clean level: μ̃ = x₀, β̃ = 0): (mean, variance, log_variance_clipped), the last two shaped
        (N, 1, …, 1); see the module docstring for μ̃ and β̃."""
        mean = gather(self.posterior_mean_coef1, t, x_t) * x0 + gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, gather(self.posterior_variance, t, x_t), gather(self.posterior_log_variance_clipped, t, x_t)


def _check_length(T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise DiffvaeError(f"the number of diffusion steps T must be a positive integer, got {T!r}")
