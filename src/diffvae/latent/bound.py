"""The whole-model likelihood bound of latent diffusion, in bits per pixel dimension (the LSGM view,
Vahdat et al. 2021, eq. 2) — pure functions of per-example terms.

With an encoder q(z|x), a decoder p(x|z) and a prior p(z) on the latent,

    −log p(x) ≤ E_q(z|x)[−log p(x|z)] − H[q(z|x)] + E_q(z|x)[−log p(z)]

(the usual −ELBO, with KL(q ‖ p) = −H[q] + E_q[−log p(z)] split so that p(z) need not be Gaussian).
Here p(z) is the diffusion model, trained on the *scaled* latent z' = s·z, so
p(z) = p'(s z) · s^{d_z} (change of variables, d_z latent dimensions):

    −log p(z) = −log p'(s z) − d_z log s.

The −log p'(z') term is itself bounded by the diffusion model's variational bound on continuous
data (continuous Gaussian L₀; :meth:`diffvae.diffusion.model.Denoiser.bound_nats` with
``decoder="continuous"``). So the whole bound is

    bpd = [ reconstruction − entropy + latent_prior + jacobian ] / (D ln 2),   D = pixel dimensions,

reconstruction = −log p(x|z) (discretized, so the bound is on the probability of the 8-bit image),
entropy = H[q(z|x)] (analytic), latent_prior = the diffusion bound on s·z, jacobian = −d_z log s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffvae.distributions import LOG_2PI, nats_to_bpd

__all__ = ["gaussian_entropy", "scale_jacobian_nats", "latent_diffusion_bound", "LATENT_PRIOR_PARTS"]

# the diffusion bound's parts (Denoiser.bound_nats keys) → names in the whole-model bound
LATENT_PRIOR_PARTS = {"prior": "latent_prior_terminal_bpd", "decoder": "latent_prior_decoder_bpd",
                      "diffusion": "latent_prior_diffusion_bpd", "stderr": "bpd_stderr"}


def gaussian_entropy(logvar: Tensor) -> Tensor:
    """Differential entropy of N(μ, σ²) elementwise, in nats: H = ½ (1 + log 2π + log σ²)."""
    return 0.5 * (1.0 + LOG_2PI + logvar)


def scale_jacobian_nats(latent_scale: float, latent_dims: int) -> float:
    """The change-of-variables term of −log p(z) for a prior fitted to z' = s·z, in nats:

        −log p(z) = −log p'(s z) − d_z log s   ⇒   jacobian = −d_z log s.
    """
    if not latent_scale > 0:
        raise ValueError(f"the latent scale must be positive, got {latent_scale}")
    return -latent_dims * math.log(latent_scale)


def latent_diffusion_bound(
    reconstruction_nats: Tensor,
    entropy_nats: Tensor,
    latent_prior_nats: Tensor,
    jacobian_nats: float | Tensor,
    pixel_dims: int,
    latent_prior_parts: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Per-example bits/dim of the whole-model bound and its parts (module docstring):

        bpd = reconstruction_bpd − entropy_bpd + latent_prior_bpd + jacobian_bpd

    Inputs are per-example nats (N,): −log p(x|z), H[q(z|x)], the diffusion bound on s·z, and
    −d_z log s. ``latent_prior_parts``, the diffusion bound's own parts (L_T ``prior``, L₀
    ``decoder``, Σ L_t ``diffusion``, and ``stderr`` of an estimate), are passed through renamed
    by ``LATENT_PRIOR_PARTS``.
    """
    total = reconstruction_nats - entropy_nats + latent_prior_nats + jacobian_nats
    out = {
        "bpd": total,
        "reconstruction_bpd": reconstruction_nats,
        "entropy_bpd": entropy_nats,
        "latent_prior_bpd": latent_prior_nats,
        "jacobian_bpd": torch.as_tensor(jacobian_nats, dtype=total.dtype, device=total.device).expand_as(total),
    }
    for name, value in (latent_prior_parts or {}).items():
        out[LATENT_PRIOR_PARTS.get(name, f"latent_{name}_bpd")] = value
    return {key: nats_to_bpd(value, pixel_dims) for key, value in out.items()}
