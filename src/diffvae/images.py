"""Converting between the uint8 images every data source yields and the tensors models use.

Every family models images on the 8-bit grid: a uint8 tensor of shape (N, C, H, W).
Networks see them scaled to [-1, 1] with ``x = u / 127.5 - 1`` so that the 256 levels sit
``2/255`` apart — the bin width of the discretized likelihoods in :mod:`diffvae.distributions`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_signed(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 in {0..255} → float in [-1, 1]: x = u / 127.5 − 1."""
    return images.to(dtype) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] → uint8, rounding to the nearest of the 256 levels (clamped)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile uint8 images (N, C, H, W) into one (H', W', C) uint8 array, row by row."""
    images = images.detach().cpu()
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y:y + h, x:x + w] = images[i].permute(1, 2, 0).numpy()
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Save uint8 images (N, C, H, W) as one PNG grid, each pixel enlarged ``scale`` times."""
    from PIL import Image

    grid = make_grid(images, nrow=nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    mode = "L" if grid.shape[2] == 1 else "RGB"
    img = Image.fromarray(grid[:, :, 0] if mode == "L" else grid, mode=mode)
    path = Path(path)
    img.save(path)
    return path
