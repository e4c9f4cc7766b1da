"""Encoder and decoder of the latent-diffusion autoencoder — networks only, no probability.

The latent is *spatial*: an image (N, C, H, W) becomes a map (N, c, h, w) with ``log2 f``
stride-2 3×3 convolutions (size → ⌈size / 2⌉ each), so f = 4 takes 28×28 to 7×7 and 8×8 to 2×2.

    encoder:  conv_in ─ [ResBlock ─ Downsample] × log2 f ─ ResBlock ─ GN, SiLU, conv → (mean, logvar)
    decoder:  conv_in ─ ResBlock ─ [Upsample to the encoder's size ─ ResBlock] × log2 f ─ GN, SiLU, conv

Level ``i`` (0 = full resolution) has ``width · min(2^i, 2)`` channels (``width`` at full size,
``2·width`` below). The decoder is told the encoder's sizes, so odd sizes come back exactly
(7 → 14 → 28, 4 → 7). GroupNorm uses ``GROUPS`` groups; widths must be multiples of it.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from diffvae.errors import DiffvaeError

__all__ = ["DOWNSAMPLE_FACTORS", "GROUPS", "level_sizes", "level_width", "SpatialEncoder", "SpatialDecoder"]

DOWNSAMPLE_FACTORS = (2, 4, 8)
GROUPS = 8


def level_sizes(height: int, width: int, downsample: int) -> list[tuple[int, int]]:
    """Spatial size at each level, full size first: ``log2 f`` halvings, each size → ⌈size / 2⌉
    (a 3×3, stride-2, padding-1 convolution). The last entry is the latent's (h, w)."""
    if downsample not in DOWNSAMPLE_FACTORS:
        raise DiffvaeError(f"the autoencoder downsampling factor must be one of {', '.join(map(str, DOWNSAMPLE_FACTORS))}, got {downsample}")
    sizes = [(height, width)]
    for _ in range(int(math.log2(downsample))):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def level_width(level: int, width: int) -> int:
    """Channels at a level: ``width`` at full resolution, ``2·width`` at every lower one."""
    return width if level == 0 else 2 * width


def _check_width(width: int) -> None:
    if width < GROUPS or width % GROUPS:
        raise DiffvaeError(f"the autoencoder width must be a positive multiple of {GROUPS}, got {width}")


class ResBlock(nn.Module):
    """``out = skip(x) + conv(SiLU(GN(conv(SiLU(GN(x))))))`` (no time embedding)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(GROUPS, in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm_out = nn.GroupNorm(GROUPS, out_channels)
        self.conv_out = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(F.silu(self.norm_in(x)))
        return self.skip(x) + self.conv_out(F.silu(self.norm_out(h)))


class SpatialEncoder(nn.Module):
    """Image (N, C, H, W) in [-1, 1] → (mean, logvar), each (N, latent_channels, h, w)."""

    def __init__(self, in_channels: int, latent_channels: int, downsample: int, width: int = 32, res_blocks: int = 1):
        super().__init__()
        _check_width(width)
        if latent_channels < 1 or res_blocks < 1:
            raise DiffvaeError("the autoencoder needs at least one latent channel and one residual block per level")
        levels = len(level_sizes(1, 1, downsample)) - 1  # validates the factor
        self.latent_channels = latent_channels
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.ModuleList()
        channels = width
        for level in range(levels):
            blocks: list[nn.Module] = [ResBlock(channels, level_width(level, width)) for _ in range(res_blocks)]
            channels = level_width(level, width)
            blocks.append(nn.Conv2d(channels, level_width(level + 1, width), 3, stride=2, padding=1))
            channels = level_width(level + 1, width)
            self.down.append(nn.Sequential(*blocks))
        self.middle = ResBlock(channels, channels)
        self.norm_out = nn.GroupNorm(GROUPS, channels)
        self.conv_out = nn.Conv2d(channels, 2 * latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        h = self.conv_out(F.silu(self.norm_out(self.middle(h))))
        return h[:, : self.latent_channels], h[:, self.latent_channels:]


class SpatialDecoder(nn.Module):
    """Latent (N, latent_channels, h, w) → (N, out_channels, H, W), mirroring :class:`SpatialEncoder`.

    ``image_size`` is (H, W) of the images the encoder saw; each upsampling is nearest-neighbour
    to the encoder's size at that level, then a 3×3 convolution.
    """

    def __init__(self, latent_channels: int, out_channels: int, image_size: tuple[int, int], downsample: int,
                 width: int = 32, res_blocks: int = 1):
        super().__init__()
        _check_width(width)
        self.sizes = level_sizes(image_size[0], image_size[1], downsample)
        levels = len(self.sizes) - 1
        channels = level_width(levels, width)
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.middle = ResBlock(channels, channels)
        self.up_convs = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            self.up_convs.append(nn.Conv2d(channels, level_width(level, width), 3, padding=1))
            channels = level_width(level, width)
            self.up_blocks.append(nn.Sequential(*[ResBlock(channels, channels) for _ in range(res_blocks)]))
        self.norm_out = nn.GroupNorm(GROUPS, channels)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.middle(self.conv_in(z))
        for size, conv, blocks in zip(reversed(self.sizes[:-1]), self.up_convs, self.up_blocks):
            h = blocks(conv(F.interpolate(h, size=size, mode="nearest")))
        return self.conv_out(F.silu(self.norm_out(h)))
