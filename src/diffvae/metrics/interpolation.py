"""Scores for paths through a model's latent space and for encode → decode round trips.

Making the paths (lerp, slerp, DDIM inversion) belongs to the models; these functions only
measure frames and reconstructions they are given.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffvae.errors import DiffvaeError
from diffvae.images import to_signed


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    return (array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))).detach().cpu()


def step_lengths(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """L2 distances ‖f_{k+1} − f_k‖ between consecutive frames, shape (N_paths, K − 1), float64."""
    frames = _as_tensor(frames)
    if frames.ndim < 3 or frames.shape[1] < 3:
        raise DiffvaeError(f"frames must be (N_paths, K >= 3, ...), got shape {tuple(frames.shape)}")
    flat = frames.to(torch.float64).flatten(2)
    return (flat[:, 1:] - flat[:, :-1]).norm(dim=2)


def path_smoothness(frames: np.ndarray | torch.Tensor) -> float:
    """Unevenness of interpolation paths: for each path the coefficient of variation of its step
    lengths dₖ = ‖f_{k+1} − f_k‖,

        cv = std(d) / mean(d)     (population std over the K − 1 steps),

    averaged over paths. 0 = every step changes the image equally (a smooth morph); large values
    mean the path jumps (e.g. an abrupt switch between two modes). Scale-free, so uint8 and
    [-1, 1] frames score the same. A path whose frames are all identical counts as 0 (its steps
    are equal). Frames are (N_paths, K, ...) with K >= 3.
    """
    steps = step_lengths(frames)
    mean = steps.mean(dim=1)
    std = steps.std(dim=1, unbiased=False)
    cv = torch.where(mean > 0, std / mean.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(mean))
    return float(cv.mean())


def _to_signed_float64(images: torch.Tensor) -> torch.Tensor:
    """uint8 → [-1, 1] via :func:`diffvae.images.to_signed`; float input is taken as already in [-1, 1]."""
    return to_signed(images, torch.float64) if images.dtype == torch.uint8 else images.to(torch.float64)


def roundtrip_error(x: np.ndarray | torch.Tensor, x_rec: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Reconstruction error of x_rec against x, both on the [-1, 1] scale (uint8 inputs are mapped
    with ``u / 127.5 − 1``; float inputs must already be in [-1, 1]):

        mse     = mean over all elements of (x − x_rec)²
        psnr_db = 10 log10(peak² / mse) with peak = 2, the range of [-1, 1]  (inf when mse = 0)

    The PSNR equals the usual uint8 PSNR with peak 255, since both scale the error by the range.
    """
    x, x_rec = _as_tensor(x), _as_tensor(x_rec)
    if x.shape != x_rec.shape or x.numel() == 0:
        raise DiffvaeError(f"roundtrip_error needs two non-empty arrays of one shape, got {tuple(x.shape)} and {tuple(x_rec.shape)}")
    mse = float((_to_signed_float64(x) - _to_signed_float64(x_rec)).square().mean())
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(4.0 / mse)
    return {"mse": mse, "psnr_db": psnr}
