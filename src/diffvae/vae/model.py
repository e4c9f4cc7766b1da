"""The VAE family model: Gaussian encoder, N(0, I) prior and a choice of pixel decoders.

Decoders (``VAEConfig.decoder``), all on the 8-bit grid so bits/dim are comparable with the
diffusion families:

* ``logistic`` — discretized logistic per pixel and channel, 256 bins (default);
* ``gaussian`` — discretized Gaussian per pixel and channel, 256 bins;
* ``bernoulli`` — for black-and-white data only: pixels {0, 255} read as {0, 1}. Its bits/dim is
  per *binary* pixel and is **not** comparable with 8-bit bits/dim;
* ``pixelcnn`` — a conditional PixelCNN with a discretized-logistic output, strong enough to
  ignore the latent (posterior collapse); sampling is autoregressive.

Likelihood terms are computed in float32 even under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffvae.distributions import (
    bernoulli_log_likelihood,
    discretized_gaussian_log_likelihood,
    discretized_logistic_log_likelihood,
    gaussian_log_density,
    nats_to_bpd,
)
from diffvae.conditioning import ConditionFields, check_buildable, check_condition, check_condition_fields, check_labels, drop_labels
from diffvae.errors import DiffvaeError
from diffvae.images import to_signed, to_uint8
from diffvae.nn.conv import build_decoder, build_encoder, resolve_architecture
from diffvae.nn.pixelcnn import PixelCNN, autoregressive_sample
from diffvae.vae.bounds import (active_units, free_bits_kl, iwae_bound, kl_per_dim, kl_weight, mutual_information,
                               mutual_information_ceiling, negative_elbo)

ARCHITECTURES = ("auto", "conv", "mlp")
DECODERS = ("logistic", "gaussian", "bernoulli", "pixelcnn")
MIN_LOG_SCALE = -7.0  # floor on the decoder's log-scale (PixelCNN++), far below the bin width 2/255
DECODE_BATCH = 512  # images per decoder pass in sample(), through a channels_last copy of the decoder: the best of
# chunks 64-1024 at 28 px (2,470 images/s vs 694 contiguous in chunks of 1000; benchmarks/bench_speed_defaults.py (c))


@dataclass
class VAEConfig(ConditionFields):
    """A VAE; conditional (ConditionFields): the label (one-hot) enters encoder and decoder, the prior stays
    N(0, I), and label dropout to the null label (all-zero one-hot) makes one model of p(x|y) and p(x)."""

    latent_dim: int = 16
    architecture: str = "auto"  # "conv" | "mlp" | "auto" (mlp when H*W <= 144)
    width: int = 64
    depth: int = 0  # extra same-size 3×3 convolutions per level of the conv encoder and decoder
    decoder: str = "logistic"  # "logistic" | "gaussian" | "bernoulli" | "pixelcnn"
    beta: float = 1.0
    kl_warmup_steps: int = 0
    free_bits: float = 0.0  # nats per latent dimension (0 = off)
    binarize: bool = False  # threshold images at 128 to {0, 255}; bernoulli needs binary data
    pixelcnn_layers: int = 5

    def validate(self) -> None:
        """Raise DiffvaeError on a setting that cannot work."""
        check_condition_fields(self)
        if self.latent_dim < 1:
            raise DiffvaeError(f"vae latent_dim must be at least 1, got {self.latent_dim}")
        if self.architecture not in ARCHITECTURES:
            raise DiffvaeError(f"vae architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.width < 1:
            raise DiffvaeError(f"vae width must be at least 1, got {self.width}")
        if not 0 <= self.depth <= 8:
            raise DiffvaeError(f"vae depth must be in 0..8, got {self.depth}")
        if self.decoder not in DECODERS:
            raise DiffvaeError(f"vae decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if not self.beta >= 0:
            raise DiffvaeError(f"vae beta must be >= 0, got {self.beta}")
        if self.kl_warmup_steps < 0:
            raise DiffvaeError(f"vae kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        if not self.free_bits >= 0:
            raise DiffvaeError(f"vae free_bits must be >= 0 nats per dimension, got {self.free_bits}")
        if self.pixelcnn_layers < 1:
            raise DiffvaeError(f"vae pixelcnn_layers must be at least 1, got {self.pixelcnn_layers}")


def _split_mean_log_scale(params: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder output (N, 2C, ...) → (mean, log_scale), each (N, C, ...), log-scale floored."""
    mean, log_scale = params[:, :channels], params[:, channels:]
    return mean, torch.clamp(log_scale, min=MIN_LOG_SCALE)


def pixel_log_likelihood(kind: str, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per pixel and channel (N, C, H, W) in nats for decoder output ``params``.

    ``images`` is uint8 (N, C, H, W); continuous decoders see it on [-1, 1], bernoulli as {0, 1}.
    """
    channels = images.shape[1]
    params = params.float()
    if kind == "bernoulli":
        return bernoulli_log_likelihood(images.float() / 255.0, params)
    mean, log_scale = _split_mean_log_scale(params, channels)
    signed = to_signed(images)
    if kind == "gaussian":
        return discretized_gaussian_log_likelihood(signed, mean, log_scale)
    return discretized_logistic_log_likelihood(signed, mean, log_scale)  # logistic, pixelcnn


def pixel_median(kind: str, params: torch.Tensor, channels: int) -> torch.Tensor:
    """The decoder's per-pixel median as uint8 — the image :meth:`VAE.decode` shows.

    Logistic/Gaussian are symmetric about μ, so the median bin is the one holding μ (clamped to
    the grid); it is also the mode except near ±1, where an edge bin collects a whole tail.
    Bernoulli: 255 where p(white) > ½, which is also the mode.
    """
    params = params.float()
    if kind == "bernoulli":
        return torch.where(params > 0, 255, 0).to(torch.uint8)
    mean, _ = _split_mean_log_scale(params, channels)
    return to_uint8(mean)


def pixel_sample(kind: str, params: torch.Tensor, channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One exact draw from the per-pixel decoder distribution, uint8 (N, C, ...).

    A continuous draw rounded to the nearest of the 256 levels and clamped is a draw from the
    discretized distribution (the outer bins extend to ±∞): logistic μ + s·log(u / (1 − u)),
    Gaussian μ + σ·ε; bernoulli: white when u < σ(logit).
    """
    params = params.float()
    shape = params.shape if kind == "bernoulli" else (params.shape[0], channels, *params.shape[2:])
    device = generator.device if generator is not None else params.device
    if kind == "gaussian":
        mean, log_scale = _split_mean_log_scale(params, channels)
        noise = torch.randn(shape, generator=generator, device=device).to(params.device)
        return to_uint8(mean + torch.exp(log_scale) * noise)
    uniform = torch.rand(shape, generator=generator, device=device).to(params.device)
    if kind == "bernoulli":
        return torch.where(uniform < torch.sigmoid(params), 255, 0).to(torch.uint8)
    mean, log_scale = _split_mean_log_scale(params, channels)
    uniform = uniform.clamp(1e-6, 1.0 - 1e-6)
    return to_uint8(mean + torch.exp(log_scale) * (torch.log(uniform) - torch.log1p(-uniform)))


class VAE(nn.Module):
    """Gaussian-posterior VAE on uint8 images; every likelihood is per example in nats."""

    family = "vae"

    def __init__(self, config: VAEConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        config.validate()
        check_buildable(config)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise DiffvaeError(f"image shape must be (channels, height, width), got {tuple(image_shape)}")
        self.config = config
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_dims = math.prod(self.image_shape)
        self.architecture = resolve_architecture(config.architecture, self.image_shape)
        channels, height, width = self.image_shape
        self.step = 0
        # conditional (Sohn et al. 2015): K one-hot label channels beside the image, K label inputs beside z
        self.num_classes = k = config.num_classes if config.conditional else 0
        self.encoder = build_encoder(self.architecture, (channels + k, height, width), 2 * config.latent_dim, config.width, config.depth)
        decoder_inputs = config.latent_dim + k
        if config.decoder == "pixelcnn":
            # the latent becomes a feature map that conditions every PixelCNN layer
            self.decoder = build_decoder(self.architecture, decoder_inputs, self.image_shape, config.width, config.width, config.depth)
            self.pixelcnn = PixelCNN(channels, 2 * channels, config.width, config.pixelcnn_layers, cond_channels=config.width)
        else:
            params_per_channel = 1 if config.decoder == "bernoulli" else 2
            self.decoder = build_decoder(self.architecture, decoder_inputs, self.image_shape, params_per_channel * channels, config.width,
                                         config.depth)

    # ------------------------------------------------------------------ helpers
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _gaussian_noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        device = generator.device if generator is not None else self._device
        return torch.randn(shape, generator=generator, device=device).to(self._device)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check a batch of uint8 images (N, C, H, W) and binarize it if configured (threshold 128)."""
        if images.dtype != torch.uint8:
            raise DiffvaeError(f"the vae expects uint8 images, got {images.dtype}")
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise DiffvaeError(f"the vae was built for images of shape {self.image_shape}, got {tuple(images.shape[1:])}")
        if self.config.binarize:
            return torch.where(images >= 128, 255, 0).to(torch.uint8)
        if self.config.decoder == "bernoulli" and bool(((images != 0) & (images != 255)).any()):
            raise DiffvaeError("the bernoulli decoder needs black-and-white images (only 0 and 255) but this data "
                               "has grey levels; set binarize=true or use the logistic decoder")
        return images

    def _one_hot(self, labels: torch.Tensor | None, n: int) -> torch.Tensor:
        """(n, K) one-hot labels on the model's device; the null label K (or None) is all zeros. Class weights
        w (n, K+1) (:func:`diffvae.conditioning.check_condition`) give the soft vector w[:, :K] (the null
        column drops out, as the null label's all-zero row): (1−λ)·onehot(A) + λ·onehot(B) between classes."""
        labels = check_condition(labels, n, self.num_classes) if labels is not None else None
        if labels is None:
            return torch.zeros(n, self.num_classes, device=self._device)
        if labels.dtype.is_floating_point:
            return labels[:, : self.num_classes].to(self._device, torch.float32)
        return F.one_hot(labels.to(self._device), self.num_classes + 1)[:, : self.num_classes].float()

    def _encode_prepared(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_signed(images).to(self._device)
        if self.num_classes:
            y = self._one_hot(labels, x.shape[0])
            x = torch.cat([x, y[:, :, None, None].expand(-1, -1, *x.shape[2:]).to(x.dtype)], dim=1)
        elif labels is not None:
            check_labels(labels, x.shape[0], 0)
        out = self.encoder(x).float()
        return out[:, : self.config.latent_dim], out[:, self.config.latent_dim:]

    def _decoder_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """z, with the one-hot label beside it for a conditional VAE."""
        if not self.num_classes:
            if labels is not None:
                check_labels(labels, z.shape[0], 0)
            return z
        return torch.cat([z, self._one_hot(labels, z.shape[0]).to(z.dtype)], dim=1)

    def _decoder_params(self, z: torch.Tensor, images: torch.Tensor | None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output for latents z (and labels); the PixelCNN is teacher-forced on ``images``."""
        features = self.decoder(self._decoder_input(z, labels))
        if self.config.decoder == "pixelcnn":
            features = self.pixelcnn(to_signed(images).to(self._device), features)
        return features.float()

    def _log_likelihood_prepared(self, images: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = images.to(self._device)
        params = self._decoder_params(z, images, labels)
        return pixel_log_likelihood(self.config.decoder, images, params).flatten(1).sum(1)

    # ------------------------------------------------------------------ contract
    def set_step(self, step: int) -> None:
        """Tell the model the training step (drives the KL warm-up)."""
        self.step = int(step)

    def encode(self, x_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x[, y]) as (mean, logvar), each float32 (N, L)."""
        return self._encode_prepared(self.prepare(x_uint8), labels)

    def log_likelihood(self, x_uint8: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z[, y]) per example (N,), nats (PixelCNN: teacher-forced on x)."""
        return self._log_likelihood_prepared(self.prepare(x_uint8), z, labels)

    def training_loss(self, x_uint8: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss in **nats per dimension**: (−log p(x|z) + w·KL_fb) / D, batch mean, where
        w = β warmed up linearly over ``kl_warmup_steps`` and KL_fb the free-bits KL.

        Logs: ``recon_nats`` and ``kl_nats`` (per image, batch mean), ``bpd`` — the true −ELBO
        (β = 1, no free bits) in bits/dim — and the ``kl_weight`` used. Uses the global RNG.
        Conditional: the ELBO of log p(x | y) with the label in encoder and decoder, each label
        dropped to the null label with probability ``p_uncond``.
        """
        images = self.prepare(x_uint8).to(self._device)
        if self.num_classes and labels is not None:
            labels = drop_labels(check_labels(labels, images.shape[0], self.num_classes).to(self._device),
                                 self.config.p_uncond, self.num_classes)
        mean, logvar = self._encode_prepared(images, labels)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        log_px = self._log_likelihood_prepared(images, z, labels)
        kl_dims = kl_per_dim(mean, logvar)
        weight = kl_weight(self.step, self.config.beta, self.config.kl_warmup_steps)
        loss_nats = -log_px.mean() + weight * free_bits_kl(kl_dims, self.config.free_bits)
        with torch.no_grad():
            kl = kl_dims.sum(1)
            logs = {
                "recon_nats": float(-log_px.mean()),
                "kl_nats": float(kl.mean()),
                "bpd": float(nats_to_bpd(negative_elbo(log_px, kl).mean(), self.num_dims)),
                "kl_weight": weight,
            }
        return loss_nats / self.num_dims, logs

    @torch.no_grad()
    def bound(self, x_uint8: torch.Tensor, iwae_samples: int = 0, generator: torch.Generator | None = None,
              labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-example bits/dim of the tightest bound asked for: ``bpd`` is ``elbo_bpd`` (−ELBO with β = 1,
        no free bits, one z sample) or, if K = iwae_samples > 0, ``iwae_bpd`` (−L_K). The parts add up:
        ``recon_bpd`` + ``kl_bpd`` + ``iwae_gap_bpd`` = ``bpd`` (the gap, IWAE − ELBO, is 0 without IWAE).
        A conditional VAE with ``labels`` bounds −log p(x | y) (without: the null label's p(x))."""
        if iwae_samples < 0:
            raise DiffvaeError(f"iwae_samples must be >= 0, got {iwae_samples}")
        images = self.prepare(x_uint8).to(self._device)
        labels = check_labels(labels, images.shape[0], self.num_classes) if labels is not None else None
        mean, logvar = self._encode_prepared(images, labels)
        std = torch.exp(0.5 * logvar)
        z = mean + std * self._gaussian_noise(tuple(mean.shape), generator)
        log_px = self._log_likelihood_prepared(images, z, labels)
        kl = kl_per_dim(mean, logvar).sum(1)
        elbo = nats_to_bpd(negative_elbo(log_px, kl), self.num_dims)
        result = {
            "bpd": elbo,
            "elbo_bpd": elbo,
            "recon_bpd": nats_to_bpd(-log_px, self.num_dims),
            "kl_bpd": nats_to_bpd(kl, self.num_dims),
            "iwae_gap_bpd": torch.zeros_like(elbo),
        }
        if iwae_samples > 0:
            log_px_k, log_pz_k, log_qz_k = [], [], []
            for _ in range(iwae_samples):
                z_k = mean + std * self._gaussian_noise(tuple(mean.shape), generator)
                log_px_k.append(self._log_likelihood_prepared(images, z_k, labels))
                log_pz_k.append(gaussian_log_density(z_k, 0.0, 0.0).sum(1))
                log_qz_k.append(gaussian_log_density(z_k, mean, logvar).sum(1))
            nats = iwae_bound(torch.stack(log_px_k), torch.stack(log_pz_k), torch.stack(log_qz_k))
            result["iwae_bpd"] = result["bpd"] = nats_to_bpd(nats, self.num_dims)
            result["iwae_gap_bpd"] = result["iwae_bpd"] - elbo
        return result

    @torch.no_grad()
    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images (N, C, H, W) for latents z (and labels): the decoder's per-pixel median
        (:func:`pixel_median`); for the PixelCNN an autoregressive sample (H·W passes)."""
        z = z.to(self._device)
        channels = self.image_shape[0]
        if self.config.decoder != "pixelcnn":
            return pixel_median(self.config.decoder, self._decoder_params(z, None, labels), channels)
        cond = self.decoder(self._decoder_input(z, labels))
        signed = autoregressive_sample(
            self.pixelcnn, cond, self.image_shape,
            lambda params: to_signed(pixel_sample("logistic", params[:, :, None, None], channels, generator)[:, :, 0, 0]),
        )
        return to_uint8(signed)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None, **_) -> torch.Tensor:
        """n uint8 images (n, C, H, W): z ~ N(0, I), then :meth:`decode` (sampling options do not apply);
        a conditional VAE decodes with ``labels`` (n,) or class weights (n, K+1) (no guidance: one decoder pass)."""
        if n < 0:
            raise DiffvaeError(f"number of samples must be >= 0, got {n}")
        labels = check_condition(labels, n, self.num_classes) if labels is not None else None
        z = self._gaussian_noise((n, self.config.latent_dim), generator)
        if n == 0:
            return torch.zeros(0, *self.image_shape, dtype=torch.uint8, device=self._device)
        label_chunks = labels.split(DECODE_BATCH) if labels is not None else [None] * len(z.split(DECODE_BATCH))
        with channels_last_decoder(self):
            return torch.cat([self.decode(chunk, generator, y) for chunk, y in zip(z.split(DECODE_BATCH), label_chunks)])

    # ------------------------------------------------------------------ the shared family interface
    @property
    def latent_dims(self) -> int:
        return self.config.latent_dim

    def nfe(self, **_) -> int:
        """Network evaluations per sample: one decode (a PixelCNN decoder makes H·W passes)."""
        return self.image_shape[1] * self.image_shape[2] if self.config.decoder == "pixelcnn" else 1

    @torch.no_grad()
    def to_latent(self, x_uint8: torch.Tensor, **_) -> torch.Tensor:
        """The posterior mean E_q[z|x]: the VAE's direct latent for interpolation and probes."""
        return self.encode(x_uint8)[0]

    @torch.no_grad()
    def from_latent(self, z: torch.Tensor, generator: torch.Generator | None = None, **_) -> torch.Tensor:
        return self.decode(z.float(), generator)

    @torch.no_grad()
    def diagnostics(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Posterior-collapse diagnostics on held-out images: active units (Burda et al. 2016),
        KL per latent dimension and in total (nats; with the 95% interval of the mean over the N
        images, mean ± 1.96 SEM), and I(x; z) under the aggregate posterior with its estimator's
        ceiling ``mutual_info_max`` = log N (an estimate at the ceiling is only a lower bound)."""
        mean, logvar = self.encode(x_uint8)
        count, _ = active_units(mean)
        kl = kl_per_dim(mean, logvar).double()
        kl_dims, kl_total = kl.mean(0), kl.sum(1)
        n = kl_total.numel()
        half = 1.96 * float(kl_total.std()) / math.sqrt(n) if n > 1 else float("nan")
        return {"active_units": int(count), "kl_per_dim": [float(v) for v in kl_dims],
                "kl_nats": float(kl_dims.sum()), "kl_nats_ci95": [float(kl_dims.sum()) - half, float(kl_dims.sum()) + half], "kl_n": n,
                "mutual_info": float(mutual_information(mean, logvar, generator=generator)),
                "mutual_info_max": mutual_information_ceiling(n)}


@contextlib.contextmanager
def channels_last_decoder(vae: "VAE"):
    """Decode through a channels_last copy of a convolutional decoder (a CPU convolves NHWC about 2× faster
    at these sizes); the model's own weights are not touched. MLP and PixelCNN decoders decode as they are."""
    original = vae.decoder
    convolutional = any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in original.modules())
    if not convolutional or vae.config.decoder == "pixelcnn":
        yield
        return
    vae.decoder = copy.deepcopy(original).to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        vae.decoder = original
