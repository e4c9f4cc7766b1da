"""Interpolation and round trips through a family's latent — one procedure for every family.

Each family model maps images to its latent and back:

* ``to_latent(x_uint8, **kw)``  — VAE: the posterior mean; pixel diffusion: DDIM inversion to x_T;
  latent diffusion: the autoencoder's latent, then DDIM inversion in latent space.
* ``from_latent(z, **kw)``      — VAE: decode; diffusion: deterministic DDIM generation from x_T.

Interpolation walks a path between two latents (spherical by default — the right path between
Gaussian noises, whose norms concentrate — or linear) and maps every point back to an image.
"""

from __future__ import annotations

import torch

from diffvae.diffusion.samplers import slerp
from diffvae.metrics.interpolation import roundtrip_error


def latent_path(z_a: torch.Tensor, z_b: torch.Tensor, frames: int, path: str = "slerp") -> torch.Tensor:
    """Points along the path from z_a to z_b, shaped (N, frames, ...); both ends included."""
    weights = torch.linspace(0.0, 1.0, frames, dtype=z_a.dtype, device=z_a.device)
    if path == "slerp":
        points = [slerp(z_a, z_b, float(w)) for w in weights]
    elif path == "linear":
        points = [torch.lerp(z_a, z_b, float(w)) for w in weights]
    else:
        raise ValueError(f"unknown path {path!r}")
    return torch.stack(points, dim=1)


def interpolation_strip(model, a: torch.Tensor, b: torch.Tensor, frames: int, path: str = "slerp", **kw) -> torch.Tensor:
    """uint8 frames (N, frames, C, H, W) interpolating between image batches ``a`` and ``b``."""
    device = next(model.parameters()).device
    z = latent_path(model.to_latent(a.to(device), **kw), model.to_latent(b.to(device), **kw), frames, path)
    images = model.from_latent(z.flatten(0, 1), **kw)
    return images.reshape(a.shape[0], frames, *images.shape[1:]).cpu()


def roundtrip(model, x: torch.Tensor, **kw) -> tuple[torch.Tensor, dict[str, float]]:
    """Map images to the latent and back: (reconstructions uint8, error figures)."""
    device = next(model.parameters()).device
    rec = model.from_latent(model.to_latent(x.to(device), **kw), **kw).cpu()
    return rec, roundtrip_error(x, rec)
