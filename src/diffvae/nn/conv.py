"""Encoder and decoder networks for VAEs — networks only, no probability.

* Conv: stride-2 3×3 convolutions halve the image (rounding up) until its smaller side is at
  most 8 (28→14→7, 32→16→8, 64→32→16→8), ``width`` channels on the way and ``2·width`` at the
  bottom, then a linear head; the decoder mirrors it with transposed convolutions that
  restore the exact sizes. ``depth`` adds that many same-size 3×3 convolutions per level
  (0: the original shallow networks, whose checkpoints keep loading).
* MLP: for tiny images (≤ 12 px, e.g. 8×8 digits) two hidden layers of ``4·width`` units.

An encoder maps images (N, C, H, W) in [-1, 1] to ``out_features`` numbers (2·L for a Gaussian
posterior); a decoder maps (N, L) to ``out_channels`` numbers per pixel (N, out_channels, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MLP_MAX_PIXELS = 144  # "auto" picks the MLP when H·W ≤ 144 (12×12)


def resolve_architecture(architecture: str, image_shape: tuple[int, int, int]) -> str:
    """"conv" or "mlp"; "auto" means mlp when H·W ≤ 144 pixels, else conv."""
    if architecture == "auto":
        _, height, width = image_shape
        return "mlp" if height * width <= MLP_MAX_PIXELS else "conv"
    return architecture


def downsample_sizes(height: int, width: int, stop_at: int = 8) -> list[tuple[int, int]]:
    """Spatial sizes at each level of the conv encoder, full size first.

    Each level is a 3×3, stride-2, padding-1 convolution: size → ⌈size / 2⌉, applied while the
    smaller side exceeds ``stop_at``.
    """
    sizes = [(height, width)]
    while min(sizes[-1]) > stop_at:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def channels_at(level: int, levels: int, width: int) -> int:
    """Channels of the feature map at a level (0 = full size): ``2·width`` at the bottom, else ``width``."""
    return 2 * width if level == levels else width


class ConvEncoder(nn.Module):
    """Image (N, C, H, W) → (N, out_features): strided 3×3 convs, then a linear head."""

    def __init__(self, image_shape: tuple[int, int, int], out_features: int, width: int = 64, depth: int = 0):
        super().__init__()
        channels, height, image_width = image_shape
        sizes = downsample_sizes(height, image_width)
        levels = len(sizes) - 1
        bottom_channels = channels_at(levels, levels, width)
        layers: list[nn.Module] = []
        in_channels = channels
        for level in range(1, levels + 1):
            out_channels = channels_at(level, levels, width)
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.SiLU(), *_same_size_convs(out_channels, depth)]
            in_channels = out_channels
        if levels == 0:  # already small: one plain conv
            layers += [nn.Conv2d(in_channels, bottom_channels, 3, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        bottom_h, bottom_w = sizes[-1]
        self.head = nn.Linear(bottom_channels * bottom_h * bottom_w, out_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


class ConvDecoder(nn.Module):
    """Latent (N, L) → (N, out_channels, H, W): linear to the bottom map, then transposed convs up,
    the last emitting the output channels."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int, width: int = 64, depth: int = 0):
        super().__init__()
        _, height, image_width = image_shape
        sizes = downsample_sizes(height, image_width)
        levels = len(sizes) - 1
        self.bottom_channels = channels_at(levels, levels, width)
        self.bottom_size = sizes[-1]
        self.project = nn.Linear(latent_dim, self.bottom_channels * self.bottom_size[0] * self.bottom_size[1])
        layers: list[nn.Module] = [nn.SiLU()]
        in_channels = self.bottom_channels
        for level in range(levels, 0, -1):
            (small_h, small_w), (big_h, big_w) = sizes[level], sizes[level - 1]
            # ConvTranspose(k=3, s=2, p=1) gives 2·small − 1 + output_padding: the exact inverse size.
            output_padding = (big_h - (2 * small_h - 1), big_w - (2 * small_w - 1))
            # with depth 0 the last upsampling emits the output channels directly; with depth d it
            # emits `width` and d convolutions at full size refine them (the last one emits the output)
            last = level == 1
            out = out_channels if last and depth == 0 else channels_at(level - 1, levels, width)
            layers += _same_size_convs(in_channels, depth)
            layers.append(nn.ConvTranspose2d(in_channels, out, 3, stride=2, padding=1, output_padding=output_padding))
            if not last or depth > 0:
                layers.append(nn.SiLU())
            in_channels = out
        if levels > 0 and depth > 0:
            layers += [*_same_size_convs(in_channels, depth - 1), nn.Conv2d(in_channels, out_channels, 3, padding=1)]
        if levels == 0:
            layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        bottom = self.project(latent).view(latent.shape[0], self.bottom_channels, *self.bottom_size)
        return self.body(bottom)


class MLPEncoder(nn.Module):
    """Image (N, C, H, W) → (N, out_features) through two hidden layers of 4·width units."""

    def __init__(self, image_shape: tuple[int, int, int], out_features: int, width: int = 64):
        super().__init__()
        hidden = 4 * width
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(image_shape), hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_features),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class MLPDecoder(nn.Module):
    """Latent (N, L) → (N, out_channels, H, W) through two hidden layers of 4·width units."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int, width: int = 64):
        super().__init__()
        hidden = 4 * width
        _, height, image_width = image_shape
        self.output_shape = (out_channels, height, image_width)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, math.prod(self.output_shape)),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent).view(latent.shape[0], *self.output_shape)


def _same_size_convs(channels: int, depth: int) -> list[nn.Module]:
    """``depth`` 3×3 convolutions that keep the size and channels, each followed by SiLU."""
    return [layer for _ in range(depth) for layer in (nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU())]


def build_encoder(architecture: str, image_shape: tuple[int, int, int], out_features: int, width: int, depth: int = 0) -> nn.Module:
    """The encoder for a resolved architecture ("conv" or "mlp"; ``depth`` applies to conv)."""
    if architecture == "conv":
        return ConvEncoder(image_shape, out_features, width, depth)
    return MLPEncoder(image_shape, out_features, width)


def build_decoder(architecture: str, latent_dim: int, image_shape: tuple[int, int, int], out_channels: int, width: int,
                  depth: int = 0) -> nn.Module:
    """The decoder for a resolved architecture ("conv" or "mlp"; ``depth`` applies to conv)."""
    if architecture == "conv":
        return ConvDecoder(latent_dim, image_shape, out_channels, width, depth)
    return MLPDecoder(latent_dim, image_shape, out_channels, width)
