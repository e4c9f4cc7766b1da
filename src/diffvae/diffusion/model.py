"""The diffusion models: a UNet composed with the pure functions of this package.

* :class:`Denoiser` — diffusion on any float tensor of shape (C, H, W): pixels scaled to [-1, 1]
  for pixel diffusion, scaled autoencoder latents for latent diffusion. It owns the network and
  the schedule and calls the one implementation of every equation (``schedule``, ``targets``,
  ``samplers``, ``likelihood``); it holds no math of its own.
* :class:`DDPM` — the pixel-space family: a Denoiser on images, uint8 in and out.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
from torch import nn

from diffvae.configs import config_from_dict
from diffvae.conditioning import ConditionFields, check_buildable, check_condition_fields, check_labels, drop_labels
from diffvae.distributions import nats_to_bpd
from diffvae.errors import DiffvaeError
from diffvae.diffusion import likelihood, samplers, targets, variance
from diffvae.diffusion.guidance import sampling_fn
from diffvae.diffusion.schedule import NoiseSchedule
from diffvae.images import to_signed, to_uint8
from diffvae.nn.unet import UNet, UNetConfig



@dataclass
class UNetFamilyConfig(ConditionFields):
    """What the config of every UNet family (pixel and latent diffusion, flow matching) holds: the network, the
    sampling defaults and the conditioning fields (:class:`diffvae.conditioning.ConditionFields`). A family's config
    adds its own fields and may restate one of these to give it another default."""

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (-1,)
    dropout: float = 0.0
    sampler: str = "dpm++2m"  # default sampler for sample()
    sample_steps: int = 20
    invert_steps: int = 50  # steps for inversion / regeneration (interpolation, round trips)
    norm_groups: int = 0  # GroupNorm groups; 0 = norm_groups_for(widths): two or more channels per group everywhere

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_levels = tuple(int(i) for i in self.attention_levels)
        self.validate()

    def validate(self) -> None:
        check_condition_fields(self)
        if not isinstance(self.norm_groups, int) or isinstance(self.norm_groups, bool) or not 0 <= self.norm_groups <= 1024:
            raise DiffvaeError(f"norm_groups must be an integer in [0, 1024] (0 = automatic), got {self.norm_groups!r}")
        narrowest = self.channels * min(self.channel_mult)
        if self.norm_groups and narrowest < 2 * self.norm_groups:
            raise DiffvaeError(f"norm_groups={self.norm_groups} leaves fewer than two channels per GroupNorm group at the "
                               f"{narrowest}-wide level, where the norm would remove the time/label embedding; use at most "
                               f"{max(1, narrowest // 2)} (or 0, automatic)")

    @classmethod
    def from_saved(cls, values: dict):
        """The config of a saved run. A run saved before ``norm_groups`` existed keeps the group count it was
        trained with (:func:`saved_run_groups`), so an old checkpoint computes exactly what it computed."""
        config = config_from_dict(cls, values)
        if "norm_groups" not in values:
            config.norm_groups = saved_run_groups(config.channels, config.channel_mult)
        return config

    def unet_config(self) -> UNetConfig:
        widths = [self.channels * m for m in self.channel_mult]
        return UNetConfig(channels=self.channels, channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                          attention_levels=self.attention_levels, dropout=self.dropout,
                          groups=self.norm_groups or norm_groups_for(widths),
                          num_classes=self.num_classes if self.conditional else 0)


@dataclass
class DiffusionConfig(UNetFamilyConfig):
    """A diffusion model: its forward process, training target and network, and sampling defaults."""

    schedule: str = "linear"  # linear | cosine (cosine's last β = 0.999 inflates the fixed-variance bound)
    timesteps: int = 1000
    prediction: str = "eps"  # eps | x0 | v
    loss_weight: str = "uniform"  # uniform | min_snr
    min_snr_gamma: float = 5.0
    eta: float = 0.0  # DDIM η
    clip_x0: bool = True  # clamp x̂₀ to [-1, 1] while sampling (data on [-1, 1]; off for latents)

    def validate(self) -> None:
        """Raise DiffvaeError on a setting that cannot work (every check of this config is here).
        Step counts above T are capped at T, so a short forward process keeps working defaults.
        diffusers' names are accepted and stored as diffvae's: epsilon/v_prediction/sample → eps/v/x0,
        squaredcos_cap_v2 → cosine (the same ᾱ); scaled_linear has no exact twin here and is refused."""
        self.prediction = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(self.prediction, self.prediction)
        self.schedule = {"squaredcos_cap_v2": "cosine"}.get(self.schedule, self.schedule)
        if self.schedule not in ("linear", "cosine"):
            raise DiffvaeError(f"--schedule must be linear or cosine (diffusers' squaredcos_cap_v2 = cosine), got {self.schedule!r}")
        if self.timesteps < 2:
            raise DiffvaeError(f"--timesteps must be at least 2, got {self.timesteps}")
        if self.prediction not in ("eps", "x0", "v"):
            raise DiffvaeError(f"--prediction must be eps, x0 or v, got {self.prediction!r}")
        if self.loss_weight not in ("uniform", "min_snr"):
            raise DiffvaeError(f"--loss-weight must be uniform or min_snr, got {self.loss_weight!r}")
        if not (self.min_snr_gamma > 0 and math.isfinite(self.min_snr_gamma)):
            raise DiffvaeError(f"--min-snr-gamma must be a finite number > 0, got {self.min_snr_gamma}")
        self.sample_steps = min(self.sample_steps, self.timesteps)
        self.invert_steps = min(self.invert_steps, self.timesteps)
        check_sampling(self.sampler, self.sample_steps, self.timesteps, self.eta)
        check_sampling("ddim", self.invert_steps, self.timesteps, 0.0)
        super().validate()  # the network and conditioning fields


def norm_groups_for(widths: list[int]) -> int:
    """The largest GroupNorm group count ≤ 32 dividing every level's width with at least two channels per group
    at every level. Each residual block adds the time/label embedding as one constant per channel just before a
    GroupNorm, which subtracts each group's mean: with one channel per group it removes the embedding exactly
    (:meth:`diffvae.nn.unet.UNetConfig._check_embedding_reaches_output`), with two or more it cannot."""
    fitting = [g for g in range(1, 33) if all(w % g == 0 for w in widths) and min(widths) >= 2 * g]
    return max(fitting, default=1)


def saved_run_groups(channels: int, channel_mult: tuple[int, ...]) -> int:
    """The group count of runs saved before ``norm_groups`` (issue 27): two or more channels per group at the
    widest level only, so a 16- or 32-wide UNet's full-resolution blocks had one channel per group."""
    widths = [channels * m for m in channel_mult]
    fitting = [g for g in range(1, 33) if all(w % g == 0 for w in widths) and max(widths) >= 2 * g]
    return max(fitting, default=1)


def check_sampling(sampler: str, steps: int, T: int, eta: float) -> None:
    if sampler not in samplers.SAMPLERS:
        raise DiffvaeError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    if not isinstance(steps, int) or steps < 1:
        raise DiffvaeError(f"--steps must be a positive integer, got {steps}")
    if steps > T:
        raise DiffvaeError(f"--steps {steps} exceeds the model's {T} diffusion timesteps")
    if not 0.0 <= eta <= 1.0:
        raise DiffvaeError(f"--eta must be in [0, 1], got {eta}")


class Denoiser(nn.Module):
    """ε-, x₀- or v-predicting UNet with its noise schedule, on float tensors of shape (C, H, W);
    class-conditional when ``config.conditional`` (labels 0..K−1, null label K)."""

    def __init__(self, config: DiffusionConfig, shape: tuple[int, int, int]):
        super().__init__()
        check_buildable(config)
        self.config = config
        self.shape = tuple(int(s) for s in shape)
        self.schedule = NoiseSchedule.from_name(config.schedule, config.timesteps)
        self.unet = UNet(config.unet_config(), in_channels=self.shape[0], image_size=self.shape[1])
        self.num_classes = self.unet.config.num_classes

    def network(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The raw network output, computed in float32 (bf16 under an enclosing autocast)."""
        return self.unet(x_t.float(), t, labels)

    def eps_fn(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂(x_t, t[, y]) in x_t's dtype, whatever the network predicts (see ``targets.split_prediction``);
        a conditional model without labels predicts with the null label (unconditionally)."""
        output = (self.network(x_t, t) if labels is None else self.network(x_t, t, labels)).to(x_t.dtype)
        eps, _ = targets.split_prediction(output, x_t, t, self.schedule, self.config.prediction)
        return eps

    def guided_eps_fn(self, labels: torch.Tensor | None = None, guidance: float | None = None, n: int | None = None):
        """The ε̂(x_t, t) the samplers take: unconditional without ``labels``, else classifier-free
        guidance at scale ``guidance`` (default 1: the conditional prediction; :mod:`~diffvae.diffusion.guidance`).
        ``labels``: int (n,) or class weights (n, K+1) (:func:`diffvae.conditioning.check_condition`)."""
        return sampling_fn(self.eps_fn, self.num_classes, labels, guidance, n)

    def loss(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss: a uniform t, x_t ~ q(x_t|x₀), the weighted squared error of the target;
        conditional: each label dropped to the null label with probability ``p_uncond`` (global RNG)."""
        t = torch.randint(0, self.schedule.T, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.q_sample(x0, t, noise)
        if self.num_classes and labels is not None:
            labels = drop_labels(check_labels(labels, x0.shape[0], self.num_classes).to(x0.device),
                                 self.config.p_uncond, self.num_classes)
        elif labels is not None:
            check_labels(labels, x0.shape[0], 0)
        output = (self.network(x_t, t) if labels is None else self.network(x_t, t, labels)).float()
        per_example = targets.training_loss(output, x0, noise, t, self.schedule, self.config.prediction,
                                            self.config.loss_weight, self.config.min_snr_gamma)
        loss = per_example.mean()
        return loss, {"mse": float(loss.detach())}

    def _sampling(self, sampler, steps, eta) -> tuple[str, int, float]:
        sampler = sampler or self.config.sampler
        if steps is None:  # ancestral DDPM defaults to every step unless it is the configured sampler
            steps = self.schedule.T if sampler == "ddpm" and sampler != self.config.sampler else self.config.sample_steps
        eta = self.config.eta if eta is None else eta
        check_sampling(sampler, steps, self.schedule.T, eta)
        return sampler, steps, eta

    def generate(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
                 steps: int | None = None, eta: float | None = None, x_T: torch.Tensor | None = None,
                 progress: bool = False, clip_x0: bool | None = None, labels: torch.Tensor | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """n samples x₀ (float32) with one of the samplers of :mod:`diffvae.diffusion.samplers`; with
        ``labels`` (n,) guided towards them at scale ``guidance`` (:meth:`guided_eps_fn`)."""
        eps_fn = self.guided_eps_fn(labels, guidance, n)
        sampler, steps, eta = self._sampling(sampler, steps, eta)
        device = next(self.parameters()).device
        return samplers.sample(eps_fn, (n, *self.shape), self.schedule, sampler=sampler, steps=steps, eta=eta,
                               x_T=x_T, generator=generator, device=device, progress=progress,
                               clip_x0=self.config.clip_x0 if clip_x0 is None else clip_x0).float()

    def nfe(self, sampler: str | None = None, steps: int | None = None, **_) -> int:
        """Network evaluations per sample: steps × the sampler's evaluations per step."""
        sampler, steps, _ = self._sampling(sampler, steps, None)
        return steps * samplers.SAMPLERS[sampler].evaluations_per_step

    def invert(self, x0: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """x_T from x₀ by running the deterministic DDIM step backwards (``samplers.ddim_invert``)."""
        return samplers.ddim_invert(self.eps_fn, x0.float(), self.schedule, steps or self.config.invert_steps)

    def regenerate(self, x_T: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """x₀ from x_T by deterministic DDIM (η = 0) on the same timestep grid as :meth:`invert`,
        unclipped so that it is the exact reverse of the inversion's steps."""
        return self.generate(x_T.shape[0], sampler="ddim", steps=steps or self.config.invert_steps, eta=0.0, x_T=x_T,
                             clip_x0=False)

    def bound_nats(self, x0: torch.Tensor, decoder: str = "discretized", timesteps: int = 0,
                   generator: torch.Generator | None = None, progress: bool = False,
                   fit_x: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor | str]:
        """Per-example variational bound in nats, with the parts ``prior`` (L_T), ``decoder`` (L_0) and
        ``diffusion`` (Σ_{t≥1} L_t) of the reverse variance named by ``variance``.

        ``labels`` (N,) (a conditional model; refused by an unconditional one): the bound on −log p(x₀ | y),
        every term with ε̂(x_t, t, y) — the conditional model itself, no guidance (w = 1); without them (or
        with the null label K) the bound on −log p(x₀) of the null label. The reverse variances are
        fitted on ``fit_x`` with the null label (chosen without x₀ or y, so the bound stays valid).

        Without ``fit_x`` the variances are fixed-small. With ``fit_x`` (training data in x0's space)
        every choice of :mod:`diffvae.diffusion.variance` is fitted on it and evaluated from the same
        draws (``total_<choice>`` each; for 8-bit data also ``<choice>_levels``, the grid-posterior L₀);
        the parts are those of the choice with the smallest expected bound on ``fit_x`` — chosen
        before ``x0`` is seen, so it stays a valid bound.
        ``timesteps == 0``: every one of the T terms; ``timesteps = K > 0``: the unbiased K-draw
        estimate (importance-sampled t when fitted), with its per-example ``stderr``.
        """
        x0 = x0.double()
        eps_fn = self.eps_fn if labels is None else likelihood.with_labels(
            self.eps_fn, check_labels(labels, x0.shape[0], self.num_classes).to(x0.device))
        variances, best, proposal, fit = {"small": "small"}, "small", None, None
        if fit_x is not None:
            fit = variance.fit_reverse_variances(self.eps_fn, fit_x.double(), self.schedule, decoder=decoder,
                                                 generator=generator, progress=progress)
            variances, best, proposal = fit.tables, fit.best, fit.proposal
        if timesteps:
            bounds = likelihood.diffusion_bound_estimates(eps_fn, x0, self.schedule, timesteps, variances,
                                                          proposal=proposal, generator=generator, decoder=decoder)
        else:
            bounds = likelihood.diffusion_bounds(eps_fn, x0, self.schedule, variances, decoder=decoder,
                                                 generator=generator, progress=progress)
        if fit is not None and fit.level_log_prior is not None:  # the same draws with the grid-posterior L₀
            levels = variance.level_posterior_nats(x0, self.schedule, fit.level_log_prior, generator)
            for name in variance.FITTED_VARIANCES:
                parts = bounds[name]
                bounds[f"{name}_levels"] = {**parts, "decoder": levels, "total": parts["total"] - parts["decoder"] + levels}
        out: dict[str, torch.Tensor | str] = {k: v for k, v in bounds[best].items() if k != "terms"}
        out.update({f"total_{name}": parts["total"] for name, parts in bounds.items()})
        out["variance"] = best
        return out


@dataclass
class DDPMConfig(DiffusionConfig):
    """Pixel-space diffusion: the DiffusionConfig applied to images scaled to [-1, 1].

    The default width is 32 (not 64): a 64-wide UNet costs 4.5 GFLOP per training image at 28×28
    and trains at about 75 images/s on a 2-core CPU, too few steps for a few-minute budget; the
    32-wide one costs about a quarter of that. The target is v on the cosine schedule (Salimans & Ho
    2022): on mnist after 2 CPU-minutes (the 16-wide recipe, ~1,100 steps, 200 samples) it gave FID 48.2
    with ancestral DDPM-100 and 50.1 with DPM-Solver++(2M) on 20 steps, where ε on the linear schedule
    gave 328 and 416, ε on the cosine schedule 302 and 358 (benchmarks/RESULTS.md, recipe sweep). An ε
    network is poor exactly where samples are decided — at high noise, where predicting ε ≈ x_t says
    little about x₀ — and v stays informative there. So the default sampler is DPM-Solver++(2M) on 20
    steps: as good as ancestral sampling on 100, at a fifth of the network evaluations.
    """

    channels: int = 32
    prediction: str = "v"
    schedule: str = "cosine"


class DDPM(nn.Module):
    """The pixel-diffusion family: a :class:`Denoiser` on images, uint8 in and out."""

    family = "ddpm"

    def __init__(self, config: DDPMConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        self.denoiser = Denoiser(config, image_shape)

    @property
    def latent_dims(self) -> int:
        """x_T has the data's dimension."""
        c, h, w = self.image_shape
        return c * h * w

    def training_loss(self, x_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        return self.denoiser.loss(to_signed(x_uint8), labels)

    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, progress: bool = False,
               labels: torch.Tensor | None = None, guidance: float | None = None) -> torch.Tensor:
        """n uint8 images; a conditional model follows ``labels`` (n,) with guidance scale ``guidance``."""
        return to_uint8(self.denoiser.generate(n, generator, sampler, steps, eta, progress=progress, labels=labels,
                                               guidance=guidance))

    def nfe(self, sampler: str | None = None, steps: int | None = None, **_) -> int:
        return self.denoiser.nfe(sampler, steps)

    def to_latent(self, x_uint8: torch.Tensor, steps: int | None = None, **_) -> torch.Tensor:
        """DDIM inversion: the x_T that deterministic DDIM maps back to x."""
        return self.denoiser.invert(to_signed(x_uint8), steps)

    def from_latent(self, x_T: torch.Tensor, steps: int | None = None, **_) -> torch.Tensor:
        return to_uint8(self.denoiser.regenerate(x_T, steps))

    def bound(self, x_uint8: torch.Tensor, timesteps: int = 0, generator: torch.Generator | None = None,
              progress: bool = False, fit_data: torch.Tensor | None = None, labels: torch.Tensor | None = None,
              **_) -> dict[str, torch.Tensor | str]:
        """Per-example bits/dim of the variational bound L₀ + Σ KL + L_T on the 8-bit grid, with its
        parts; ``timesteps > 0`` gives the unbiased estimate from that many sampled t (and ``bpd_stderr``).
        With ``fit_data`` (uint8 training images) the reverse variances and L₀'s scale are fitted on
        it and ``bpd`` is the tightest choice (``variance``), with ``bpd_<choice>`` for every choice.
        A conditional model with ``labels`` (N,) bounds −log p(x | y) (no guidance: w = 1); without them
        the null label's −log p(x) (:meth:`Denoiser.bound_nats`)."""
        fit_x = to_signed(fit_data, torch.float64) if fit_data is not None else None
        nats = self.denoiser.bound_nats(to_signed(x_uint8, torch.float64), "discretized", timesteps, generator, progress,
                                        fit_x=fit_x, labels=labels)
        return bound_to_bpd(nats, self.latent_dims)


def bound_to_bpd(nats: dict[str, torch.Tensor | str], dims: int) -> dict[str, torch.Tensor | str]:
    """Rename a bound's parts in nats to ``bpd`` (total), ``bpd_stderr``, ``bpd_<choice>`` (``total_<choice>``)
    and ``<part>_bpd``, converted per dimension; text (the ``variance`` name) passes through."""
    out: dict[str, torch.Tensor | str] = {}
    for key, value in nats.items():
        if isinstance(value, str):
            out[key] = value
        elif key != "terms" and torch.is_tensor(value):
            name = {"total": "bpd", "stderr": "bpd_stderr"}.get(key, key.replace("total_", "bpd_") if key.startswith("total_") else f"{key}_bpd")
            out[name] = nats_to_bpd(value, dims)
    return out

