"""How sharp images are, as a ratio to real data: blurry samples score below 1.

Sharpness here is the **variance of the Laplacian** (Pech-Pacheco et al. 2000), a standard
focus measure: blur removes high frequencies, which the Laplacian amplifies.

    gray   = mean over channels of u / 255                  (u the uint8 image, so gray ∈ [0, 1])
    L      = gray ∗ [[0, 1, 0], [1, −4, 1], [0, 1, 0]]      (valid region only: (H−2) × (W−2))
    s(img) = Var(L)                                         (over the pixels of one image)
    sharpness(images) = mean over images of s(img)

The ratio sharpness(samples) / sharpness(real) is 1 when samples are as sharp as the data and
below 1 when blurrier. Pixel noise also raises the Laplacian's variance, so a ratio above 1 means
"sharper or noisier than the data", not "better".
"""

from __future__ import annotations

import numpy as np
import torch

from diffvae.errors import DiffvaeError

LAPLACIAN_KERNEL = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def _grayscale_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float64 (N, 1, H, W) in [0, 1], averaging the channels."""
    images = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
    if images.dtype != torch.uint8:
        raise DiffvaeError(f"sharpness expects uint8 images, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[2] < 3 or images.shape[3] < 3:
        raise DiffvaeError(f"sharpness expects a non-empty (N, C, H, W) batch with H, W >= 3, got {tuple(images.shape)}")
    return images.detach().cpu().to(torch.float64).div(255.0).mean(dim=1, keepdim=True)


def laplacian(gray: torch.Tensor) -> torch.Tensor:
    """5-point discrete Laplacian of (N, 1, H, W) images on the valid region (N, 1, H−2, W−2):
    L[i, j] = x[i−1, j] + x[i+1, j] + x[i, j−1] + x[i, j+1] − 4 x[i, j]."""
    return torch.nn.functional.conv2d(gray, LAPLACIAN_KERNEL.to(gray.dtype)[None, None])


def laplacian_variance(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-image variance of the Laplacian of the [0, 1] grayscale image, shape (N,)."""
    return laplacian(_grayscale_unit(images_uint8)).flatten(1).var(dim=1, unbiased=False)


def sharpness(images_uint8: np.ndarray | torch.Tensor) -> float:
    """Mean over images of the variance of the Laplacian (see the module docstring)."""
    return float(laplacian_variance(images_uint8).mean())


def sharpness_ratio(samples: np.ndarray | torch.Tensor, real: np.ndarray | torch.Tensor) -> float:
    """sharpness(samples) / sharpness(real): 1 = as sharp as the data, < 1 = blurrier."""
    reference = sharpness(real)
    if reference <= 0.0:
        raise DiffvaeError("sharpness_ratio: the real images are constant (zero Laplacian variance), no reference")
    return sharpness(samples) / reference
