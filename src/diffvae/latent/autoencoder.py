"""The KL autoencoder of latent diffusion (Rombach et al. 2022), stage 1 of the ``ldm`` family.

* Encoder: q(z|x) = N(μ(x), diag σ²(x)) on a spatial latent (N, c, h, w) (:mod:`diffvae.nn.autoencoder`).
* Decoder: p(x|z) a **discretized logistic** per pixel and channel on the 256-level grid, mean and
  log-scale both predicted by the network (the learned scale, floored at ``MIN_LOG_SCALE``), so the
  reconstruction term is a proper likelihood of the 8-bit image in nats
  (:func:`diffvae.distributions.discretized_logistic_log_likelihood`).
* Loss per image:  −log p(x|z) + w_KL · KL(q(z|x) ‖ N(0, I)) [+ w_mse · ‖x − x̂‖²] [+ w_p · ‖φ(x) − φ(x̂)‖²],
  z ~ q(z|x), x and the decoder mean x̂ on [−1, 1].
  Rombach et al. use w_KL ≈ 1e-6 next to perceptual and GAN terms: the KL only keeps the latent's
  scale from drifting, it does not make q close to the prior; the diffusion model is the prior.
  The optional squared-error term is a Gaussian of fixed σ = 1/√(2·w_mse) on the decoder mean, beside the
  learned-scale logistic: while the logistic's scale is wide its gradient on the mean is weak, and on colour
  images the autoencoder sat at 17–19 dB for most of a short budget; with w_mse = 200 it reached 29–30 dB in the
  same time (benchmarks/RESULTS.md). It shapes training only: p(x|z), and so every bound, is the logistic.
  The optional perceptual term compares the features φ of the dataset's own feature network
  (:mod:`diffvae.metrics.features`, no downloaded weights) of x and of the decoder mean x̂.

After training, latents are multiplied by ``latent_scale = 1 / std(z)`` (:func:`latent_scale_from`)
so the diffusion model sees roughly unit-variance data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from diffvae.distributions import discretized_logistic_log_likelihood, nats_to_bpd, normal_kl
from diffvae.errors import DiffvaeError
from diffvae.images import to_signed, to_uint8
from diffvae.nn.autoencoder import SpatialDecoder, SpatialEncoder, level_sizes

__all__ = ["AutoencoderKL", "latent_scale_from", "MIN_LOG_SCALE", "LOGVAR_RANGE"]

MIN_LOG_SCALE = -7.0  # floor on the decoder's log-scale, far below the bin half-width 1/255
LOGVAR_RANGE = (-30.0, 20.0)  # posterior log-variance clamp (Rombach et al.'s DiagonalGaussianDistribution)


def latent_scale_from(latents: Tensor) -> float:
    """The latent scale factor s = 1 / std(z) over every element of ``latents`` (float64),
    so that s·z has unit variance (Rombach et al. 2022, §4.3.2 / appendix G)."""
    std = float(latents.detach().to(torch.float64).std())
    if not (std > 0 and math.isfinite(std)):
        raise DiffvaeError(f"cannot scale the latents: their standard deviation is {std}")
    return 1.0 / std


class AutoencoderKL(nn.Module):
    """Images (uint8) ↔ spatial latents; every likelihood is per example in nats."""

    def __init__(self, image_shape: tuple[int, int, int], latent_channels: int = 4, downsample: int = 4, width: int = 32,
                 res_blocks: int = 1, kl_weight: float = 1e-6, perceptual_weight: float = 0.0, mse_weight: float = 0.0):
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise DiffvaeError(f"image shape must be (channels, height, width), got {tuple(image_shape)}")
        if not all(w >= 0 and math.isfinite(w) for w in (kl_weight, perceptual_weight, mse_weight)):
            raise DiffvaeError("the autoencoder's kl_weight, perceptual_weight and mse_weight must be finite and >= 0")
        self.image_shape = tuple(int(s) for s in image_shape)
        channels, height, width_px = self.image_shape
        latent_h, latent_w = level_sizes(height, width_px, downsample)[-1]
        self.latent_shape = (int(latent_channels), latent_h, latent_w)
        self.num_dims = math.prod(self.image_shape)
        self.kl_weight = float(kl_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.mse_weight = float(mse_weight)
        self.encoder = SpatialEncoder(channels, latent_channels, downsample, width, res_blocks)
        self.decoder = SpatialDecoder(latent_channels, 2 * channels, (height, width_px), downsample, width, res_blocks)
        self._perceptual: tuple[nn.Module, ...] = ()  # a frozen feature network, kept out of state_dict

    # ------------------------------------------------------------------ helpers
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _check(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise DiffvaeError(f"the autoencoder expects uint8 images, got {images.dtype}")
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise DiffvaeError(f"the autoencoder was built for images of shape {self.image_shape}, got {tuple(images.shape[1:])}")
        return images.to(self._device)

    def set_perceptual_network(self, network: nn.Module | None) -> None:
        """Use ``network.features`` (frozen) for the perceptual term; None removes it."""
        self._perceptual = () if network is None else (network.eval().requires_grad_(False),)

    # ------------------------------------------------------------------ the two halves
    def posterior(self, x_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) as (mean, logvar), each float32 (N, c, h, w); logvar clamped to ``LOGVAR_RANGE``."""
        mean, logvar = self.encoder(to_signed(self._check(x_uint8)))
        return mean.float(), logvar.float().clamp(*LOGVAR_RANGE)

    def decoder_params(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """p(x|z)'s per-pixel (mean, log_scale) on [-1, 1], float32 (N, C, H, W); log_scale floored."""
        out = self.decoder(z.to(self._device)).float()
        channels = self.image_shape[0]
        return out[:, :channels], out[:, channels:].clamp(min=MIN_LOG_SCALE)

    def reconstruction_log_likelihood(self, x_uint8: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) per example (N,) in nats: the discretized logistic summed over pixels."""
        mean, log_scale = self.decoder_params(z)
        return discretized_logistic_log_likelihood(to_signed(self._check(x_uint8)), mean, log_scale).flatten(1).sum(1)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) for latents z: the decoder's mode (the bin holding the logistic's mean)."""
        mean, _ = self.decoder_params(z)
        return to_uint8(mean)

    @torch.no_grad()
    def reconstruct(self, x_uint8: Tensor) -> Tensor:
        """decode(posterior mean): the autoencoder's deterministic round trip, uint8."""
        return self.decode(self.posterior(x_uint8)[0])

    # ------------------------------------------------------------------ training
    def training_loss(self, x_uint8: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Loss in nats per dimension: (−log p(x|z) + w_KL·KL [+ w_mse·‖x − x̂‖²] [+ w_p·perceptual]) / D, batch mean,
        one z ~ q(z|x) per image from the global RNG.

        Logs (per image, batch means): ``recon_nats``, ``kl_nats``, ``recon_bpd`` (−log p(x|z)
        in bits/dim) and ``psnr_db`` of the decoder mean; ``squared_error`` and ``perceptual`` when they are on.
        """
        images = self._check(x_uint8)
        mean, logvar = self.posterior(images)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        dec_mean, log_scale = self.decoder_params(z)
        signed = to_signed(images)
        log_px = discretized_logistic_log_likelihood(signed, dec_mean, log_scale).flatten(1).sum(1)
        kl = normal_kl(mean, logvar, 0.0, 0.0).flatten(1).sum(1)
        loss_nats = -log_px.mean() + self.kl_weight * kl.mean()
        logs: dict[str, float] = {}
        if self.mse_weight > 0:
            squared_error = (dec_mean - signed).square().flatten(1).sum(1).mean()
            loss_nats = loss_nats + self.mse_weight * squared_error
            logs["squared_error"] = float(squared_error.detach())
        if self.perceptual_weight > 0 and self._perceptual:
            net = self._perceptual[0].to(self._device)
            perceptual = (net.features(signed) - net.features(dec_mean)).square().flatten(1).sum(1).mean()
            loss_nats = loss_nats + self.perceptual_weight * perceptual
            logs["perceptual"] = float(perceptual.detach())
        with torch.no_grad():
            mse = (dec_mean.clamp(-1, 1) - signed).square().mean()
            logs.update(recon_nats=float(-log_px.mean()), kl_nats=float(kl.mean()),
                        recon_bpd=float(nats_to_bpd(-log_px.mean(), self.num_dims)),
                        psnr_db=float(10.0 * torch.log10(4.0 / mse.clamp(min=1e-12))))
        return loss_nats / self.num_dims, logs
