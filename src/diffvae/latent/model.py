"""The latent-diffusion family (``ldm``): a KL autoencoder compresses, a diffusion model is its prior.

Stage 1 trains :class:`~diffvae.latent.autoencoder.AutoencoderKL` on the images; its EMA weights are
then frozen, the training latents' scale s = 1/std(z) is measured and written to the run's
config.json (``LDMConfig.latent_scale``); stage 2 trains a :class:`~diffvae.diffusion.model.Denoiser`
— the same schedule, targets, samplers and bound as pixel diffusion — on z' = s·z, z ~ q(z|x).
Sampling draws z' with the diffusion sampler and decodes z'/s.

Both stages run through the one training engine (:func:`diffvae.train.train`) in one run directory,
driven by :mod:`diffvae.latent.fit` (this module holds the network and its probability only):

* ``autoencoder.safetensors`` / ``autoencoder_metrics.jsonl`` — stage 1's checkpoint and log;
* ``checkpoint.safetensors`` / ``metrics.jsonl`` — stage 2 trains the whole :class:`LatentDiffusion`
  module (the frozen autoencoder gets no gradient and its EMA equals itself), so this checkpoint
  is the complete state of the composed model and :func:`diffvae.api.load` needs nothing else.

Stage 2 reads precomputed posterior moments (mean ‖ log-variance, one encoder pass over the
training set) and draws a fresh z ~ q(z|x) every step (``training_loss`` also accepts uint8 images
and then encodes them). Measured on MNIST (batch 64, bf16 CPU, one thread, best of 6): 148 ms per
diffusion step from moments vs 192 ms encoding on the fly; the one pass over 4,500 images takes
8 s, so precomputing pays off after ~180 steps. In budget mode that pass is outside both budgets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffvae.conditioning import check_labels
from diffvae.diffusion.model import Denoiser, DiffusionConfig
from diffvae.distributions import nats_to_bpd, normal_kl
from diffvae.errors import DiffvaeError
from diffvae.latent.autoencoder import AutoencoderKL
from diffvae.latent.bound import LATENT_PRIOR_PARTS, gaussian_entropy, latent_diffusion_bound, scale_jacobian_nats
from diffvae.metrics.interpolation import roundtrip_error
from diffvae.nn.autoencoder import DOWNSAMPLE_FACTORS, GROUPS

__all__ = ["LDMConfig", "LatentDiffusion"]

ENCODE_BATCH = 500  # images per encoder pass when precomputing latents
DECODE_BATCH = 1000  # latents per decoder pass when sampling


@dataclass
class LDMConfig(DiffusionConfig):
    """Latent diffusion: the DiffusionConfig of the prior on the scaled latent (its fields, flat in
    config.json), and the autoencoder (stage 1).

    The prior predicts v on the cosine schedule, as pixel diffusion does: on mnist after 2 CPU-minutes (200
    samples) it gave FID 57.0 with ancestral DDPM on 100 steps and 82.7 with DPM-Solver++(2M) on 20, where
    ε on the linear schedule (Rombach et al.'s) gave 96.2 and 154.9 (benchmarks/RESULTS.md, recipe sweep).
    v also keeps ε̂ = √ᾱ v̂ + √(1−ᾱ) x_t right at the cosine schedule's last step (β = 0.999), which with
    an undertrained ε̂ dominated the bound. Ancestral sampling on 100 steps is the default: the latent is
    small (7×7×4 on mnist), so 100 steps cost less than the decoder's one pass at pixel resolution does
    for pixel diffusion's 20, and they gave the lower FID."""

    # stage 2: diffusion on s·z — DiffusionConfig's fields, with these defaults
    prediction: str = "v"
    schedule: str = "cosine"
    sampler: str = "ddpm"
    sample_steps: int = 100
    channel_mult: tuple[int, ...] = (1, 2)
    clip_x0: bool = False  # latents are not bounded: never clamp x̂₀
    # stage 1: the KL autoencoder
    downsample: int = 4  # f ∈ {2, 4, 8}: 28×28 → 7×7 for f = 4
    latent_channels: int = 4
    ae_width: int = 32  # channels at full resolution (2× below); a multiple of 8
    ae_res_blocks: int = 1
    kl_weight: float = 1e-6  # weight of KL(q(z|x) ‖ N(0, I)) next to −log p(x|z)
    perceptual_weight: float = 0.0  # feature-space L2 with a feature network, injected by diffvae.latent.fit (0 = off)
    mse_weight: float = 0.0  # squared error of the decoder mean on [-1, 1] beside the logistic, stage 1's training only (0 = off)
    ae_steps_fraction: float = 0.3  # share of --steps / --budget spent on stage 1
    ae_steps: int = 0  # stage-1 steps out of --steps (0 = use ae_steps_fraction)
    ae_batch_size: int = 0  # stage-1 batch (0 = the run's --batch)
    ae_lr: float = 0.0  # stage-1 peak learning rate (0 = the run's --lr)
    ae_run: str | None = None  # reuse the autoencoder (and scale) of this ldm run; skips stage 1
    latent_scale: float | None = None  # s = 1/std(z) over the training latents; set after stage 1

    def validate(self) -> None:
        """Raise DiffvaeError on a setting that cannot work: the autoencoder's, then DiffusionConfig's."""
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise DiffvaeError(f"ldm downsample must be one of {', '.join(map(str, DOWNSAMPLE_FACTORS))}, got {self.downsample}")
        if self.latent_channels < 1:
            raise DiffvaeError(f"ldm latent_channels must be at least 1, got {self.latent_channels}")
        if self.ae_width < GROUPS or self.ae_width % GROUPS:
            raise DiffvaeError(f"ldm ae_width must be a positive multiple of {GROUPS}, got {self.ae_width}")
        if self.ae_res_blocks < 1:
            raise DiffvaeError(f"ldm ae_res_blocks must be at least 1, got {self.ae_res_blocks}")
        for name in ("kl_weight", "perceptual_weight", "mse_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise DiffvaeError(f"ldm {name} must be a finite number >= 0, got {value}")
        if not 0.0 < self.ae_steps_fraction < 1.0:
            raise DiffvaeError(f"ldm ae_steps_fraction must be in (0, 1), got {self.ae_steps_fraction}")
        if self.ae_steps < 0:
            raise DiffvaeError(f"ldm ae_steps must be >= 0 (0 = use ae_steps_fraction), got {self.ae_steps}")
        if isinstance(self.ae_batch_size, bool) or not isinstance(self.ae_batch_size, int) or not 0 <= self.ae_batch_size <= 65536:
            raise DiffvaeError(f"ldm ae_batch_size must be a whole number in [0, 65536] (0 = the run's --batch), got {self.ae_batch_size!r}")
        if not (0.0 <= self.ae_lr <= 1.0):
            raise DiffvaeError(f"ldm ae_lr must be a learning rate in [0, 1] (0 = the run's --lr), got {self.ae_lr}")
        if self.latent_scale is not None and not (self.latent_scale > 0 and math.isfinite(self.latent_scale)):
            raise DiffvaeError(f"ldm latent_scale must be a positive number, got {self.latent_scale}")
        super().validate()


class LatentDiffusion(nn.Module):
    """A KL autoencoder and a diffusion prior on its scaled latent; uint8 images in and out."""

    family = "ldm"

    def __init__(self, config: LDMConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        config = dataclasses.replace(config)
        config.validate()
        self.config = config
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_dims = math.prod(self.image_shape)
        self.autoencoder = AutoencoderKL(self.image_shape, config.latent_channels, config.downsample, config.ae_width,
                                         config.ae_res_blocks, config.kl_weight, config.perceptual_weight, config.mse_weight)
        self.latent_shape = self.autoencoder.latent_shape
        self.denoiser = Denoiser(config, self.latent_shape)

    # ------------------------------------------------------------------ helpers
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def latent_dims(self) -> int:
        """Dimensions of the latent (and of the diffusion's x_T): c·h·w."""
        return math.prod(self.latent_shape)

    @property
    def scale(self) -> float:
        """The latent scale s (the diffusion model sees s·z)."""
        if self.config.latent_scale is None:
            raise DiffvaeError("this latent-diffusion model has no latent_scale yet: its autoencoder stage has not finished")
        return float(self.config.latent_scale)

    def _noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    # ------------------------------------------------------------------ the autoencoder
    def encode(self, x_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) as (mean, logvar), unscaled, float32 (N, c, h, w)."""
        return self.autoencoder.posterior(x_uint8)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """uint8 images for unscaled latents z (the decoder's mode), in chunks of DECODE_BATCH."""
        if z.shape[0] == 0:
            return torch.zeros(0, *self.image_shape, dtype=torch.uint8, device=self._device)
        return torch.cat([self.autoencoder.decode(chunk) for chunk in z.split(DECODE_BATCH)])

    @torch.no_grad()
    def latent_moments(self, images: Tensor, batch_size: int = ENCODE_BATCH) -> Tensor:
        """Posterior moments of uint8 images as one float32 tensor (N, 2c, h, w): mean ‖ logvar."""
        chunks = [torch.cat(self.encode(chunk.to(self._device)), dim=1) for chunk in images.split(batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, 2 * self.latent_shape[0], *self.latent_shape[1:])

    # ------------------------------------------------------------------ contract
    def training_loss(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """The diffusion loss on z' = s·z, z ~ q(z|x) drawn from the global RNG; the autoencoder is
        not trained here (stage 1 is :meth:`AutoencoderKL.training_loss`).

        ``x`` is uint8 images (encoded now, without gradient) or float posterior moments from
        :meth:`latent_moments` (mean ‖ logvar along channels).
        """
        if x.dtype == torch.uint8:
            with torch.no_grad():
                mean, logvar = self.encode(x)
        else:
            mean, logvar = x.float().chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        return self.denoiser.loss(self.scale * z, labels)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, progress: bool = False,
               labels: Tensor | None = None, guidance: float | None = None) -> Tensor:
        """n uint8 images: z' from the diffusion sampler, then decode(z' / s); a conditional model follows
        ``labels`` (n,) with classifier-free guidance scale ``guidance`` (:meth:`Denoiser.guided_eps_fn`)."""
        if n < 0:
            raise DiffvaeError(f"number of samples must be >= 0, got {n}")
        if n == 0:
            return torch.zeros(0, *self.image_shape, dtype=torch.uint8, device=self._device)
        scale = self.scale
        z_scaled = self.denoiser.generate(n, generator, sampler, steps, eta, progress=progress, labels=labels,
                                          guidance=guidance)
        return self.decode(z_scaled / scale)

    def nfe(self, sampler: str | None = None, steps: int | None = None, **_) -> int:
        """Denoiser evaluations per sample (the one decoder pass is not counted)."""
        return self.denoiser.nfe(sampler, steps)

    @torch.no_grad()
    def to_latent(self, x_uint8: Tensor, steps: int | None = None, **_) -> Tensor:
        """x_T of x: the posterior mean, scaled, then DDIM inversion in latent space."""
        mean, _ = self.encode(x_uint8)
        return self.denoiser.invert(self.scale * mean, steps)

    @torch.no_grad()
    def from_latent(self, x_T: Tensor, steps: int | None = None, **_) -> Tensor:
        """uint8 images from x_T: deterministic DDIM to z', then decode(z' / s)."""
        return self.decode(self.denoiser.regenerate(x_T.to(self._device), steps) / self.scale)

    @torch.no_grad()
    def bound(self, x_uint8: Tensor, timesteps: int = 0, generator: torch.Generator | None = None,
              progress: bool = False, fit_data: Tensor | None = None, labels: Tensor | None = None,
              **_) -> dict[str, Tensor | str]:
        """Per-example bits/dim of −log p(x) ≤ E_q[−log p(x|z)] − H[q] + E_q[−log p(z)] (one z ~ q(z|x)),
        the last term bounded by the diffusion bound on s·z with a continuous Gaussian L₀
        (all T terms, or ``timesteps`` sampled ones) plus the scale's Jacobian; parts as
        :func:`diffvae.latent.bound.latent_diffusion_bound`. With ``fit_data`` (uint8 training images)
        the latent prior's reverse variances are fitted on their latents (``Denoiser.bound_nats``):
        ``bpd`` is the tightest choice (``variance``) and ``bpd_<choice>`` the whole bound for each.

        A conditional model with ``labels`` (N,) bounds −log p(x | y) ≤ E_q[−log p(x|z)] − H[q] + E_q[−log p(z | y)]:
        the autoencoder takes no label (q(z|x) and p(x|z) are those of p(x)), only the latent prior is
        conditional — the diffusion bound with ε̂(z_t, t, y), no guidance (w = 1). Without labels: the null label."""
        if labels is not None:  # refused (one line) by an unconditional model before any work
            labels = check_labels(labels, x_uint8.shape[0], self.denoiser.num_classes)
        mean, logvar = self.encode(x_uint8)
        z = mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)
        reconstruction = -self.autoencoder.reconstruction_log_likelihood(x_uint8, z).double()
        entropy = gaussian_entropy(logvar.double()).flatten(1).sum(1)
        fit_z = self.scale * self._posterior_sample(fit_data, generator).double() if fit_data is not None else None
        prior = self.denoiser.bound_nats(self.scale * z.double(), decoder="continuous", timesteps=timesteps,
                                         generator=generator, progress=progress, fit_x=fit_z, labels=labels)
        jacobian = scale_jacobian_nats(self.scale, self.latent_dims)
        parts = {k: prior[k] for k in LATENT_PRIOR_PARTS if torch.is_tensor(prior.get(k))}
        out: dict[str, Tensor | str] = latent_diffusion_bound(reconstruction, entropy, prior["total"], jacobian, self.num_dims, parts)
        for key, value in prior.items():
            if key.startswith("total_"):
                out[key.replace("total_", "bpd_")] = nats_to_bpd(reconstruction - entropy + value + jacobian, self.num_dims)
        out["variance"] = prior["variance"]
        return out

    def _posterior_sample(self, x_uint8: Tensor, generator: torch.Generator | None) -> Tensor:
        """z ~ q(z|x), unscaled."""
        mean, logvar = self.encode(x_uint8)
        return mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)

    @torch.no_grad()
    def diagnostics(self, x_uint8: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """The autoencoder alone: −log p(x|z) in bits/dim (z ~ q), PSNR of decode(mean), KL to N(0, I), s."""
        mean, logvar = self.encode(x_uint8)
        z = mean + torch.exp(0.5 * logvar) * self._noise(mean, generator)
        reconstruction = -self.autoencoder.reconstruction_log_likelihood(x_uint8, z)
        error = roundtrip_error(x_uint8.cpu(), self.decode(mean).cpu())
        return {
            "ae_reconstruction_bpd": float(nats_to_bpd(reconstruction.mean(), self.num_dims)),
            "ae_psnr_db": error["psnr_db"],
            "ae_kl_nats": float(normal_kl(mean, logvar, 0.0, 0.0).flatten(1).sum(1).mean()),
            "latent_scale": self.scale,
        }

