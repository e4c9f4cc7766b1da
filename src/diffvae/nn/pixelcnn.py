"""A small conditional PixelCNN (van den Oord et al. 2016) — the VAE's autoregressive decoder.

Pixels are ordered in raster order (row by row, left to right). Masked convolutions make the
output at pixel i depend only on input pixels before i: the first layer uses mask type "A"
(centre excluded), later layers type "B" (centre included, which only carries information
from pixels < i). The C channels of one pixel are predicted together from earlier pixels, i.e.
they are conditionally independent given the context and the latent.

Conditioning: a feature map computed from the latent (N, cond_channels, H, W) is projected by
a 1×1 convolution and added to every hidden layer (as in PixelVAE, Gulrajani et al. 2017).
A PixelCNN decoder this strong can model the data without the latent: it reproduces posterior
collapse (Bowman et al. 2016; Chen et al. 2017).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def causal_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """(k, k) 0/1 mask: rows above the centre, and the centre row left of the centre; type "B"
    also keeps the centre itself."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask type must be 'A' or 'B', got {mask_type!r}")
    centre = kernel_size // 2
    mask = torch.ones(kernel_size, kernel_size)
    mask[centre, centre + (1 if mask_type == "B" else 0):] = 0
    mask[centre + 1:] = 0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel is multiplied by :func:`causal_mask` on every call."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type = mask_type
        self.register_buffer("mask", causal_mask(kernel_size, mask_type), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """Conditional PixelCNN: (x (N, C, H, W), cond (N, cond_channels, H, W)) → (N, out_channels, H, W).

    One 7×7 type-A layer, then ``layers − 1`` residual 3×3 type-B layers, then a 1×1 head; the
    conditioning map is added to every hidden layer.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64, layers: int = 5, cond_channels: int = 64):
        super().__init__()
        if layers < 1:
            raise ValueError("a PixelCNN needs at least one layer")
        self.input_conv = MaskedConv2d(in_channels, hidden_channels, 7, "A")
        # an output pixel sees input rows up to this many above it, and columns this far either side
        self.receptive_field = 7 // 2 + (layers - 1) * (3 // 2)
        self.hidden_convs = nn.ModuleList(MaskedConv2d(hidden_channels, hidden_channels, 3, "B") for _ in range(layers - 1))
        self.cond_projections = nn.ModuleList(nn.Conv2d(cond_channels, hidden_channels, 1) for _ in range(layers))
        self.head = nn.Sequential(
            nn.SiLU(), nn.Conv2d(hidden_channels, hidden_channels, 1), nn.SiLU(), nn.Conv2d(hidden_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        hidden = self.input_conv(x) + self.cond_projections[0](cond)
        for conv, projection in zip(self.hidden_convs, self.cond_projections[1:]):
            hidden = hidden + conv(F.silu(hidden)) + projection(cond)
        return self.head(hidden)


@torch.no_grad()
def autoregressive_sample(
    network: PixelCNN,
    cond: torch.Tensor,
    image_shape: tuple[int, int, int],
    sample_pixel: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Draw images pixel by pixel in raster order: H·W network passes.

    ``sample_pixel`` maps the network output at one pixel (N, out_channels) to that pixel's
    channel values (N, C) on the network's input scale. Each pass sees only the window the
    output pixel depends on — r = ``network.receptive_field`` rows above and columns either side.
    That is exact: a layer reaching k pixels corrupts (through the window's zero padding) only
    the k pixels nearest the window's edges, and the reaches of all layers add up to r.
    Returns (N, C, H, W) float.
    """
    channels, height, width = image_shape
    reach = network.receptive_field
    images = torch.zeros(cond.shape[0], channels, height, width, device=cond.device, dtype=torch.float32)
    for row in range(height):
        top = max(0, row - reach)
        for col in range(width):
            left, right = max(0, col - reach), min(width, col + reach + 1)
            output = network(images[:, :, top:row + 1, left:right], cond[:, :, top:row + 1, left:right])
            images[:, :, row, col] = sample_pixel(output[:, :, row - top, col - left].float()).to(images.dtype)
    return images
