"""Interpolation and round trips through a family's latent — one procedure for every family.

Each family model maps images to its latent and back:

* ``to_latent(x_uint8, **kw)``  — VAE: the posterior mean; pixel diffusion: DDIM inversion to x_T;
  latent diffusion: the autoencoder's latent, then DDIM inversion in latent space.
* ``from_latent(z, **kw)``      — VAE: decode; diffusion: deterministic DDIM generation from x_T.

Interpolation walks a path between two latents (spherical by default — the right path between
Gaussian noises, whose norms concentrate — or linear) and maps every point back to an image.

Between classes (``diffvae interpolate RUN --classes A,B``):

* an unconditional run walks the same latent path between held-out images of class A and of class B
  (:func:`class_endpoints`);
* a conditional run keeps each strip's noise fixed and moves the *condition*: frame λ samples with the
  class weights w(λ) = (1−λ)·onehot(A) + λ·onehot(B) over the K+1 conditions (:func:`class_strip`). Every
  family reads class weights in its own package (the UNet mixes its class embeddings, Σ_c w_c e(c); the
  conditional VAE decodes with the soft vector), so nothing here depends on the family; with guidance w
  the iterative families follow f_u + w (f_c(mix) − f_u). λ = 0 and λ = 1 are exactly ``model.sample``
  with labels A and B from the same generator state.
"""

from __future__ import annotations

import torch

from diffvae.conditioning import num_classes
from diffvae.diffusion.samplers import slerp
from diffvae.errors import DiffvaeError
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


def parse_class_pair(text: str, k: int) -> tuple[int, int]:
    """``--classes A,B``: two different class numbers in 0..k−1 (one error line otherwise)."""
    try:
        values = [int(part) for part in str(text).split(",")]
    except ValueError:
        raise DiffvaeError(f"--classes must be two class numbers A,B, e.g. 3,8; got {text!r}") from None
    if len(values) != 2:
        raise DiffvaeError(f"--classes must be two class numbers A,B, e.g. 3,8; got {text!r}")
    if values[0] == values[1]:
        raise DiffvaeError(f"--classes {text}: give two different classes (one class has nothing to interpolate)")
    bad = [c for c in values if not 0 <= c < k]
    if bad:
        raise DiffvaeError(f"class {bad[0]} is out of range: this data has classes 0..{k - 1}")
    return values[0], values[1]


def class_weights(a: int, b: int, lam: float, n: int, k: int) -> torch.Tensor:
    """n rows of (1−λ)·onehot(a) + λ·onehot(b) over the K+1 conditions (float32 (n, K+1)); λ = 0 and 1 give
    exact one-hot rows."""
    weights = torch.zeros(n, k + 1)
    weights[:, a] += 1.0 - lam
    weights[:, b] += lam
    return weights


def class_strip(model, a: int, b: int, pairs: int, frames: int, generator: torch.Generator | None = None,
                guidance: float | None = None, **kw) -> torch.Tensor:
    """uint8 frames (pairs, frames, C, H, W) of a conditional model moving from class ``a`` to ``b``: frame j
    is ``model.sample(pairs, labels=class_weights(a, b, λ_j))``, λ_j = j/(frames−1), every frame from the same
    generator state (so each row keeps its noise); ``guidance`` as in sampling (iterative families)."""
    k = num_classes(model)
    if k == 0:
        raise DiffvaeError("this run was trained unconditionally; interpolating the condition needs --conditional")
    if frames < 2 or pairs < 1:
        raise DiffvaeError(f"a class strip needs at least 2 frames and 1 row, got {frames} frames and {pairs} rows")
    if generator is None:
        generator = torch.Generator(device=next(model.parameters()).device)
        generator.manual_seed(int(torch.randint(2**62, (1,))))
    state, extra = generator.get_state(), ({} if guidance is None else {"guidance": guidance})
    strip = []
    for lam in (j / (frames - 1) for j in range(frames)):
        g = torch.Generator(device=generator.device)
        g.set_state(state)
        strip.append(model.sample(pairs, generator=g, labels=class_weights(a, b, lam, pairs, k), **extra, **kw).cpu())
    return torch.stack(strip, dim=1)


def class_endpoints(images: torch.Tensor, labels: torch.Tensor | None, a: int, b: int, pairs: int,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (pairs,) into ``images`` of class ``a`` and of class ``b`` (drawn at random without replacement),
    the two ends of the strips of an unconditional run; refuses data without labels or too few of a class."""
    if labels is None:
        raise DiffvaeError("--classes needs labelled data, but this run's data has no labels")
    chosen = []
    for c in (a, b):
        pool = (labels == c).nonzero().squeeze(1)
        if pool.numel() < pairs:
            raise DiffvaeError(f"the held-out split has {pool.numel()} images of class {c}; --pairs {pairs} needs {pairs}")
        chosen.append(pool[torch.randperm(pool.numel(), generator=generator)[:pairs]])
    return chosen[0], chosen[1]
